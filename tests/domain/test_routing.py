from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate_middleware import Environment, PromotionConfig, PromotionGate, compute_bucket
from gate_middleware.domain.routing import RoutingDecision, canary_threshold, combine_decisions

VECTORS = Path(__file__).resolve().parents[1] / "data" / "bucket_vectors.csv"


def load_vectors() -> list[tuple[str, str, int]]:
    with open(VECTORS, newline="", encoding="utf-8") as fh:
        return [(r["rollout"], r["session_id"], int(r["bucket"])) for r in csv.DictReader(fh)]


def gate_at(
    percent: float, name: str = "default", flags: tuple[str, ...] = ("new_api",)
) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(percent), feature_flags=flags, name=name)
    )


def test_bucket_formula_matches_the_published_vectors() -> None:
    vectors = load_vectors()
    assert len(vectors) >= 10_000
    wrong = [(n, s, b) for n, s, b in vectors if compute_bucket(n, s) != b]
    assert wrong == []


def test_the_gate_routes_by_the_published_vectors() -> None:
    # route_request inlines the formula for speed: it must agree with the vectors.
    gates: dict[str, PromotionGate] = {}
    checked = 0
    for rollout, session, bucket in load_vectors():
        if rollout == "ünïcode-rollout":  # not a valid rollout name for a gate
            continue
        gate = gates.get(rollout) or gates.setdefault(rollout, gate_at(10, name=rollout))
        assert gate.route_request(session).bucket == bucket
        checked += 1
    assert checked >= 8000


CHECK_IN_SUBPROCESS = """
import csv, sys
from gate_middleware import compute_bucket
with open(sys.argv[1], newline="", encoding="utf-8") as fh:
    rows = list(csv.DictReader(fh))
bad = sum(compute_bucket(r["rollout"], r["session_id"]) != int(r["bucket"]) for r in rows)
print(len(rows), bad)
"""


@pytest.mark.parametrize("seed", ["0", "1", "random"])
def test_buckets_are_the_same_in_other_processes(seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", CHECK_IN_SUBPROCESS, str(VECTORS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out == ["10000", "0"]


def test_routing_is_deterministic_and_sticky() -> None:
    gate = gate_at(10)
    first = [gate.route_request(f"user-{i}").variant for i in range(2000)]
    again = [gate_at(10).route_request(f"user-{i}").variant for i in range(2000)]
    assert first == again
    assert first == [gate.route_request(f"user-{i}").variant for i in range(2000)]


def test_split_is_within_half_a_point_at_ten_percent() -> None:
    gate = gate_at(10)
    canary = sum(gate.route_request(f"session-{i}").is_canary for i in range(100_000))
    assert abs(canary / 100_000 * 100 - 10) <= 0.5


@given(
    st.text(max_size=40),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=100),
)
def test_raising_the_percentage_never_moves_a_canary_session_back(
    session: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    bucket = compute_bucket("default", session)
    if bucket < canary_threshold(low):
        assert bucket < canary_threshold(high)


def test_ramp_keeps_every_canary_session_on_the_canary() -> None:
    gate = gate_at(1)
    sessions = [f"s{i}" for i in range(20_000)]
    previous = {s for s in sessions if gate.route_request(s).is_canary}
    for percent in (5, 10, 25, 50, 99.999, 100):
        gate.set_traffic_percent(percent)
        now = {s for s in sessions if gate.route_request(s).is_canary}
        assert previous <= now
        previous = now
    assert previous == set(sessions)


def test_zero_and_hundred_percent() -> None:
    none = gate_at(0)
    everyone = gate_at(100)
    for i in range(5000):
        assert not none.route_request(str(i)).is_canary
        assert everyone.route_request(str(i)).is_canary


def test_decision_carries_flags_environment_and_reason() -> None:
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(50), feature_flags=["new_checkout_flow"])
    )
    gate_prod = PromotionGate(PromotionConfig(feature_flags=["dark_mode"]))
    seen = {"canary": None, "stable": None}
    for i in range(100):
        decision = gate.route_request(f"user-{i}")
        seen[decision.variant] = decision
    canary, stable = seen["canary"], seen["stable"]
    assert canary is not None and stable is not None
    assert canary.is_canary and canary.is_enabled("new_checkout_flow")
    assert canary.target_environment == Environment.canary(50)
    assert canary.enabled_features == ("new_checkout_flow",)
    assert not stable.is_canary and not stable.is_enabled("new_checkout_flow")
    assert stable.target_environment == Environment.PRODUCTION
    assert stable.enabled_features == ()
    assert canary.reason.startswith("bucket below 50000")
    assert 0 <= canary.bucket < 50_000 <= stable.bucket < 100_000
    everyone = gate_prod.route_request("anyone")
    assert not everyone.is_canary and everyone.is_enabled("dark_mode")


def test_rollout_name_splits_independently() -> None:
    a, b = gate_at(50, name="checkout"), gate_at(50, name="search")
    same = sum(
        a.route_request(str(i)).is_canary == b.route_request(str(i)).is_canary
        for i in range(20_000)
    )
    assert 0.45 < same / 20_000 < 0.55


def test_strange_session_ids_still_route() -> None:
    gate = gate_at(50)
    for session in ["", "\x00", "\ud800", "é" * 5000, " ", "=;,"]:
        assert gate.route_request(session).variant in ("canary", "stable")


def test_a_combined_decision_holds_every_parts_flags_in_order_and_the_first_canary() -> None:
    """``combine_decisions``: the flags of all parts in the rollouts' order
    (each answered by ``is_enabled``), the canary path of the first part on
    one, each part's variant in the reason; one part is returned as it is."""
    canary = Environment.canary(10)
    parts = (
        RoutingDecision(False, Environment.PRODUCTION, (), 7, "", rollout="a"),
        RoutingDecision(True, canary, ("b1", "b2"), 3, "", rollout="b"),
        RoutingDecision(True, Environment.canary(50), ("c1",), 4, "", rollout="c"),
    )
    combined = combine_decisions(parts)
    assert combined.enabled_features == ("b1", "b2", "c1")
    assert [combined.is_enabled(flag) for flag in ("b1", "b2", "c1", "a1")] == [
        True,
        True,
        True,
        False,
    ]
    assert combined.is_canary and combined.target_environment == canary
    assert combined.bucket == -1
    assert combined.reason == "a: stable; b: canary; c: canary"
    assert combined.parts == parts
    assert combine_decisions(parts, "given").reason == "given"
    assert combine_decisions(parts[:1]) is parts[0]
    nobody = combine_decisions(())
    assert not nobody.is_canary and nobody.enabled_features == ()
    assert nobody.reason == "no rollout"
