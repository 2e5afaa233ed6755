"""The Prometheus alert rules and the Grafana dashboard in ``examples/``.

``promtool`` checks the rules and runs their unit tests (the first rollback
fires, as the counters start at 0). A real Prometheus on 127.0.0.1 scrapes
an example app under load, and every query of the dashboard returns data,
by variant where the panel splits by variant.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ROOT, free_port, python, running

RULES = ROOT / "examples" / "prometheus" / "gate-middleware-alerts.yml"
RULES_TEST = ROOT / "examples" / "prometheus" / "gate-middleware-alerts-test.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "gate-middleware-dashboard.json"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: ./dev test installs it (apt-get install prometheus)")
    return path


def test_promtool_checks_the_alert_rules_and_their_unit_tests() -> None:
    promtool = binary("promtool")
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        result = subprocess.run(
            [promtool, *command], cwd=RULES.parent, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr
    names = {
        line.split(":", 1)[1].strip()
        for line in RULES.read_text().splitlines()
        if "- alert:" in line
    }
    assert names == {
        "GateVerdictRollback",
        "GateRolledBack",
        "GateInsufficientDataStuck",
        "GateMiddlewareErrors",
    }


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) with Grafana's variables given values."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", "30s")
                .replace("$__range", "5m")
                .replace("$rollout", ".*")
            )
            queries.append((panel["title"], expr))
    return queries


def load(base: str, stop: threading.Event, sent: list[int]) -> None:
    """New visitors (no cookie), so both variants are served; bounded by ``stop``."""
    with httpx.Client(base_url=base, timeout=5.0, trust_env=False) as client:
        while not stop.is_set() and sent[0] < 20_000:
            client.cookies.clear()
            client.get("/")
            sent[0] += 1


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5.0, trust_env=False
    )
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_a_real_prometheus_answers_the_dashboards_queries(tmp_path: Path) -> None:
    prometheus_binary = binary("prometheus")
    app_port, prometheus_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: shop\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{app_port}']\n"
    )
    app = python(
        "-m", "uvicorn", "--app-dir", "examples", "starlette_app:app",
        "--host", "127.0.0.1", "--port", str(app_port),
    )  # fmt: skip
    server = [
        prometheus_binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    stop = threading.Event()
    sent = [0]
    with (
        running(
            app,
            app_port,
            env={
                "GATE_SECRET": "prometheus-test-secret-0123456789",
                "GATE_STORE": f"sqlite://{tmp_path}/shop.db",  # the example's rollout, fresh
            },
        ) as base,
        running(server, prometheus_port, ready_path="/-/ready") as prometheus,
    ):
        loader = threading.Thread(target=load, args=(base, stop, sent), daemon=True)
        loader.start()
        try:
            missing: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                missing = []
                for title, expr in dashboard_queries():
                    result = query(prometheus, expr)
                    labels = [series["metric"] for series in result]
                    if "by variant" in title:
                        if {label.get("gate_variant") for label in labels} != {"canary", "stable"}:
                            missing.append(f"{title}: {labels}")
                    elif not result:
                        missing.append(f"{title}: no data")
                if not missing:
                    break
                time.sleep(1.0)
        finally:
            stop.set()
            loader.join(timeout=10)
        assert not missing, missing
        assert sent[0] > 0
        # The example's gate: a canary at 50 %, the verdict still INSUFFICIENT_DATA.
        [verdict] = query(prometheus, "gate_middleware_gate_verdict == 1")
        assert verdict["metric"]["gate_verdict"] in ("INSUFFICIENT_DATA", "HEALTHY", "MONITOR")
        [traffic] = query(prometheus, "gate_middleware_gate_traffic_percent")
        assert float(traffic["value"][1]) == 50.0
        rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5.0, trust_env=False).json()
        loaded = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
        assert "GateRolledBack" in loaded


def test_the_dashboards_stat_panels_show_names_and_every_panel_keeps_rollouts_apart() -> None:
    """The Verdict and Stage panels show the verdict's and the stage's name
    (not the gauge's value, 1), and with "All" rollouts selected no panel
    merges several rollouts' figures into one series."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    for title, label in (("Verdict", "gate_verdict"), ("Stage", "gate_environment")):
        panel = panels[title]
        assert panel["options"]["textMode"] == "name"
        [target] = panel["targets"]
        assert target["legendFormat"] == "{{gate_rollout}}: {{" + label + "}}"
        assert f"by (gate_rollout, {label})" in target["expr"]
    for title in ("p99 request duration by variant", "Error ratio by variant"):
        for target in panels[title]["targets"]:
            assert "gate_rollout" in target["expr"].split("by (")[1].split(")")[0]
            assert "{{gate_rollout}}" in target["legendFormat"]
