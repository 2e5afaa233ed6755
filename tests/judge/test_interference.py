"""Concurrent rollouts in one app: their cohorts are independent, so a faulty
release is rolled back and a healthy one beside it is not (a bounded sample
of ``python -m benchmarks.interference_sim``)."""

from __future__ import annotations

import math

import pytest

from benchmarks import interference_sim
from gate_middleware.domain.routing import BUCKETS, canary_threshold

SHARE_RATE = canary_threshold(interference_sim.ROLLOUT_SHARE) / BUCKETS  # 0.1


def within_five_sigma(hits: int, trials: int, rate: float) -> bool:
    """``hits`` in ``trials`` is within 5 binomial standard deviations of
    ``rate`` (a chance of about 6e-7 to fail when the rate is right)."""
    return abs(hits - trials * rate) <= 5.0 * math.sqrt(trials * rate * (1.0 - rate))


@pytest.mark.parametrize("second", ["rollout-1", "rollout-4"])
def test_another_rollouts_canary_holds_its_share_on_both_sides(second: str) -> None:
    """Among rollout-0's canary sessions and among its production sessions,
    ``second``'s canary holds its own 10 %: routing under different names
    splits each rollout's cohort evenly across the other's sides."""
    overlap = interference_sim.cohort_overlap(0, "rollout-0", second)
    assert overlap.canary_sessions + overlap.production_sessions == interference_sim.SESSIONS
    assert within_five_sigma(overlap.canary_on_second, overlap.canary_sessions, SHARE_RATE)
    assert within_five_sigma(overlap.production_on_second, overlap.production_sessions, SHARE_RATE)


def test_the_share_check_sees_cohorts_that_coincide() -> None:
    """The check above can fail: a rollout sharing rollout-0's name has all of
    its canary on rollout-0's canary and none on its production."""
    overlap = interference_sim.cohort_overlap(0, "rollout-0", "rollout-0")
    assert not within_five_sigma(overlap.canary_on_second, overlap.canary_sessions, SHARE_RATE)
    assert overlap.production_on_second == 0


@pytest.mark.parametrize("seed", range(3))
def test_a_faulty_release_is_rolled_back_and_the_healthy_one_beside_it_is_not(seed: int) -> None:
    """Two rollouts at 10 % each on the same sessions, rollout-0's canary
    failing 10 % of its requests (20× production's 0.5 %: the sessions
    model's always-failing Zipf sessions leave 2× or 5× undetected in some
    seeds). rollout-0 is rolled back within 30 min; rollout-1, whose two
    sides each carry 10 % of rollout-0's sessions, is not. A third rollout
    under rollout-0's own name shares its canary and is rolled back with it:
    the healthy one is spared by the independent cohorts, not by chance."""
    faulty, healthy, same_name = interference_sim.simulate_rollouts(
        seed, ["rollout-0", "rollout-1", "rollout-0"], faulty=0, faulty_errors=0.10
    )
    assert faulty is not None and faulty < 1800.0, faulty
    assert healthy is None, healthy
    assert same_name is not None, same_name
