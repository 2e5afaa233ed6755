from __future__ import annotations

import math
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate_middleware.judge.sketch import MAX_SECONDS, MIN_SECONDS, bucket_index, bucket_value
from gate_middleware.stores.windows import SLICES, InMemoryWindowStore, SlidingWindow


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@given(st.floats(min_value=MIN_SECONDS * 1.0001, max_value=MAX_SECONDS * 0.999))
def test_every_bucket_reports_within_one_percent(duration: float) -> None:
    assert abs(bucket_value(bucket_index(duration)) - duration) <= 0.01 * duration


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-4, max_value=100), min_size=1, max_size=3000),
)
def test_p99_is_within_one_percent_of_the_exact_p99(values: list[float]) -> None:
    window = SlidingWindow(300)
    for v in values:
        window.record(True, True, v, 0.0)
    estimate = window.stats(0.0).p99_latency
    exact = exact_quantile(values, 0.99)
    assert abs(estimate - exact) <= 0.01 * exact


def test_p99_of_a_realistic_latency_mix() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.05), 0.6) for _ in range(200_000)]
    window = SlidingWindow(300)
    for v in values:
        window.record(True, True, v, 0.0)
    exact = exact_quantile(values, 0.99)
    assert abs(window.stats(0.0).p99_latency - exact) <= 0.01 * exact


def test_durations_outside_the_range_are_clamped() -> None:
    window = SlidingWindow(300)
    window.record(True, True, 0.0, 0.0)
    assert window.stats(0.0).p99_latency == MIN_SECONDS
    window = SlidingWindow(300)
    window.record(True, True, 10 * MAX_SECONDS, 0.0)
    assert window.stats(0.0).p99_latency >= MAX_SECONDS * 0.99


def test_outcomes_expire_after_the_window() -> None:
    window = SlidingWindow(300)
    for i in range(100):
        window.record(i % 10 != 0, True, 0.2, 0.0)
    assert window.stats(0.0).requests == 100
    assert window.stats(0.0).failures == 10
    # Still inside the window just before it ends.
    assert window.stats(299.0).requests == 100
    window.record(True, True, 0.01, 299.0)
    assert window.stats(300.0).requests == 1  # the first slice (0..30 s) has expired
    assert window.stats(300.0).p99_latency == pytest.approx(0.01, rel=0.01)
    assert window.stats(1000.0).requests == 0


def test_slices_slide_one_at_a_time() -> None:
    window = SlidingWindow(100)  # 10 s slices
    for second in range(0, 200):
        window.record(True, True, 0.1, float(second))
        # Always the last 10 full-or-partial slices: between 91 and 100 outcomes.
        assert min(second + 1, 91) <= window.stats(float(second)).requests <= 100


def test_clear_forgets_everything() -> None:
    store = InMemoryWindowStore(60)
    store.record("canary", False, False, 1.0, 0.0)
    store.record("stable", True, True, 0.1, 0.0)
    store.clear()
    assert store.stats("canary", 0.0).requests == 0
    assert store.stats("stable", 0.0).requests == 0


def test_memory_does_not_grow_with_traffic() -> None:
    window = SlidingWindow(300)
    rng = random.Random(1)

    def feed(count: int, start: float, step: float) -> None:
        for i in range(count):
            window.record(rng.random() > 0.01, True, rng.lognormvariate(-3, 1), start + i * step)

    def window_bytes() -> int:
        # Only what the window's own code holds: other tests' threads may
        # allocate in this process meanwhile.
        ours = [
            tracemalloc.Filter(True, "*gate_middleware/stores/windows.py"),
            tracemalloc.Filter(True, "*gate_middleware/judge/sketch.py"),
        ]
        snapshot = tracemalloc.take_snapshot().filter_traces(ours)
        return sum(stat.size for stat in snapshot.statistics("filename"))

    tracemalloc.start()
    feed(10_000, 0.0, 0.05)  # 500 s: every slice of the window is in use
    after_small = window_bytes()
    feed(200_000, 500.0, 0.01)
    after_large = window_bytes()
    tracemalloc.stop()
    # Twenty times the traffic, over several slice rotations: the same memory.
    assert after_large - after_small < 16 * 1024
    assert len(window._ring) == SLICES
