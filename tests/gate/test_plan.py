"""The rollout plan: its validation, its pure stepping logic, and a gate
carrying a whole plan out on a simulated clock."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from gate_middleware import (
    ConfigError,
    Environment,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    RollbackEvent,
)
from gate_middleware.domain.plan import (
    ADVANCE,
    AWAIT_APPROVAL,
    HOLD,
    PAUSE,
    WAIT,
    PlanPosition,
    RolloutPlan,
    next_action,
    progress,
)
from tests.support import FakeClock, feed, healthy_traffic

HOUR = 3600.0


# -- the plan as configured -------------------------------------------------


def test_the_default_plan_is_the_guides() -> None:
    plan = RolloutPlan()
    assert [step.label for step in plan.stages] == [
        "canary 1%",
        "canary 5%",
        "canary 10%",
        "canary 25%",
        "canary 50%",
        "staging",
        "production",
    ]
    assert plan.step(0).bake_seconds == 12 * HOUR
    assert plan.step(5).bake_seconds == 24 * HOUR


@pytest.mark.parametrize(
    ("steps", "field", "says"),
    [
        ((1, 10), "plan.steps[2].traffic_percent", "at most 5x"),
        ((5, 10, 5), "plan.steps[3].traffic_percent", "never goes backwards"),
        ((10, 10), "plan.steps[2].traffic_percent", "never goes backwards"),
        ((25, 50, 101), "plan.steps[3].traffic_percent", "up to 100"),
        ((0, 1), "plan.steps[1].traffic_percent", "above 0"),
        ((1, {"traffic_percent": 5, "bake_seconds": -1}), "plan.steps[2].bake_seconds", "seconds"),
        ((1, {"percent": 5}), "plan.steps[2]", "one of the keys"),
        ((), "plan.steps", "non-empty"),
        ((1, "5"), "plan.steps[2]", "a percentage"),
    ],
)
def test_a_bad_plan_names_the_step(steps: tuple[object, ...], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RolloutPlan(steps=steps)
    assert caught.value.field == field
    assert says in str(caught.value)


def test_a_plan_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "scenarios.toml"
    path.write_text(
        """
[scenarios.checkout]
promotion_environment = "production"
name = "checkout"

