"""``gate-middleware status --wait`` and ``plan`` against a live admin app on
127.0.0.1 whose gate carries out its plan on its own timer."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator

import pytest

from gate_middleware import PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.operate.admin import AdminASGIApp
from tests.servers import serving
from tests.support import CLI, TOKEN, run


class Traffic:
    """Outcomes recorded on a thread until stopped (errors on the canary if faulty)."""

    def __init__(self, gate: PromotionGate, faulty: bool = False) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(gate, faulty), daemon=True)
        self.thread.start()

    def _run(self, gate: PromotionGate, faulty: bool) -> None:
        i = 0
        while not self.stop.wait(0.002):
            i += 1
            gate.record_request_outcome(f"s{i}", i % 50 != 0, 0.02, variant="stable")
            canary_ok = i % 3 != 0 if faulty else i % 50 != 0
            gate.record_request_outcome(f"c{i}", canary_ok, 0.02, variant="canary")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def gate() -> Iterator[PromotionGate]:
    plan = RolloutPlan(
        steps=(1, 5, {"traffic_percent": 25, "manual": True}),
        bake_seconds=0.3,
        staging_bake_seconds=1.5,
    )
    config = PromotionConfig(
        name="checkout", min_requests=100, evaluation_interval_seconds=0.05, plan=plan
    )
    gate = PromotionGate(config)
    yield gate
    gate.close()


@pytest.fixture
def url(gate: PromotionGate) -> Iterator[str]:
    with serving(AdminASGIApp(gate, token=TOKEN)) as base:
        yield base


def test_wait_exits_0_in_production_through_a_manual_gate(url: str, gate: PromotionGate) -> None:
    traffic = Traffic(gate)
    try:
        assert run(url, "canary", "1", "--flag", "new_checkout").returncode == 0
        waited = run(url, "status", "--wait", "--timeout", "2s", "--interval", "0.1")
        assert waited.returncode == 3, waited.stdout + waited.stderr  # held at the manual gate
        assert "canary (25%)" in waited.stdout and "timed out after 2 s" in waited.stdout
        shown = run(url, "plan")
        assert "> 3  canary 25%" in shown.stdout and "(manual gate)" in shown.stdout
        assert run(url, "plan", "resume").returncode == 0
        waited = run(url, "status", "--wait", "--timeout", "30s", "--interval", "0.1")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert "reached production" in waited.stdout
    finally:
        traffic.close()
    history = run(url, "history", "--json")
    assert '"actor": "admin (client note: cli:' in history.stdout
    # Through staging on the way (whether or not the waiting CLI, a process that
    # starts in a second or two on a loaded machine, printed it while it baked).
    reached = [e.get("to_environment", {}).get("name") for e in json.loads(history.stdout)]
    assert "staging" in reached and reached[-1] == "production"


def test_wait_exits_1_on_a_rollback(url: str, gate: PromotionGate) -> None:
    traffic = Traffic(gate, faulty=True)
    try:
        assert run(url, "canary", "1", "--flag", "new_checkout").returncode == 0
        waited = run(url, "status", "--wait", "--timeout", "30s", "--interval", "0.1")
    finally:
        traffic.close()
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert "rolled back: Canary" in waited.stdout


def test_wait_exits_1_on_an_abort_and_retry_starts_again(url: str, gate: PromotionGate) -> None:
    assert run(url, "canary", "1", "--flag", "new_checkout").returncode == 0
    assert run(url, "plan", "pause", "--reason", "freeze").returncode == 0
    assert run(url, "plan", "abort", "--reason", "wrong totals").returncode == 0
    waited = run(url, "status", "--wait", "--timeout", "5s")
    assert waited.returncode == 1 and "wrong totals" in waited.stdout
    assert run(url, "plan", "retry").returncode == 0
    assert gate.state.release_flags == {"new_checkout"}
    refused = run(url, "plan", "skip", "4")
    assert refused.returncode == 1 and "not enough data" in refused.stderr
    assert run(url, "plan", "skip", "--force").returncode == 0
    assert run(url, "status", "--wait", "--timeout", "5s").returncode == 0


def test_bad_timeout_is_a_usage_error(url: str) -> None:
    result = run(url, "status", "--wait", "--timeout", "soon")
    assert result.returncode == 2 and "duration" in result.stderr


def test_wait_without_a_plan_follows_promotions_and_rollbacks() -> None:
    gate = PromotionGate(PromotionConfig(name="manual-steps", min_requests=20))
    with serving(AdminASGIApp(gate, token=TOKEN)) as url:
        assert run(url, "canary", "10", "--flag", "new_api").returncode == 0
        assert run(url, "status", "--wait", "--timeout", "1s", "--interval", "0.2").returncode == 3
        assert run(url, "rollback", "--reason", "not today").returncode == 0
        waited = run(url, "status", "--wait", "--timeout", "5s")
        assert waited.returncode == 1 and "not today" in waited.stdout
        assert run(url, "canary", "10", "--flag", "new_api").returncode == 0
        assert run(url, "promote", "production", "--force").returncode == 0
        assert run(url, "status", "--wait", "--timeout", "5s").returncode == 0
    gate.close()


def test_wait_exits_1_when_the_plan_is_held_on_a_rollback_verdict() -> None:
    """With automatic rollback off, a failing step pauses the plan: the
    pipeline waiting on it fails instead of running to its timeout."""
    plan = RolloutPlan(steps=(1, 5), bake_seconds=0.3, staging_bake_seconds=1.5)
    config = PromotionConfig(
        name="held",
        min_requests=100,
        evaluation_interval_seconds=0.05,
        plan=plan,
        auto_rollback_enabled=False,
    )
    gate = PromotionGate(config)
    with serving(AdminASGIApp(gate, token=TOKEN)) as url:
        traffic = Traffic(gate, faulty=True)
        try:
            assert run(url, "canary", "1", "--flag", "new_checkout").returncode == 0
            waited = run(url, "status", "--wait", "--timeout", "30s", "--interval", "0.1")
        finally:
            traffic.close()
    gate.close()
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert "held:" in waited.stdout and "the verdict is ROLLBACK" in waited.stdout


def test_wait_follows_its_release_even_if_another_starts_within_one_poll() -> None:
    """A rollback followed by a new release between two polls: the wait
    reports its own release's rollback (exit 1), not the new one's progress."""
    gate = PromotionGate(PromotionConfig(name="follow", min_requests=20))
    with serving(AdminASGIApp(gate, token=TOKEN)) as url:
        assert run(url, "canary", "10", "--flag", "first").returncode == 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_MIDDLEWARE_")}
        env.update(GATE_MIDDLEWARE_URL=url, GATE_MIDDLEWARE_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
        waiting = subprocess.Popen(
            [CLI, "status", "--wait", "--timeout", "60s", "--interval", "5"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert waiting.stdout is not None
            first = waiting.stdout.readline()  # the wait has read the status: it sleeps 5 s now
            assert "canary (10%)" in first, first
            gate.rollback("first is broken")
            gate.start_canary(5, ["second"])
            out, err = waiting.communicate(timeout=60)
        finally:
            waiting.kill()
    gate.close()
    assert waiting.returncode == 1, out + err
    assert "release 1 rolled back: first is broken" in out
