"""examples/prometheus/: Alertmanager stops a release through the admin API.

A real Alertmanager (Debian's ``prometheus-alertmanager``, which ``./dev
test`` installs) on 127.0.0.1, configured by the example ``alertmanager.yml``
(only its URL, token file and timings changed), is sent alerts through its
own API (``POST /api/v2/alerts``); its webhook reaches the admin app of a
gate served by uvicorn in this process, which rolls back on the alert
meant for it and answers 200 to every notification. ``promtool`` checks the
example rules and runs their unit tests, ``amtool`` the configuration, and
the rules' metric names are checked against what the OpenTelemetry
Prometheus exporter makes of the gate's instruments.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.operate.admin import AdminASGIApp
from gate_middleware.operate.operators import Operator, token_sha256
from gate_middleware.types import Message, Receive, Scope, Send
from tests.servers import ROOT, eventually, free_port, running, serving

EXAMPLES = ROOT / "examples" / "prometheus"
CONFIG = EXAMPLES / "alertmanager.yml"
RULES = EXAMPLES / "gate-middleware-rollback-alerts.yml"
RULES_TEST = EXAMPLES / "gate-middleware-rollback-alerts-test.yml"
TOKEN = "alertmanager-token-0123456789abcdef"


def binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: ./dev test installs it (apt-get install {package})")
    return path


def run(*command: str) -> str:
    result = subprocess.run(
        command, cwd=EXAMPLES, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_and_amtool_check_the_examples() -> None:
    promtool = binary("promtool", "prometheus")
    assert "SUCCESS" in run(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in run(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in run(
        binary("amtool", "prometheus-alertmanager"), "check-config", str(CONFIG)
    )
    # Every rule routes to the webhook, and names its rollout.
    rules = RULES.read_text()
    assert rules.count("- alert:") == rules.count("gate_action: rollback") == 2
    assert rules.count("max by (gate_rollout)") >= 2


def test_the_rules_use_the_metric_names_the_exporter_gives_the_gate() -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    gate = PromotionGate(
        PromotionConfig(name="shop", environment=Environment.canary(10), min_requests=20),
        meter_provider=provider,
    )
    try:
        for i in range(100):
            gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
            gate.record_request_outcome(f"c{i}", i % 10 != 0, 0.02, variant="canary")
        exposition = generate_latest(registry).decode()
    finally:
        gate.close()
        provider.shutdown()
    used = set(re.findall(r"\b(gate_middleware_\w+)\{", RULES.read_text()))
    assert used == {"gate_middleware_gate_error_rate", "gate_middleware_gate_verdict"}
    for name in used:
        series = re.findall(rf"^{name}\{{([^}}]*)\}}", exposition, re.MULTILINE)
        assert series, f"{name} is not exported"
        assert all('gate_rollout="shop"' in labels for labels in series), series
    assert re.search(
        r'^gate_middleware_gate_error_rate\{[^}]*gate_variant="canary"[^}]*\} 0\.1$',
        exposition,
        re.MULTILINE,
    ), exposition


class Recorded:
    """The admin app, keeping each answer it gives (status, JSON body)."""

    def __init__(self, app: AdminASGIApp) -> None:
        self.app = app
        self.answers: list[tuple[int, dict[str, Any]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/gate/"):
            await self.app(scope, receive, send)
            return
        status: list[int] = []
        body: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            await send(message)

        await self.app({**scope, "root_path": "/gate"}, receive, keep)
        self.answers.append((status[0], json.loads(b"".join(body))))

    def whys(self) -> list[str]:
        return [str(answer.get("why")) for _, answer in self.answers]


@pytest.fixture
def gate() -> Iterator[PromotionGate]:
    gate = PromotionGate(
        PromotionConfig(name="shop", environment=Environment.canary(10), min_requests=20)
    )
    yield gate
    gate.close()


def alertmanager_config(tmp_path: Path, base: str) -> Path:
    """The example, with this test's URL, token file and short timings."""
    token_file = tmp_path / "gate-token"
    token_file.write_text(TOKEN + "\n")  # as an editor saves it: Alertmanager trims the newline
    text = CONFIG.read_text()
    for old, new in (
        ("http://127.0.0.1:8000/gate/alertmanager", f"{base}/gate/alertmanager"),
        ("/etc/alertmanager/gate-token", str(token_file)),
        ("group_wait: 10s", "group_wait: 1s"),
        ("group_interval: 1m", "group_interval: 1s"),
    ):
        assert text.count(old) == 1, f"the example no longer says {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    return path


def send_alerts(alertmanager: str, *alerts: dict[str, Any]) -> None:
    response = httpx.post(f"{alertmanager}/api/v2/alerts", json=list(alerts), timeout=5.0)
    assert response.status_code == 200, response.text


def alert(rollout: str, name: str, *, action: bool = True, **fields: Any) -> dict[str, Any]:
    labels = {"alertname": name, "gate_rollout": rollout, "severity": "page"}
    if action:
        labels["gate_action"] = "rollback"
    return {
        "labels": labels,
        "annotations": {"summary": "8% of the canary's requests fail"},
        "generatorURL": "http://127.0.0.1:9090/graph",
        **fields,
    }


def test_a_real_alertmanager_rolls_the_release_back(tmp_path: Path, gate: PromotionGate) -> None:
    alertmanager_binary = binary("prometheus-alertmanager", "prometheus-alertmanager")
    admin = Recorded(
        AdminASGIApp(
            gate, operators=[Operator("alertmanager", "operator", token_sha256=token_sha256(TOKEN))]
        )
    )
    port = free_port()
    with serving(admin) as base:
        server = [
            alertmanager_binary,
            f"--config.file={alertmanager_config(tmp_path, base)}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no high-availability peers: nothing on 9094
        ]
        with running(server, port, ready_path="/-/ready") as alertmanager:
            # Another rollout's alert reaches the webhook and changes nothing;
            # one without gate_action="rollback" stays on the default receiver.
            send_alerts(
                alertmanager,
                alert("search", "CanaryErrorRateHigh"),
                alert("shop", "CheckoutSlow", action=False),
            )
            assert eventually(lambda: admin.answers, seconds=30), "no notification came"
            assert admin.whys() == ["no alert has the label gate_rollout='shop'"]
            assert gate.environment == Environment.canary(10)

            send_alerts(alertmanager, alert("shop", "CanaryErrorRateHigh"))
            assert eventually(lambda: gate.environment == Environment.PRODUCTION, seconds=30)
            [rollback] = gate.get_rollback_history()
            assert rollback.reason == "CanaryErrorRateHigh: 8% of the canary's requests fail"
            assert rollback.actor == "alertmanager (client note: alertmanager:gate-rollback)"

            # Resolved (send_resolved): 200, nothing to do.
            now = datetime.now(UTC).isoformat()
            send_alerts(alertmanager, alert("shop", "CanaryErrorRateHigh", endsAt=now))
            resolved = "the alerts for rollout 'shop' are resolved"
            assert eventually(lambda: resolved in admin.whys(), seconds=30), admin.whys()
    assert [status for status, _ in admin.answers] == [200] * len(admin.answers)
    assert [answer["rolled_back"] for _, answer in admin.answers].count(True) == 1
    assert len(gate.get_rollback_history()) == 1