[scenarios.checkout.plan]
steps = [1, 5, {traffic_percent = 25, manual = true, bake_seconds = 60}]
bake_seconds = 30
staging_bake_seconds = 120
inconclusive_limit_seconds = 600
""",
        encoding="utf-8",
    )
    config = PromotionConfig.from_toml(path)
    assert config.plan is not None
    assert [(s.traffic_percent, s.bake_seconds, s.manual) for s in config.plan.steps] == [
        (1.0, 30.0, False),
        (5.0, 30.0, False),
        (25.0, 60.0, True),
    ]
    assert config.plan.step(3).bake_seconds == 120.0
    path.write_text(
        '[scenarios.x]\nname = "x"\n[scenarios.x.plan]\nsteps = [1, 50]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"plan.steps\[2\]"):
        PromotionConfig.from_toml(path)
    path.write_text("[scenarios.x]\n[scenarios.x.plan]\nstep = [1]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="scenarios.x.plan"):
        PromotionConfig.from_toml(path)


# -- the stepping logic, pure ----------------------------------------------

PLAN = RolloutPlan(
    steps=(1, 5, {"traffic_percent": 25, "manual": True}),
    bake_seconds=HOUR,
    staging_bake_seconds=HOUR,
    inconclusive_limit_seconds=2 * HOUR,
)


def decide(position: PlanPosition, verdict: str, requests: int, now: float) -> tuple[str, int]:
    action = next_action(
        PLAN, position, verdict=verdict, canary_requests=requests, min_requests=100, now=now
    )
    return action.kind, action.to_index


def test_next_action_advances_only_when_baked_healthy_and_enough() -> None:
    start = PlanPosition(0, 0.0)
    assert decide(start, "HEALTHY", 500, HOUR - 1) == (WAIT, -1)
    assert decide(start, "HEALTHY", 500, HOUR) == (ADVANCE, 1)
    assert decide(start, "HEALTHY", 99, HOUR)[0] == HOLD
    assert decide(start, "MONITOR", 500, HOUR)[0] == HOLD
    assert decide(start, "INSUFFICIENT_DATA", 0, HOUR)[0] == HOLD
    assert decide(start, "ROLLBACK", 500, HOUR)[0] == WAIT  # the gate rolls back, not the plan
    held = PlanPosition(0, 0.0, held=True)
    assert decide(held, "MONITOR", 500, 2 * HOUR)[0] == WAIT
    assert decide(held, "MONITOR", 500, 3 * HOUR)[0] == PAUSE  # baked at 1 h + 2 h inconclusive
    resumed = PlanPosition(0, 0.0, resumed_at=3 * HOUR)
    assert decide(resumed, "MONITOR", 500, 4 * HOUR)[0] == HOLD  # the limit counts from resume
    assert decide(PlanPosition(0, 0.0, status="paused"), "HEALTHY", 500, 9 * HOUR)[0] == WAIT


def test_a_manual_gate_waits_for_approval_once() -> None:
    at_gate = PlanPosition(2, 0.0)
    assert decide(at_gate, "HEALTHY", 500, HOUR)[0] == AWAIT_APPROVAL
    assert decide(PlanPosition(2, 0.0, awaiting=True), "HEALTHY", 500, 99 * HOUR)[0] == WAIT
    assert decide(PlanPosition(2, 0.0, approved=True), "HEALTHY", 500, HOUR) == (ADVANCE, 3)


def test_progress_shows_the_bake_and_the_eta() -> None:
    shown = progress(PLAN, PlanPosition(1, 0.0), HOUR / 4)
    assert shown["current"]["label"] == "canary 5%"
    assert shown["bake"]["fraction"] == pytest.approx(0.25)
    # the rest of 5 % (0.75 h), then 25 % and staging (1 h each)
    assert shown["eta_seconds"] == pytest.approx(2.75 * HOUR)
    assert progress(PLAN, PlanPosition(1, 0.0, status="paused"), 0.0)["eta"] is None


# -- a gate carrying out a whole plan on a simulated clock -----------------


def plan_gate(clock: FakeClock, plan: RolloutPlan = PLAN, **kwargs: object) -> PromotionGate:
    config = PromotionConfig(name="checkout", min_requests=100, plan=plan)
    return PromotionGate(
        config,
        clock=clock,
        wall_clock=clock,
        plan_timer=False,
        **kwargs,  # type: ignore[arg-type]
    )


def actions(gate: PromotionGate) -> list[tuple[str, str]]:
    found = []
    for event in gate.get_history():
        what = "rollback" if isinstance(event, RollbackEvent) else event.action
        found.append((what, event.actor))
    return found


def test_a_whole_plan_night_manual_gate_pause_rollback_and_retry(clock: FakeClock) -> None:
    gate = plan_gate(clock)
    gate.start_canary(feature_flags=["new_checkout"], actor="alice")
    assert gate.environment == Environment.canary(1)

    # Step 1 (1 %): healthy traffic, then the bake ends at night with no
    # traffic at all: the timer's evaluation moves the plan on by itself.
    healthy_traffic(gate)
    clock.advance(HOUR / 2)
    gate.tick()
    assert gate.environment == Environment.canary(1)  # still baking
    clock.advance(HOUR / 2)
    gate.tick()
    assert gate.environment == Environment.canary(5)

    # Step 2 (5 %): no traffic at all. Baked but inconclusive: a hold (once),
    # then a pause after the inconclusive limit.
    clock.advance(HOUR)
    gate.tick()
    gate.tick()
    assert gate.state.plan is not None and gate.state.plan.held
    clock.advance(2 * HOUR)
    gate.tick()
    assert gate.state.plan.status == "paused"
    assert gate.environment == Environment.canary(5)
    healthy_traffic(gate)
    gate.tick()
    assert gate.environment == Environment.canary(5)  # paused: no step without a person
    gate.resume(actor="bob")
    assert gate.environment == Environment.canary(25)  # resumed, and the step was ready

    # Step 3 (25 %) is a manual gate: ready, it waits for a person.
    healthy_traffic(gate)
    clock.advance(HOUR)
    gate.tick()
    gate.tick()
    assert gate.environment == Environment.canary(25)
    assert gate.state.plan.awaiting
    # ... and a regression at step 3 is rolled back by the judge meanwhile.
    feed(gate, "canary", 300, error_every=3)
    gate.tick()
    assert gate.environment == Environment.PRODUCTION
    assert gate.state.plan.status == "rolled_back"
    assert gate.state.release_flags == frozenset()

    # Retry: the same release starts its plan again from the first step.
    gate.retry(actor="alice")
    assert gate.environment == Environment.canary(1)
    assert gate.state.release_flags == {"new_checkout"}
    for _ in range(2):  # 1 % and 5 %
        healthy_traffic(gate)
        clock.advance(HOUR)
        gate.tick()
    assert gate.environment == Environment.canary(25)
    healthy_traffic(gate)
    clock.advance(HOUR)
    gate.tick()
    gate.resume(actor="carol")  # approve the manual gate
    assert gate.environment == Environment.STAGING
    healthy_traffic(gate)
    clock.advance(HOUR - 1)
    gate.tick()
    assert gate.environment == Environment.STAGING
    clock.advance(1)
    gate.tick()
    assert gate.environment == Environment.PRODUCTION
    assert gate.state.stable_flags == {"new_checkout"}
    assert gate.state.plan.status == "done"

    assert actions(gate) == [
        ("start_canary", "alice"),
        ("plan_step", "gate"),
        ("hold", "gate"),
        ("pause", "gate"),
        ("resume", "bob"),
        ("plan_step", "gate"),
        ("await_approval", "gate"),
        ("rollback", "gate"),
        ("retry", "alice"),
        ("plan_step", "gate"),
        ("plan_step", "gate"),
        ("await_approval", "gate"),
        ("resume", "carol"),
        ("plan_step", "gate"),
        ("plan_step", "gate"),
    ]
    for event in gate.get_history():
        assert event.timestamp.tzinfo is UTC
    gate.close()


def test_operator_controls(clock: FakeClock) -> None:
    gate = plan_gate(clock)
    with pytest.raises(PromotionError, match="no release is following the plan"):
        gate.pause("night freeze")
    gate.start_canary(feature_flags=["new_checkout"])
    gate.pause("night freeze", actor="ops")
    healthy_traffic(gate)
    clock.advance(5 * HOUR)
    gate.tick()
    assert gate.environment == Environment.canary(1)
    with pytest.raises(ConfigError, match="steps count from 1"):
        gate.skip_to(1)  # the current step
    with pytest.raises(ConfigError, match="step"):
        gate.skip_to(9)
    healthy_traffic(gate)
    gate.skip_to(3, actor="ops")  # step 3, 25 %: the evidence is HEALTHY, allowed
    assert gate.environment == Environment.canary(25)
    with pytest.raises(PromotionError, match="not enough data"):
        gate.promote_now()
    gate.promote_now(force=True, actor="ops")
    assert gate.environment == Environment.PRODUCTION
    assert gate.state.plan is not None and gate.state.plan.status == "done"
    with pytest.raises(PromotionError, match="retry restarts a release"):
        gate.retry()
    gate.start_canary(feature_flags=["next"])
    gate.abort("wrong totals", actor="ops")
    assert gate.state.plan.status == "aborted"
    gate.retry()
    assert gate.environment == Environment.canary(1)
    assert gate.state.release_flags == {"next"}
    last = gate.get_history()[-2]
    assert isinstance(last, RollbackEvent) and last.actor == "ops" and not last.automatic
    with pytest.raises(ConfigError, match="actor"):
        gate.pause(actor="")
    shown = gate.plan_status()
    assert shown is not None and shown["current"]["label"] == "canary 1%"
    assert gate.status().to_dict()["plan"]["position"]["status"] == "running"


def test_a_ramp_by_hand_moves_the_plan_along(clock: FakeClock) -> None:
    gate = plan_gate(clock)
    gate.start_canary(5, ["new_checkout"])
    assert gate.state.plan is not None and gate.state.plan.index == 1
    gate.set_traffic_percent(25)
    assert gate.state.plan.index == 2
    gate.promote(Environment.STAGING, force=True)
    assert gate.state.plan.index == 3


def test_the_timer_moves_the_plan_without_any_request() -> None:
    plan = RolloutPlan(steps=(1, 5), bake_seconds=0.2, staging_bake_seconds=0.2)
    config = PromotionConfig(
        name="checkout",
        min_requests=100,
        plan=plan,
        evaluation_interval_seconds=0.05,
    )
    gate = PromotionGate(config)
    try:
        gate.start_canary(feature_flags=["new_checkout"])
        healthy_traffic(gate)
        deadline = time.monotonic() + 10
        while gate.environment == Environment.canary(1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gate.environment == Environment.canary(5)
    finally:
        gate.close()
    stopped = gate.environment
    time.sleep(0.5)
    assert gate.environment == stopped  # closed: the timer evaluates no more


def test_a_closed_gate_starts_no_timer_in_a_forked_child() -> None:
    def timers() -> int:
        return sum(t.name == "gate-plan" and t.is_alive() for t in threading.enumerate())

    before = timers()
    gate = PromotionGate(PromotionConfig(name="checkout", plan=RolloutPlan()))
    assert timers() == before + 1
    gate.close()
    assert gate._timer is not None
    gate._timer._thread._pid = -1  # as in a forked child: another process id
    gate._after_fork()  # what os.register_at_fork runs in the child
    deadline = time.monotonic() + 10
    while timers() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert timers() == before


def test_a_rollback_verdict_the_gate_may_not_act_on_pauses_the_plan(clock: FakeClock) -> None:
    """auto_rollback_enabled=False: a failing step is held for a person and
    announced, not left running for ever on a verdict nobody acts on."""
    assert (
        next_action(
            PLAN,
            PlanPosition(0, 0.0),
            verdict="ROLLBACK",
            canary_requests=500,
            min_requests=100,
            now=0.0,
            rolls_back=False,
        ).kind
        == PAUSE
    )
    config = PromotionConfig(
        name="checkout", min_requests=100, plan=PLAN, auto_rollback_enabled=False
    )
    gate = PromotionGate(config, clock=clock, wall_clock=clock, plan_timer=False)
    gate.start_canary(feature_flags=["new_checkout"])
    feed(gate, "stable", 600, error_every=100)
    feed(gate, "canary", 300, error_every=3)
    gate.tick()
    assert gate.health_snapshot().verdict == "ROLLBACK"
    assert gate.environment == Environment.canary(1)  # not rolled back: it may not
    position = gate.state.plan
    assert position is not None and position.status == "paused"
    assert "the verdict is ROLLBACK" in position.reason
    event = gate.get_history()[-1]
    assert (event.action, event.actor) == ("pause", "gate")  # type: ignore[union-attr]
    clock.advance(24 * HOUR)
    gate.tick()
    assert gate.environment == Environment.canary(1) and gate.state.plan.status == "paused"
    gate.close()


def test_an_approval_counts_only_at_the_ready_manual_step(clock: FakeClock) -> None:
    """resume() while the manual step still bakes is refused, not an approval
    given in advance for evidence nobody has seen."""
    gate = plan_gate(clock)
    gate.start_canary(feature_flags=["new_checkout"])
    for _ in range(2):  # 1 % and 5 %
        healthy_traffic(gate)
        clock.advance(HOUR)
        gate.tick()
    assert gate.environment == Environment.canary(25)
    with pytest.raises(PromotionError, match="cannot approve canary 25% yet"):
        gate.resume()
    assert gate.state.plan is not None and not gate.state.plan.approved
    healthy_traffic(gate)
    clock.advance(HOUR)
    gate.tick()
    assert gate.environment == Environment.canary(25) and gate.state.plan.awaiting
    gate.resume(actor="carol")
    assert gate.environment == Environment.STAGING
    gate.close()


def test_the_jump_ratio_is_the_plans_to_set() -> None:
    """Argo-style [1, 10, 50] and Flagger-style [2, 10, 80] plans, with a ratio that allows them."""
    with pytest.raises(ConfigError, match="plan.max_step_ratio allows more"):
        RolloutPlan(steps=(1, 10, 50))
    assert RolloutPlan(steps=(1, 10, 50), max_step_ratio=10).steps[1].traffic_percent == 10
    assert RolloutPlan(steps=(2, 10, 80), max_step_ratio=math.inf).steps[2].traffic_percent == 80
    for bad in (0.5, float("nan"), True, "5"):
        with pytest.raises(ConfigError, match="plan.max_step_ratio"):
            RolloutPlan(max_step_ratio=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="plan.on_deadline"):
        RolloutPlan(on_deadline="shrug")
    table = {"steps": [1, 10], "max_step_ratio": 10, "approval_deadline_seconds": 60}
    assert RolloutPlan.from_dict(table).approval_deadline_seconds == 60


@pytest.mark.parametrize("on_deadline", ["pause", "rollback"])
def test_a_manual_step_has_a_deadline(clock: FakeClock, on_deadline: str) -> None:
    plan = RolloutPlan(
        steps=(1, {"traffic_percent": 5, "manual": True}),
        bake_seconds=HOUR,
        approval_deadline_seconds=2 * HOUR,
        on_deadline=on_deadline,
    )
    gate = plan_gate(clock, plan)
    gate.start_canary(feature_flags=["new_checkout"])
    for _ in range(2):
        healthy_traffic(gate)
        clock.advance(HOUR)
        gate.tick()
    assert gate.environment == Environment.canary(5) and gate.state.plan.awaiting
    clock.advance(HOUR)  # baked an hour ago: within the deadline
    healthy_traffic(gate)
    gate.tick()
    assert gate.state.plan.status == "running"
    clock.advance(HOUR)  # two hours without an approval
    healthy_traffic(gate)
    gate.tick()
    if on_deadline == "pause":
        assert gate.state.plan.status == "paused" and gate.environment == Environment.canary(5)
        assert "waited 7200 s for a person's approval" in gate.state.plan.reason
    else:
        assert gate.environment == Environment.PRODUCTION
        assert gate.state.plan.status == "aborted"  # the plan gave up, as an abort does
        [event] = gate.get_rollback_history()
        assert "plan.on_deadline" in event.reason and event.actor == "gate"
    gate.close()


def test_an_inconclusive_step_can_roll_back_at_its_limit(clock: FakeClock) -> None:
    plan = RolloutPlan(
        steps=(1, 5), bake_seconds=HOUR, inconclusive_limit_seconds=HOUR, on_deadline="rollback"
    )
    gate = plan_gate(clock, plan)
    gate.start_canary(feature_flags=["new_checkout"])
    clock.advance(HOUR)
    gate.tick()  # baked, no traffic: held
    assert gate.state.plan.held
    clock.advance(HOUR)
    gate.tick()
    assert gate.environment == Environment.PRODUCTION and gate.state.plan.status == "aborted"
    gate.close()


def test_progress_says_what_the_plan_waits_for(clock: FakeClock) -> None:
    gate = plan_gate(clock)
    gate.start_canary(feature_flags=["new_checkout"])
    feed(gate, "canary", 12)
    feed(gate, "stable", 600)
    gate.tick()
    shown = gate.plan_status()
    assert shown is not None and shown["waiting_for"] == "canary 1% bakes for 3600 s more"
    clock.advance(HOUR)
    gate.tick()  # baked with 12 of 100 canary requests: held
    gate.tick()
    shown = gate.plan_status()
    assert shown is not None and "12 of 100 canary requests" in (shown["waiting_for"] or "")
    assert shown["eta"] is None  # nobody can say when a held step goes on
    gate.pause("freeze")
    shown = gate.plan_status()
    assert shown is not None and shown["waiting_for"] == "freeze"
    gate.close()


# -- a person's plan control, from a process whose snapshot is behind -------


def _two_processes(
    clock: FakeClock, tmp_path: Path
) -> tuple[PromotionGate, PromotionGate, list[Any]]:
    """Two gates on one SQLite file: ``first`` follows the file at the usual
    pace, ``behind`` never by itself (its follower waits an hour), so its
    snapshot is older than the file's whenever ``first`` changed something:
    the 0.25 s during which a worker has not yet read another's change."""
    from gate_middleware.stores.sqlite import SqliteStateStore, _Database
    from gate_middleware.stores.windows import InMemoryWindowStore

    config = PromotionConfig(name="checkout", min_requests=100, plan=PLAN)
    path = tmp_path / "gate.db"
    first = PromotionGate.from_url(
        f"sqlite:///{path}", config, clock=clock, wall_clock=clock, plan_timer=False
    )
    first.start_canary(feature_flags=["new_checkout"], actor="alice")
    for _ in range(2):  # 1 % and 5 %
        healthy_traffic(first)
        clock.advance(HOUR)
        first.tick()
    healthy_traffic(first)
    clock.advance(HOUR)
    first.tick()
    assert first.state.plan is not None and first.state.plan.awaiting
    database = _Database(path)
    behind = PromotionGate(
        config,
        state_store=SqliteStateStore(database, "checkout", first.state, refresh_seconds=HOUR),
        window_store=InMemoryWindowStore(config.rollback_window_seconds),
        clock=clock,
        wall_clock=clock,
        plan_timer=False,
    )
    assert behind.state.plan == first.state.plan  # it read the file once, at the start
    return first, behind, [database]


