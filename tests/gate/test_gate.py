from __future__ import annotations

import logging
import threading
from datetime import UTC, timedelta

import pytest

from gate_middleware import (
    CanaryHealth,
    ConfigError,
    Environment,
    GateState,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    PromotionGateManager,
    RollbackEvent,
    SloConfig,
)
from tests.support import FakeClock, feed, metric_points


def make_gate(
    clock: FakeClock,
    percent: float = 10,
    *,
    flags: tuple[str, ...] = ("new_api",),
    min_requests: int = 100,
    auto: bool = True,
    **kwargs: object,
) -> PromotionGate:
    config = PromotionConfig(
        environment=Environment.canary(percent),
        feature_flags=flags,
        min_requests=min_requests,
        auto_rollback_enabled=auto,
    )
    return PromotionGate(config, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_manager_is_the_gate() -> None:
    assert PromotionGateManager is PromotionGate


def test_environment_values() -> None:
    assert Environment.canary(10).name == "canary"
    assert Environment.canary(10).traffic_percent == 10.0
    assert Environment.STAGING.traffic_percent == 100.0
    assert Environment.PRODUCTION.traffic_percent == 0.0
    assert (
        Environment.canary(5)
        < Environment.canary(10)
        < Environment.STAGING
        < Environment.PRODUCTION
    )
    assert {Environment.canary(10), Environment.canary(10.0)} == {Environment.canary(10)}
    with pytest.raises(AttributeError):
        Environment.STAGING.name = "production"  # type: ignore[misc]


# -- health ---------------------------------------------------------------


def test_healthy_canary(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "canary", 200, error_every=50)
    feed(gate, "stable", 1000, error_every=50)
    health = gate.monitor_canary_health()
    assert isinstance(health, CanaryHealth)
    assert health.recommendation.startswith("HEALTHY")
    assert health.health_score >= 0.9
    assert health.canary_requests == 200 and health.production_requests == 1000
    assert health.canary_error_rate == pytest.approx(0.02)
    assert health.canary_p99_latency == pytest.approx(0.05, rel=0.01)
    assert health.traffic_percent == 10.0
    assert gate.environment == Environment.canary(10)


def test_monitor_between_the_thresholds(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "canary", 200, duration=0.065)  # p99 1.3x production's
    feed(gate, "stable", 1000, duration=0.05)
    health = gate.monitor_canary_health()
    assert health.recommendation.startswith("MONITOR")
    assert 0.8 <= health.health_score < 0.9
    assert gate.environment == Environment.canary(10)  # MONITOR does not roll back


def test_insufficient_data_never_fails_the_rollout(clock: FakeClock) -> None:
    gate = make_gate(clock, min_requests=100)
    feed(gate, "canary", 3, error_every=3)  # one failure out of three
    feed(gate, "stable", 1000)
    health = gate.monitor_canary_health()
    assert health.recommendation.startswith("INSUFFICIENT_DATA")
    assert not health.sufficient_data
    assert 0.8 <= health.health_score < 0.9  # never reads as healthy
    assert gate.check_slo_compliance() is False  # no evidence is not compliance
    assert gate.environment == Environment.canary(10)
    assert gate.get_rollback_history() == []
    with pytest.raises(PromotionError, match="not enough data"):
        gate.promote(Environment.STAGING)


# -- automatic rollback ------------------------------------------------------


def test_rollback_when_error_rate_is_over_one_and_a_half_times(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    gate = make_gate(clock)
    fired: list[RollbackEvent] = []
    gate.on_rollback(fired.append)
    feed(gate, "stable", 5000, error_every=50)  # 2 %
    feed(gate, "canary", 500, error_every=10)  # 10 %
    with caplog.at_level(logging.ERROR, logger="gate_middleware"):
        health = gate.monitor_canary_health()
    assert health.recommendation.startswith("ROLLBACK")
    assert gate.environment == Environment.PRODUCTION
    assert not gate.is_feature_enabled("new_api")
    assert all(not gate.route_request(f"u{i}").is_canary for i in range(500))
    [event] = gate.get_rollback_history()
    assert fired == [event]
    assert event.feature == "all" and event.automatic
    assert event.environment == Environment.canary(10)
    assert event.timestamp.tzinfo is UTC
    assert event.reason.startswith("Canary health score")
    assert "error rate" in event.reason
    assert event.health is not None and event.health.canary_error_rate == pytest.approx(0.1)
    assert "Triggering automatic rollback: Canary health score" in caplog.text
    # The windows were cleared.
    assert gate.health_snapshot().canary_requests == 0


def test_rollback_when_p99_is_over_one_and_a_half_times(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "stable", 1000, duration=0.1)
    feed(gate, "canary", 200, duration=0.2)
    gate.monitor_canary_health()
    [event] = gate.get_rollback_history()
    assert "latency is more than 1.5x" in event.reason


def test_slo_below_threshold_is_no_rollback_when_production_is_as_bad(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "stable", 1000, duration=0.7)  # everyone is slow: not the release's fault
    feed(gate, "canary", 200, duration=0.7)
    assert gate.check_slo_compliance() is False
    assert gate.get_rollback_history() == []
    assert gate.environment == Environment.canary(10)


def test_rollback_on_slo_violation_worse_than_production(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "stable", 1000, duration=0.45)  # within the 0.5 s objective
    feed(gate, "canary", 200, duration=0.8)  # 1.78x: beyond the rollback line, and bad
    assert gate.check_slo_compliance() is False
    [event] = gate.get_rollback_history()
    assert "canary latency is more than 1.5x" in event.reason
    assert gate.environment == Environment.PRODUCTION


def test_slo_check_reads_the_canary_within_the_rollback_line(clock: FakeClock) -> None:
    """A canary 1.22x slower that pushes every request past the 0.5 s
    objective is inside the 1.5x rollback line: the SLO check reads its
    durations divided by 1.5, so it does not roll back by itself; the
    verdict is MONITOR and promotion is refused until the SLO is met."""
    gate = make_gate(clock)
    feed(gate, "stable", 1000, duration=0.45)
    feed(gate, "canary", 200, duration=0.55)
    assert gate.check_slo_compliance() is False
    assert gate.get_rollback_history() == []
    assert gate.monitor_canary_health().verdict == "MONITOR"
    with pytest.raises(PromotionError, match="SLO compliance below threshold: 0.0000 < 0.95"):
        gate.promote(Environment.STAGING)


def test_slo_check_rolls_back_what_fails_beyond_the_line(clock: FakeClock) -> None:
    """Failures count as bad whatever their duration: a canary whose
    requests fail slowly is rolled back (by the errors or the SLO check)."""
    gate = make_gate(clock)
    feed(gate, "stable", 1000, duration=0.45)
    feed(gate, "canary", 200, duration=0.55, error_every=2)
    gate.monitor_canary_health()
    assert gate.environment == Environment.PRODUCTION


def test_no_automatic_rollback_when_disabled(clock: FakeClock) -> None:
    gate = make_gate(clock, auto=False)
    feed(gate, "stable", 1000)
    feed(gate, "canary", 200, error_every=2)
    assert gate.monitor_canary_health().recommendation.startswith("ROLLBACK")
    assert gate.environment == Environment.canary(10)


def test_recording_alone_triggers_the_evaluation(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "stable", 1000)
    feed(gate, "canary", 200, error_every=2)
    assert gate.environment == Environment.canary(10)  # not yet: no interval has passed
    clock.advance(5.0)
    gate.record_request_outcome("x", True, 0.05, variant="stable")
    assert gate.environment == Environment.PRODUCTION
    assert len(gate.get_rollback_history()) == 1


def test_evaluation_runs_at_most_once_per_interval(clock: FakeClock) -> None:
    gate = make_gate(clock, auto=False)
    calls = []
    original = gate._evaluation.evaluate

    def counting(act: bool):  # type: ignore[no-untyped-def]
        calls.append(clock())
        return original(act)

    gate._evaluation.evaluate = counting  # type: ignore[method-assign]
    for _ in range(10):
        feed(gate, "stable", 50)
        clock.advance(1.0)
    assert 1 <= len(calls) <= 2
    assert all(b - a >= 5.0 for a, b in zip(calls, calls[1:], strict=False))


def test_window_expiry_forgets_old_failures(clock: FakeClock) -> None:
    gate = make_gate(clock, auto=False)
    feed(gate, "canary", 200, error_every=2)
    feed(gate, "stable", 1000)
    assert gate.monitor_canary_health().canary_error_rate == pytest.approx(0.5)
    clock.advance(301)
    health = gate.monitor_canary_health()
    assert health.canary_requests == 0  # the window shows the last 300 s
    # ... while the verdict rests on the whole step's evidence.
    assert health.evidence["canary_requests"] == 200
    assert health.recommendation.startswith("ROLLBACK")


# -- promotion ---------------------------------------------------------------


def healthy(gate: PromotionGate) -> None:
    feed(gate, "stable", 1000, error_every=100)
    feed(gate, "canary", 200, error_every=100)


def test_canary_to_staging_to_production(clock: FakeClock) -> None:
    gate = make_gate(clock)
    promoted = []
    gate.on_promotion(promoted.append)
    gate.enable_feature("dark_mode")
    gate.disable_feature("dark_mode")
    healthy(gate)
    assert gate.promote(Environment.STAGING) == Environment.STAGING
    assert gate.environment == Environment.STAGING
    assert all(gate.route_request(f"s{i}").is_enabled("new_api") for i in range(200))
    # Staging with no holdback: judged against the SLO objective, on fresh evidence.
    assert gate.health_snapshot().comparison == "slo objective"
    with pytest.raises(PromotionError, match="not enough data"):
        gate.promote(Environment.PRODUCTION)
    feed(gate, "canary", 200, error_every=100)
    gate.promote(Environment.PRODUCTION)
    assert gate.environment == Environment.PRODUCTION
    decision = gate.route_request("anyone")
    assert not decision.is_canary and decision.is_enabled("new_api")
    assert [e.to_environment for e in promoted] == [Environment.STAGING, Environment.PRODUCTION]
    kinds = [(e.kind, getattr(e, "action", None)) for e in gate.get_history()]
    assert kinds == [
        ("promotion", "enable_flag"),
        ("rollback", None),
        ("promotion", "promote"),
        ("promotion", "promote"),
    ]


def test_staging_without_holdback_rolls_back_against_the_objective(clock: FakeClock) -> None:
    gate = make_gate(clock)
    healthy(gate)
    gate.promote(Environment.STAGING)
    feed(gate, "canary", 200, error_every=5)  # 20 % bad: 4x the 5 % error budget
    health = gate.monitor_canary_health()
    assert health.comparison == "slo objective"
    assert gate.environment == Environment.PRODUCTION
    [event] = gate.get_rollback_history()
    assert event.environment == Environment.STAGING
    assert "canary bad rate 0.2000 over the step's 200 requests is above 2x" in event.reason
    assert "burn rate 4.0x long, 4.0x short" in event.reason


def test_staging_at_the_objectives_line_is_not_rolled_back(clock: FakeClock) -> None:
    """10 % bad, exactly the line (2x the 5 % budget): the burn windows warn
    (MONITOR), and the anytime-valid test does not roll back."""
    gate = make_gate(clock)
    healthy(gate)
    gate.promote(Environment.STAGING)
    for _ in range(30):
        feed(gate, "canary", 100, error_every=10)
        clock.advance(5.0)
    health = gate.monitor_canary_health()
    assert gate.environment == Environment.STAGING
    assert health.verdict == "MONITOR"


def test_canary_straight_to_production_warns(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    gate = make_gate(clock)
    healthy(gate)
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        gate.promote(Environment.PRODUCTION)
    assert gate.environment == Environment.PRODUCTION
    assert "directly" in caplog.text


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (Environment.canary(10), Environment.canary(20)),
        (Environment.STAGING, Environment.STAGING),
        (Environment.STAGING, Environment.canary(5)),
        (Environment.PRODUCTION, Environment.STAGING),
        (Environment.PRODUCTION, Environment.PRODUCTION),
        (Environment.PRODUCTION, Environment.canary(5)),
    ],
)
def test_invalid_promotion_paths_name_both_environments(
    clock: FakeClock, start: Environment, target: Environment
) -> None:
    gate = PromotionGate(PromotionConfig(environment=start), clock=clock)
    before = gate.state
    with pytest.raises(PromotionError) as info:
        gate.promote(target, force=True)
    assert start.name in str(info.value) and target.name in str(info.value)
    assert gate.state == before


def test_promotion_refused_while_unhealthy_unless_forced(clock: FakeClock) -> None:
    gate = make_gate(clock, auto=False)
    feed(gate, "stable", 1000)
    feed(gate, "canary", 200, duration=0.065)
    with pytest.raises(PromotionError, match="health score 0.8.*verdict MONITOR"):
        gate.promote(Environment.STAGING)
    assert gate.environment == Environment.canary(10)
    gate.promote(Environment.STAGING, force=True)
    assert gate.environment == Environment.STAGING
    assert gate.get_history()[-1].forced  # type: ignore[union-attr]


def test_promotion_refused_while_slo_not_met(clock: FakeClock) -> None:
    gate = make_gate(clock, auto=False)
    feed(gate, "stable", 1000, duration=0.7)
    feed(gate, "canary", 200, duration=0.7)
    with pytest.raises(PromotionError, match="SLO compliance below threshold"):
        gate.promote(Environment.STAGING)


def test_start_ramp_and_manual_rollback(clock: FakeClock) -> None:
    gate = PromotionGate(PromotionConfig(feature_flags=["dark_mode"]), clock=clock)
    assert gate.route_request("x").enabled_features == ("dark_mode",)
    gate.start_canary(5, ["new_checkout_flow"])
    with pytest.raises(PromotionError, match="already in canary"):
        gate.start_canary(5, ["other"])
    gate.set_traffic_percent(25)
    assert gate.environment == Environment.canary(25)
    canary = next(d for i in range(100) if (d := gate.route_request(f"u{i}")).is_canary)
    assert set(canary.enabled_features) == {"dark_mode", "new_checkout_flow"}
    event = gate.rollback("checkout totals are wrong")
    assert event.reason == "checkout totals are wrong" and not event.automatic
    assert gate.environment == Environment.PRODUCTION
    assert gate.is_feature_enabled("dark_mode") and not gate.is_feature_enabled("new_checkout_flow")
    with pytest.raises(PromotionError, match="no release in progress"):
        gate.rollback("again")
    with pytest.raises(PromotionError, match="only a canary"):
        gate.set_traffic_percent(10)
    actions = [getattr(e, "action", e.kind) for e in gate.get_history()]
    assert actions == ["start_canary", "set_traffic", "rollback"]


def test_disable_feature_takes_it_from_everyone_and_records_it(clock: FakeClock) -> None:
    gate = make_gate(clock, percent=50, flags=("new_checkout_flow",))
    fired = []
    gate.on_rollback(fired.append)
    event = gate.disable_feature("new_checkout_flow")
    assert event.feature == "new_checkout_flow"
    assert fired == [event]
    assert not any(gate.route_request(f"u{i}").is_enabled("new_checkout_flow") for i in range(200))
    assert gate.environment == Environment.canary(50)
    with pytest.raises(ConfigError, match="enabled flags"):
        gate.disable_feature("new_checkout_flow")


def test_enable_feature_in_a_release_is_for_canary_sessions(clock: FakeClock) -> None:
    gate = make_gate(clock, percent=50)
    gate.enable_feature("new_checkout_flow")
    decisions = [gate.route_request(f"u{i}") for i in range(200)]
    assert all(d.is_enabled("new_checkout_flow") == d.is_canary for d in decisions)


def test_a_failing_callback_does_not_break_the_gate(clock: FakeClock) -> None:
    gate = make_gate(clock)

    @gate.on_rollback
    def explode(event: RollbackEvent) -> None:
        raise RuntimeError("pager is down")

    gate.rollback("manual")
    assert gate.environment == Environment.PRODUCTION


def test_on_state_change_sees_each_new_state_with_the_one_before(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every change this process makes (flags on and off, rollbacks,
    promotions), once stored, in order; a change that changes nothing is
    not one; a raising callback is logged and the others still run."""
    gate = make_gate(clock)
    seen: list[tuple[GateState, GateState]] = []

    @gate.on_state_change
    def explode(previous: GateState, state: GateState) -> None:
        raise RuntimeError("a bug in a listener")

    gate.on_state_change(lambda previous, state: seen.append((previous, state)))
    first = gate.state
    gate.enable_feature("dark_mode")
    assert gate.enable_feature("dark_mode") is None  # already on: no new state
    gate.disable_feature("dark_mode")
    gate.rollback("manual")
    gate.start_canary(10, ["search_v2"])
    gate.promote(Environment.PRODUCTION, force=True)
    states = [first, *(state for _, state in seen)]
    assert [previous for previous, _ in seen] == states[:-1]
    assert [state.history[-1].to_dict()["action"] for _, state in seen] == [
        "enable_flag",
        "disable_flag",
        "rollback",
        "start_canary",
        "promote",
    ]
    assert seen[-1][1] is gate.state
    assert caplog.text.count("A state-change callback raised") == 5


# -- input ----------------------------------------------------------------------


def test_durations_as_timedelta(clock: FakeClock) -> None:
    gate = make_gate(clock, auto=False)
    gate.record_request_outcome("s", True, timedelta(milliseconds=250), variant="canary")
    assert gate.health_snapshot().canary_p99_latency == pytest.approx(0.25, rel=0.01)


# -- concurrency --------------------------------------------------------------------


def test_eight_threads_record_without_loss() -> None:
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(50), auto_rollback_enabled=False)
    )
    per_thread = 5000
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                gate.record_request_outcome(f"t{n}-{i}", i % 7 != 0, 0.01)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    health = gate.health_snapshot()
    assert errors == []
    assert health.canary_requests + health.production_requests == 8 * per_thread


def test_concurrent_evaluations_roll_back_once(clock: FakeClock) -> None:
    gate = make_gate(clock)
    fired = []
    gate.on_rollback(fired.append)
    feed(gate, "stable", 1000)
    feed(gate, "canary", 200, error_every=2)
    barrier = threading.Barrier(16)

    def evaluate() -> None:
        barrier.wait()
        gate.monitor_canary_health()

    threads = [threading.Thread(target=evaluate) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fired) == 1
    assert len(gate.get_rollback_history()) == 1


# -- OpenTelemetry ---------------------------------------------------------------------


def test_gate_instruments(clock: FakeClock, meter_provider, metric_reader) -> None:  # type: ignore[no-untyped-def]
    gate = make_gate(clock, meter_provider=meter_provider)
    feed(gate, "stable", 1000, duration=0.1)
    feed(gate, "canary", 200, duration=0.2)
    points = metric_points(metric_reader)
    assert [p.value for p in points["gate_middleware.gate.traffic"]] == [10.0]
    p99 = {
        p.attributes["gate.variant"]: p.value for p in points["gate_middleware.gate.latency.p99"]
    }
    assert p99["canary"] == pytest.approx(0.2, rel=0.01)
    assert p99["stable"] == pytest.approx(0.1, rel=0.01)
    assert points["gate_middleware.gate.health_score"][0].value < 0.8
    assert {p.attributes["gate.variant"] for p in points["gate_middleware.gate.error_rate"]} == {
        "canary",
        "stable",
    }
    gate.monitor_canary_health()  # rolls back
    points = metric_points(metric_reader)
    [rollbacks] = [p for p in points["gate_middleware.gate.rollbacks"] if p.value]
    assert rollbacks.value == 1 and rollbacks.attributes["gate.automatic"] is True


def test_counters_start_at_zero_so_the_first_event_is_an_increase(  # type: ignore[no-untyped-def]
    clock: FakeClock, meter_provider, metric_reader
) -> None:
    gate = make_gate(clock, meter_provider=meter_provider)
    points = metric_points(metric_reader)
    rollbacks = points["gate_middleware.gate.rollbacks"]
    assert {
        (p.attributes["gate.environment"], p.attributes["gate.automatic"]) for p in rollbacks
    } == {
        (stage, automatic)
        for stage in ("canary", "staging", "production")
        for automatic in (False, True)
    }
    assert {p.value for p in rollbacks} == {0}
    promotions = points["gate_middleware.gate.promotions"]
    assert {p.attributes["gate.environment"]: p.value for p in promotions} == {
        "staging": 0,
        "production": 0,
    }
    gate.rollback("by hand")
    points = metric_points(metric_reader)
    counted = {
        (p.attributes["gate.environment"], p.attributes["gate.automatic"]): p.value
        for p in points["gate_middleware.gate.rollbacks"]
    }
    assert counted[("canary", False)] == 1 and sum(counted.values()) == 1


def test_verdict_stage_and_traffic_are_exported(  # type: ignore[no-untyped-def]
    clock: FakeClock, meter_provider, metric_reader
) -> None:
    gate = make_gate(clock, meter_provider=meter_provider)

    def current(name: str, attribute: str) -> dict[str, float]:
        points = metric_points(metric_reader)[name]
        return {p.attributes[attribute]: p.value for p in points}

    verdicts = current("gate_middleware.gate.verdict", "gate.verdict")
    assert verdicts == {"HEALTHY": 0, "MONITOR": 0, "ROLLBACK": 0, "INSUFFICIENT_DATA": 1}
    assert current("gate_middleware.gate.stage", "gate.environment") == {
        "canary": 1,
        "staging": 0,
        "production": 0,
    }
    assert current("gate_middleware.store.status", "gate.store.status") == {
        "ok": 1,
        "unreachable": 0,
        "forbidden": 0,
        "corrupt": 0,
    }
    feed(gate, "stable", 1000, duration=0.1)
    feed(gate, "canary", 200, duration=0.1)
    verdicts = current("gate_middleware.gate.verdict", "gate.verdict")
    assert verdicts["INSUFFICIENT_DATA"] == 0 and sum(verdicts.values()) == 1
    gate.promote(Environment.STAGING, force=True)
    assert current("gate_middleware.gate.stage", "gate.environment")["staging"] == 1
    # One traffic series across stages: no attribute but the rollout.
    [traffic] = metric_points(metric_reader)["gate_middleware.gate.traffic"]
    assert dict(traffic.attributes) == {"gate.rollout": "default"} and traffic.value == 100.0


def test_custom_slo(clock: FakeClock) -> None:
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(10), min_requests=10),
        SloConfig(latency_objective_seconds=0.05),
        clock=clock,
    )
    feed(gate, "canary", 20, duration=0.06)
    feed(gate, "stable", 20, duration=0.06)
    assert gate.check_slo_compliance() is False


def test_one_unlucky_error_in_a_thin_window_is_not_a_rollback(clock: FakeClock) -> None:
    gate = make_gate(clock, min_requests=40)
    feed(gate, "stable", 1000, error_every=200)  # 0.5 %
    feed(gate, "canary", 40)
    gate.record_request_outcome("c", False, 0.05, variant="canary")  # 1 in 41: 2.4 %
    health = gate.monitor_canary_health()
    assert health.recommendation.startswith("HEALTHY")  # 3/41 = 7.3 % is the floor here
    assert gate.environment == Environment.canary(10)
    feed(gate, "canary", 40, error_every=4)  # 11 failures in 81: 13.6 %, well over 3/81
    assert gate.monitor_canary_health().recommendation.startswith("ROLLBACK")


def test_promotion_decides_on_the_steps_evidence_not_a_thin_window(clock: FakeClock) -> None:
    """At low traffic the rollback window may hold a handful of requests:
    one slow request among two there is 50 % compliance. Promotion reads
    the step's evidence, as the verdict does (here 401 canary requests, one
    of them bad), so a healthy release is not refused by the window's noise."""
    gate = make_gate(clock)
    feed(gate, "stable", 400)
    feed(gate, "canary", 400)
    clock.advance(400.0)  # past the 300 s rollback window: the step's evidence stays
    feed(gate, "stable", 2)
    gate.record_request_outcome("late", True, 0.05, variant="canary")
    gate.record_request_outcome("late", True, 0.6, variant="canary")  # good, but slow
    window = gate.status().canary
    assert window.requests == 2 and window.slo_compliance == 0.5
    assert gate.monitor_canary_health().verdict == "HEALTHY"
    assert gate.promote(Environment.STAGING) == Environment.STAGING


def test_promotion_is_refused_when_the_step_misses_the_slo(clock: FakeClock) -> None:
    gate = make_gate(clock)
    feed(gate, "stable", 400, duration=0.7)  # everyone is slow
    feed(gate, "canary", 400, duration=0.7)
    with pytest.raises(PromotionError, match="over the step's 400 canary requests"):
        gate.promote(Environment.STAGING)


def test_a_release_of_a_flag_already_stable_is_refused(clock: FakeClock) -> None:
    """canary 1 --flag X for a flag on for everyone: a ConfigError naming it, nothing changed."""
    gate = PromotionGate(
        PromotionConfig(environment=Environment.PRODUCTION, feature_flags=["new_checkout_flow"]),
        clock=clock,
    )
    before = gate.state
    with pytest.raises(ConfigError, match="new_checkout_flow") as caught:
        gate.start_canary(1, ["new_checkout_flow", "other"])
    assert caught.value.field == "feature_flags"
    assert gate.state is before and gate.environment == Environment.PRODUCTION
    gate.start_canary(1, ["other"])
    assert gate.state.release_flags == {"other"}


def test_a_gate_says_at_start_what_it_serves(caplog: pytest.LogCaptureFixture) -> None:
    from gate_middleware.domain.plan import RolloutPlan

    with caplog.at_level(logging.INFO, logger="gate_middleware"):
        gate = PromotionGate(
            PromotionConfig(
                name="checkout",
                environment=Environment.canary(5),
                feature_flags=["x"],
                plan=RolloutPlan(),
            ),
            plan_timer=False,
        )
    [line] = [r.getMessage() for r in caplog.records if "in process" in r.getMessage()]
    assert line.startswith("rollout 'checkout' in process ")
    assert "canary (5%), release 1, state in InMemoryStateStore" in line
    assert "plan canary 1% -> canary 5%" in line and line.endswith("at step 2")
    gate.close()
