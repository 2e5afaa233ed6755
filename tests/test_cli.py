"""The command-line tool against a live admin app on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.admin import AdminASGIApp

from .servers import free_port, serving

TOKEN = "cli-token-0123456789abcdef"
CLI = str(Path(sys.executable).parent / "gate-middleware")


@pytest.fixture
def gate() -> PromotionGate:
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(10), feature_flags=["new_api"], min_requests=20
        )
    )
    for i in range(100):
        gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
    for i in range(40):
        gate.record_request_outcome(f"c{i}", True, 0.02, variant="canary")
    return gate


@pytest.fixture
def url(gate: PromotionGate) -> Iterator[str]:
    with serving(AdminASGIApp(gate, token=TOKEN)) as base:
        yield base


def run(url: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_MIDDLEWARE_")}
    env["GATE_MIDDLEWARE_URL"] = url
    if token is not None:
        env["GATE_MIDDLEWARE_TOKEN"] = token
    env["COLUMNS"] = "160"
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_status(url: str) -> None:
    result = run(url, "status")
    assert result.returncode == 0, result.stderr
    assert "canary (10%)" in result.stdout
    assert "HEALTHY" in result.stdout
    assert "new_api" in result.stdout


def test_status_json_and_the_token_option(url: str) -> None:
    result = run(url, "--token", TOKEN, "status", "--json", token=None)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["health"]["canary_requests"] == 40
    assert status["environment"]["name"] == "canary"


def test_status_watch_redraws(url: str) -> None:
    result = run(url, "status", "--watch", "--interval", "0.2", "--iterations", "3")
    assert result.returncode == 0, result.stderr
    assert "canary (10%)" in result.stdout


def test_steering_and_history(url: str, gate: PromotionGate) -> None:
    assert run(url, "traffic", "25").returncode == 0
    assert gate.environment == Environment.canary(25)
    for i in range(100):  # evidence for the new step
        gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
        gate.record_request_outcome(f"c{i}", True, 0.02, variant="canary")
    result = run(url, "flags", "enable", "dark_mode")
    assert result.returncode == 0 and gate.is_feature_enabled("dark_mode")
    assert run(url, "flags", "disable", "dark_mode").returncode == 0
    result = run(url, "promote")
    assert result.returncode == 0, result.stderr
    assert "staging" in result.stdout
    result = run(url, "rollback", "--reason", "totals are wrong")
    assert result.returncode == 0 and gate.environment == Environment.PRODUCTION
    result = run(url, "canary", "5", "--flag", "search_v2")
    assert result.returncode == 0 and gate.environment == Environment.canary(5)
    history = run(url, "history")
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert "set_traffic" in lines[0]
    assert any("rollback" in line and "totals are wrong" in line for line in lines)
    events = json.loads(run(url, "history", "--json").stdout)
    assert events[-1]["action"] == "start_canary"


def test_refused_by_the_gate_exits_1(url: str, gate: PromotionGate) -> None:
    for i in range(40):
        gate.record_request_outcome(f"c{i}", False, 0.02, variant="canary")
    result = run(url, "promote", "staging")
    assert result.returncode == 1
    assert "refused by the gate" in result.stderr
    result = run(url, "traffic", "10")
    assert result.returncode == 0


def test_usage_and_connection_errors_exit_2(url: str, gate: PromotionGate) -> None:
    before = gate.state
    assert run(url, "traffic", "150").returncode == 2
    assert run(url, "traffic").returncode == 2  # missing argument
    assert run(url, "promote", "qa").returncode == 2
    assert run(url, "rollback").returncode == 2  # --reason is required
    assert run(url, "status", token="wrong-token-0123456789").returncode == 2
    closed = f"http://127.0.0.1:{free_port()}/gate"
    result = run(closed, "status")
    assert result.returncode == 2 and "cannot reach" in result.stderr
    assert gate.state == before