def test_an_approval_from_a_process_that_has_not_seen_the_latest_change_is_made(
    clock: FakeClock, tmp_path: Path
) -> None:
    """The plan waits for approval; another worker changes its position
    without moving it (here a pause; in the demo it was a hold on a MONITOR
    flicker), and a person's ``plan resume`` reaches a worker that has not
    read that yet: the approval is made, not dropped with a 200."""
    first, behind, keep = _two_processes(clock, tmp_path)
    first.pause("a look at the dashboards", actor="bob")
    stale = behind.state.plan
    assert stale is not None and not stale.held and stale.status == "running"
    behind.resume(actor="carol")
    shared = PromotionGate.from_url(f"sqlite:///{tmp_path / 'gate.db'}", first.config)
    position = shared.state.plan
    assert position is not None
    assert (position.status, position.approved) == ("running", True)
    # (``behind`` judged its own empty windows right after: a hold may follow)
    made = [(e.action, e.actor) for e in shared.get_history() if e.action != "hold"]
    assert made[-2:] == [("pause", "bob"), ("resume", "carol")]
    for gate in (first, behind, shared):
        gate.close()
    for database in keep:
        database.close()


def test_a_skip_from_a_process_behind_a_hold_moves_the_plan(
    clock: FakeClock, tmp_path: Path
) -> None:
    """``plan skip`` decided on a snapshot that misses a pause made since
    still moves the plan (it is still at that step), not 'moved meanwhile'."""
    first, behind, keep = _two_processes(clock, tmp_path)
    first.pause("a look", actor="bob")
    assert behind.skip_to(4, force=True, actor="carol") == Environment.STAGING
    shared = PromotionGate.from_url(f"sqlite:///{tmp_path / 'gate.db'}", first.config)
    assert shared.environment == Environment.STAGING
    assert shared.get_history()[-1].action == "skip"
    for gate in (first, behind, shared):
        gate.close()
    for database in keep:
        database.close()
