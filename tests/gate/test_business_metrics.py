"""Business metrics through a real gate: ``track()``, their definitions, the
guardrail's rollback and where an operator sees them (status, the command
line's view, OpenTelemetry, a rollback's webhook)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.domain.state import GateState
from gate_middleware.gate.webhooks import Webhook
from gate_middleware.judge.statistics import ErrorRateCheck
from gate_middleware.operate.cli import render_status
from tests.stores.test_store_contract import PlainStateStore, PlainWindowStore
from tests.support import SECRET, FakeClock, Receiver, metric_points

CHECKOUT = MetricDefinition("checkout_completed", tolerance=0.05)
VALUE = MetricDefinition("order_value", kind="mean", guardrail=False)


def metrics_gate(clock: FakeClock, **options: Any) -> PromotionGate:
    config = PromotionConfig(
        environment=Environment.canary(50), min_requests=50, metrics=[CHECKOUT, VALUE]
    )
    return PromotionGate(config, clock=clock, checks=(ErrorRateCheck(share=1.0),), **options)


def serve(
    gate: PromotionGate, sessions: int, canary_converts: float, start: int = 0
) -> tuple[int, int]:
    """One request per session, each stable session converting with 30 %
    chance (by its number) and each canary one with ``canary_converts``."""
    seen = {"canary": 0, "stable": 0}
    for number in range(start, start + sessions):
        session = f"session-{number:06d}"
        decision = gate.route_request(session)
        gate.record_request_outcome(session, True, 0.01, decision=decision)
        rate = canary_converts if decision.is_canary else 0.3
        if (number * 7919) % 1000 < rate * 1000:
            decision.track("checkout_completed")
            decision.track("order_value", 12.5)
        seen[decision.variant] += 1
    return seen["canary"], seen["stable"]


def test_track_counts_for_the_sessions_variant_and_status_shows_it(clock: FakeClock) -> None:
    gate = metrics_gate(clock)
    serve(gate, 400, canary_converts=0.3)
    gate.track("session-000001", "checkout_completed")  # outside a request: routed the same
    [checkout, value] = gate.status().to_dict()["metrics"]
    assert checkout["name"] == "checkout_completed" and checkout["guardrail"] is True
    assert value["kind"] == "mean" and value["guardrail"] is False
    sessions = checkout["canary"]["sessions"] + checkout["production"]["sessions"]
    assert sessions == 400
    assert 0.2 < checkout["production"]["mean"] < 0.4
    assert value["production"]["mean"] == pytest.approx(12.5 * checkout["production"]["mean"])
    low, high = checkout["difference_interval"]
    assert low < 0 < high
    health = gate.monitor_canary_health()
    assert "metric:checkout_completed" in health.evidence["tests"]
    assert "metric:order_value" not in health.evidence["tests"]  # only reported
    gate.close()


def test_a_release_that_breaks_the_metric_is_rolled_back_with_its_figures(
    clock: FakeClock,
) -> None:
    receiver = Receiver()
    webhook = Webhook(f"http://127.0.0.1:{receiver.port}/hook", secret=SECRET)
    gate = metrics_gate(clock, webhooks=[webhook])
    try:
        serve(gate, 1200, canary_converts=0.1)
        clock.advance(6.0)
        gate.monitor_canary_health()
        assert gate.environment == Environment.PRODUCTION
        [event] = gate.get_rollback_history()
        assert "metric checkout_completed (sessions converting) on the canary" in event.reason
        assert "by more than the tolerated 5%" in event.reason
        assert webhook.wait_idle(10)
        [delivery] = [r["body"] for r in receiver.received if r["event"] == "rollback"]
        shown = {metric["name"]: metric for metric in delivery["metrics"]}
        assert shown["checkout_completed"]["relative_change"] < -0.5
        assert delivery["event"]["health"]["evidence"]["tests"]["metric:checkout_completed"][
            "rejected"
        ]
        assert gate.status().to_dict()["metrics"] == []  # production: no release to judge
    finally:
        gate.close()
        receiver.close()


def test_healthy_waits_for_the_guardrails_sessions(clock: FakeClock) -> None:
    gate = metrics_gate(clock)
    heavy = {}  # one session on each side makes every request
    for number in range(100):
        heavy.setdefault(gate.route_request(f"heavy-{number}").variant, f"heavy-{number}")
    for _ in range(60):
        for session in heavy.values():
            gate.record_request_outcome(session, True, 0.01)
    health = gate.monitor_canary_health()
    assert not health.sufficient_data
    assert "metric checkout_completed:" in health.recommendation
    assert "sessions sampled, 50 of each needed" in health.recommendation
    gate.close()


def test_an_undefined_metric_is_counted_and_warned_about_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    gate = metrics_gate(clock)
    decision = gate.route_request("session-1")
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        for _ in range(3):
            decision.track("chekout_completed")  # misspelt
    warnings = [r for r in caplog.records if "chekout_completed" in r.getMessage()]
    assert len(warnings) == 1 and "counted and ignored" in warnings[0].getMessage()
    assert gate.status().to_dict()["undefined_metrics"] == {"chekout_completed": 3}
    assert "tracked but not defined (ignored): chekout_completed (3)" in _text(
        render_status(gate.status().to_dict())
    )
    gate.close()


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e13, True, "12"])
def test_a_bad_value_is_a_config_error_and_counts_nothing(clock: FakeClock, value: Any) -> None:
    gate = metrics_gate(clock)
    with pytest.raises(ConfigError, match="track\\('order_value'\\) value"):
        gate.track("session-1", "order_value", value)
    with pytest.raises(ConfigError, match="metric"):
        gate.track("session-1", 42, 1.0)  # type: ignore[arg-type]
    assert all(
        metric["canary"]["sessions"] == metric["production"]["sessions"] == 0
        for metric in gate.status().to_dict()["metrics"]
    )
    gate.close()


def test_a_report_routed_under_an_earlier_step_is_not_counted(clock: FakeClock) -> None:
    gate = metrics_gate(clock)
    decision = gate.route_request("session-1")
    gate.set_traffic_percent(20)
    decision.track("checkout_completed")
    [checkout, _] = gate.status().to_dict()["metrics"]
    assert checkout["canary"]["sessions"] == checkout["production"]["sessions"] == 0
    gate.close()


def test_the_gauges_show_each_metric_per_variant(
    clock: FakeClock, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    gate = metrics_gate(clock, meter_provider=meter_provider)
    serve(gate, 300, canary_converts=0.3)
    points = metric_points(metric_reader)
    values = {
        (p.attributes["gate.metric"], p.attributes["gate.variant"]): p.value  # type: ignore[attr-defined]
        for p in points["gate_middleware.metric.value"]
    }
    sessions = {
        (p.attributes["gate.metric"], p.attributes["gate.variant"]): p.value  # type: ignore[attr-defined]
        for p in points["gate_middleware.metric.sessions"]
    }
    assert set(values) == {
        (name, variant)
        for name in ("checkout_completed", "order_value")
        for variant in ("canary", "stable")
    }
    assert (
        sessions[("checkout_completed", "canary")] + sessions[("checkout_completed", "stable")]
        == 300
    )
    assert 0.2 < values[("checkout_completed", "stable")] < 0.4
    gate.close()


def test_the_command_line_view_lists_the_metrics(clock: FakeClock) -> None:
    gate = metrics_gate(clock)
    serve(gate, 200, canary_converts=0.3)
    text = _text(render_status(gate.status().to_dict()))
    assert "checkout_completed" in text and "order_value (reported)" in text
    gate.close()


def test_a_store_that_keeps_no_metrics_is_refused_for_a_rollout_with_them() -> None:
    config = PromotionConfig(environment=Environment.canary(50), metrics=[CHECKOUT])
    with pytest.raises(ConfigError, match="tracks_metrics.*checkout_completed"):
        PromotionGate(
            config,
            state_store=PlainStateStore(GateState(environment=Environment.canary(50), release=1)),
            window_store=PlainWindowStore(),
        )


def test_definitions_from_toml_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(
        "[scenarios.shop]\n"
        'promotion_environment = "canary"\n'
        "[[scenarios.shop.metrics]]\n"
        'name = "checkout_completed"\n'
        "tolerance = 0.05\n"
        "[[scenarios.shop.metrics]]\n"
        'name = "refunds"\n'
        'kind = "count"\n'
        'bad = "increase"\n'
        "guardrail = false\n"
    )
    config = PromotionConfig.from_toml(path)
    assert config.metrics == (
        MetricDefinition("checkout_completed", tolerance=0.05),
        MetricDefinition("refunds", kind="count", bad="increase", guardrail=False),
    )
    bad = [
        ({"name": "x y"}, "metrics.name"),
        ({"name": "x", "kind": "ratio"}, "metrics.x.kind"),
        ({"name": "x", "bad": "down"}, "metrics.x.bad"),
        ({"name": "x", "tolerance": 1.0}, "metrics.x.tolerance"),
        ({"name": "x", "tolerance": -0.1}, "metrics.x.tolerance"),
        ({"name": "x", "guardrail": "yes"}, "metrics.x.guardrail"),
        ({"name": "x", "direction": "down"}, "metrics\\[0\\]"),
        ({"kind": "count"}, "metrics\\[0\\]"),
    ]
    for table, field in bad:
        with pytest.raises(ConfigError, match=field):
            PromotionConfig(metrics=[table])
    with pytest.raises(ConfigError, match="distinct names"):
        PromotionConfig(metrics=[{"name": "x"}, {"name": "x"}])
    with pytest.raises(ConfigError, match="a list of MetricDefinition"):
        PromotionConfig(metrics="checkout")  # type: ignore[arg-type]


def _text(renderable: Any) -> str:
    import io

    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()
