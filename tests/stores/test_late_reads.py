"""A state read before a change this process made, delivered after it, never
puts the older state back: not in the SQLite store, not in the gate.

The follower's read and a compare-and-set on a request thread can finish in
either order. The interleaving is made step by step here, against a real
SQLite file, rather than hoped for from racing threads.
"""

from __future__ import annotations

from pathlib import Path

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.state import GateState
from gate_middleware.stores import registry as store_registry
from gate_middleware.stores.sqlite import SqliteStateStore


def test_a_follower_read_finishing_after_this_process_changed_the_state_is_dropped(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    config = PromotionConfig(name="late", rollback_window_seconds=60.0)
    initial = GateState(environment=Environment.canary(10), release_flags=frozenset({"f"}))
    one, one_windows = store_registry.open_stores(url, config, initial)
    two, two_windows = store_registry.open_stores(url, config, initial)
    assert isinstance(two, SqliteStateStore)
    # Two's follower thread never starts: this test plays its steps itself,
    # in the order that loses the race.
    two._follower.close()
    try:
        seen: list[GateState] = []
        two.subscribe(seen.append)
        first = one.load()
        at_50 = first.evolve(environment=Environment.canary(50), transition="one-50")
        assert one.compare_and_set(first.version, at_50)
        # Two's follower reads the other process's change (version 1) ...
        in_flight = two._read()
        assert in_flight is not None and in_flight.version == at_50.version
        # ... and before it holds it, two makes its own change on top of it.
        rolled_back = in_flight.evolve(environment=Environment.canary(0), transition="two-0")
        assert two.compare_and_set(in_flight.version, rolled_back)
        assert two.load().transition == "two-0"
        # The read finishes late: it is older than what two holds, and dropped.
        assert not two._hold(in_flight)
        assert two.load().transition == "two-0"
        assert two.load().environment == Environment.canary(0)
        assert seen == []  # no listener was told of the older state
        # A newer state from elsewhere is still taken up, once.
        newest = rolled_back.evolve(environment=Environment.canary(5), transition="one-5")
        assert one.compare_and_set(rolled_back.version, newest)
        two._follow()
        assert two.load().transition == "one-5"
        assert [state.transition for state in seen] == ["one-5"]
    finally:
        for store in (one, two, one_windows, two_windows):
            store.close()


def test_a_gate_never_takes_up_a_state_older_than_its_own(tmp_path: Path) -> None:
    """The store's subscription may deliver a state after the gate made a
    newer one (the follower's thread calls it outside any lock): the gate
    keeps routing by the newer, and no state callback reports a step back."""
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    gate = PromotionGate.from_url(url, PromotionConfig(name="late-gate"), plan_timer=False)
    try:
        gate.start_canary(50.0, ["f"])
        before = gate.state
        changes: list[tuple[int, int]] = []
        gate.on_state_change(lambda old, new: changes.append((old.version, new.version)))
        gate.rollback("the late delivery test")
        after = gate.state
        assert after.version == before.version + 1
        gate._transitions.adopt_if_newer(before)  # delivered late
        assert gate.state is after
        assert gate.route_request("any-session").variant == "stable"
        assert changes == [(before.version, after.version)]
        # The same identity again is nothing new either.
        gate._transitions.adopt_if_newer(after)
        assert changes == [(before.version, after.version)]
    finally:
        gate.close()
