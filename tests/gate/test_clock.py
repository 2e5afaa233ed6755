"""One clock for everything time-based: ``PromotionGate(clock=ManualClock())``
moves the windows, the evaluations, the bakes and the event times together."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gate_middleware import (
    Clock,
    ConfigError,
    Environment,
    ManualClock,
    PromotionConfig,
    PromotionGate,
    SystemClock,
)
from gate_middleware.domain.plan import RolloutPlan
from tests.support import FakeClock, healthy_traffic

HOUR = 3600.0
PLAN = RolloutPlan(steps=(5, 25), bake_seconds=HOUR, staging_bake_seconds=HOUR)


def test_one_manual_clock_moves_the_bakes_and_the_event_times() -> None:
    clock = ManualClock(start=1_800_000_000.0)
    gate = PromotionGate(
        PromotionConfig(name="checkout", min_requests=100, plan=PLAN),
        clock=clock,
        plan_timer=False,
    )
    gate.start_canary(feature_flags=["new_checkout"])
    started = gate.get_history()[-1].timestamp
    assert started == datetime.fromtimestamp(1_800_000_000.0, UTC)

    healthy_traffic(gate)
    clock.advance(HOUR / 2)
    gate.tick()
    assert gate.environment == Environment.canary(5)  # half baked
    status = gate.plan_status()
    assert status is not None
    assert status["bake"]["fraction"] == pytest.approx(0.5)

    clock.advance(HOUR / 2)
    gate.tick()
    assert gate.environment == Environment.canary(25)
    moved = gate.get_history()[-1].timestamp
    assert (moved - started).total_seconds() == pytest.approx(HOUR)


def test_a_gate_on_a_durable_store_reads_the_same_clock(tmp_path: Path) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    config = PromotionConfig(name="checkout", min_requests=100, plan=PLAN)
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    gate = PromotionGate.from_url(url, config, clock=clock, plan_timer=False)
    try:
        gate.start_canary(feature_flags=["new_checkout"])
        assert gate.get_history()[-1].timestamp == datetime.fromtimestamp(1_900_000_000.0, UTC)
    finally:
        gate.close()


def test_the_older_pair_of_callables_still_works() -> None:
    fake = FakeClock(start=2_000_000_000.0)
    gate = PromotionGate(
        PromotionConfig(min_requests=100, plan=PLAN), clock=fake, wall_clock=fake, plan_timer=False
    )
    gate.start_canary(feature_flags=["new_checkout"])
    assert gate.get_history()[-1].timestamp == datetime.fromtimestamp(2_000_000_000.0, UTC)


def test_the_system_clock_is_a_clock() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(ManualClock(), Clock)
    assert not isinstance(FakeClock(), Clock)


@pytest.mark.parametrize(
    ("options", "field", "says"),
    [
        ({"clock": 12.0}, "clock", "a Clock (monotonic() and time()"),
        ({"clock": "monotonic"}, "clock", "a callable returning monotonic seconds"),
        ({"clock": ManualClock(), "wall_clock": FakeClock()}, "wall_clock", "left out when"),
        ({"clock": FakeClock(), "wall_clock": 5}, "wall_clock", "a callable returning Unix"),
    ],
)
def test_a_clock_that_cannot_be_read_is_refused(
    options: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        PromotionGate(PromotionConfig(), plan_timer=False, **options)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert says in str(raised.value)


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, True, "5"])
def test_a_manual_clock_never_goes_back(seconds: object) -> None:
    clock = ManualClock()
    with pytest.raises(ConfigError) as raised:
        clock.advance(seconds)  # type: ignore[arg-type]
    assert raised.value.field == "seconds"
    assert clock.monotonic() == 0.0


@pytest.mark.parametrize("start", [-5.0, math.nan, None])
def test_a_manual_clock_starts_somewhere_real(start: object) -> None:
    with pytest.raises(ConfigError) as raised:
        ManualClock(start)  # type: ignore[arg-type]
    assert raised.value.field == "start"


def test_a_wall_clock_alone_replaces_only_the_wall_reading() -> None:
    gate = PromotionGate(
        PromotionConfig(min_requests=100, plan=PLAN),
        wall_clock=lambda: 2_100_000_000.0,
        plan_timer=False,
    )
    gate.start_canary(feature_flags=["new_checkout"])
    assert gate.get_history()[-1].timestamp == datetime.fromtimestamp(2_100_000_000.0, UTC)
