"""The store contract: one conformance suite that every store runs.

Each backend appears once in ``BACKENDS`` (a function that opens a state
store and a window store for a fresh rollout, and says whether a second
opening shares the first's data); every test below runs against each. A new
backend adds one entry here and must pass all of them. The in-memory stores
are one process's; the Redis stores run against a real ``redis-server``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.codec import CorruptData, decode_state, encode_state
from gate_middleware.domain.state import CarriedEvidence, GateState
from gate_middleware.judge.evidence import ROUTE_NAMES, Evidence, route_slot
from gate_middleware.judge.sample import MAX_AMOUNT, SAMPLE_SESSIONS, SCALE, STORE_LIMIT
from gate_middleware.judge.verdict import WindowStats
from gate_middleware.stores import (
    Delivery,
    Outbox,
    StateStore,
    StateStoreBase,
    TrackingWindowStore,
    WindowStore,
    WindowStoreBase,
    missing_members,
    register_store,
    schemes,
)
from gate_middleware.stores import buffer as buffer_module
from gate_middleware.stores import registry as store_registry
from gate_middleware.stores.buffer import (
    evidence_fields,
    evidence_from_fields,
    sample_fields,
    sample_from_fields,
)
from gate_middleware.stores.memory import InMemoryStateStore
from gate_middleware.stores.windows import InMemoryWindowStore
from tests.servers import RedisServer, eventually

WINDOW_SECONDS = 60.0


@dataclass
class Opened:
    state: StateStore
    windows: WindowStore
    initial: GateState


@dataclass
class Backend:
    """Opens the stores of one rollout; ``shared``: a second opening of the
    same rollout sees the first's state and outcomes (other processes do)."""

    open: Callable[[str], Opened]
    shared: bool
    name: str = ""
    #: Its outbox outlives the process and is shared by the rollout's processes.
    durable_outbox: bool = False
    #: Its clock is a server's (times are corrected to it), not this host's.
    server_clock: bool = False
    opened: list[Opened] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None

    def __call__(self, rollout: str) -> Opened:
        stores = self.open(rollout)
        self.opened.append(stores)
        return stores

    def close(self) -> None:
        for stores in self.opened:
            stores.state.close()
            stores.windows.close()
        if self.cleanup is not None:
            self.cleanup()


def initial_state() -> GateState:
    return GateState(environment=Environment.canary(10), release_flags=frozenset({"f"}), release=1)


def memory_backend(_: RedisServer | None) -> Backend:
    def open_memory(rollout: str) -> Opened:
        initial = initial_state()
        return Opened(InMemoryStateStore(initial), InMemoryWindowStore(WINDOW_SECONDS), initial)

    return Backend(open_memory, shared=False)


def redis_backend(server: RedisServer | None) -> Backend:
    assert server is not None

    def open_redis(rollout: str) -> Opened:
        initial = initial_state()
        config = PromotionConfig(name=rollout, rollback_window_seconds=WINDOW_SECONDS)
        state, windows = store_registry.open_stores(server.url, config, initial)
        return Opened(state, windows, initial)

    return Backend(open_redis, shared=True, server_clock=True)


def sqlite_backend(_: RedisServer | None) -> Backend:
    directory = tempfile.TemporaryDirectory(prefix="gate-contract-")
    url = f"sqlite://{directory.name}/gate.db"

    def open_sqlite(rollout: str) -> Opened:
        initial = initial_state()
        config = PromotionConfig(name=rollout, rollback_window_seconds=WINDOW_SECONDS)
        state, windows = store_registry.open_stores(url, config, initial)
        return Opened(state, windows, initial)

    backend = Backend(open_sqlite, shared=True, durable_outbox=True)
    backend.cleanup = directory.cleanup
    return backend


BACKENDS: dict[str, Callable[[RedisServer | None], Backend]] = {
    "memory": memory_backend,
    "redis": redis_backend,
    "sqlite": sqlite_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    opened = BACKENDS[request.param](server)
    opened.name = request.param
    try:
        yield opened
    finally:
        opened.close()


def rollout() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}"


# -- the port: every member declared and present ----------------------------------------


def test_a_store_has_every_member_of_its_port(backend: Backend) -> None:
    stores = backend(rollout())
    assert isinstance(stores.state, StateStore) and isinstance(stores.windows, WindowStore)
    assert missing_members(stores.state, StateStore) == []
    assert missing_members(stores.windows, WindowStore) == []
    assert stores.state.remote is backend.shared and stores.windows.remote is backend.shared
    assert stores.state.transition_timeout > 0
    assert stores.state.status() == ("ok", "") and stores.windows.status() == ("ok", "")


# -- the state: load and compare-and-set ------------------------------------------------


def test_the_first_load_is_the_initial_state(backend: Backend) -> None:
    stores = backend(rollout())
    loaded = stores.state.load()
    assert loaded.environment == stores.initial.environment
    assert loaded.release_flags == stores.initial.release_flags
    assert loaded.version == stores.initial.version


def test_compare_and_set_takes_only_the_expected_version_and_transition(
    backend: Backend,
) -> None:
    stores = backend(rollout())
    first = stores.state.load()
    new = first.evolve(environment=Environment.canary(25), transition="t-1")
    assert stores.state.compare_and_set(first.version, new, expected_transition=first.transition)
    assert stores.state.load().environment == Environment.canary(25)
    # A writer that read before the change loses: nothing is overwritten.
    stale = first.evolve(environment=Environment.PRODUCTION, transition="t-2")
    assert not stores.state.compare_and_set(first.version, stale)
    wrong_transition = new.evolve(environment=Environment.STAGING, transition="t-3")
    assert not stores.state.compare_and_set(
        new.version, wrong_transition, expected_transition="not-t-1"
    )
    now = stores.state.load()
    assert (now.version, now.transition, now.environment) == (
        new.version,
        "t-1",
        Environment.canary(25),
    )
    # The same version with the right transition id is taken, with what the
    # release's steps carried (kept as it was given).
    carried = CarriedEvidence(-2.718281828459045, 3)
    last = new.evolve(environment=Environment.STAGING, transition="t-4", carried=carried)
    assert stores.state.compare_and_set(new.version, last, expected_transition="t-1")
    assert stores.state.load().environment == Environment.STAGING
    assert stores.state.load().carried == carried


@pytest.mark.parametrize(
    "carried",
    [
        {"log_evidence": "1.5", "step": 2},
        {"log_evidence": float("nan"), "step": 2},
        {"log_evidence": True, "step": 2},
        {"log_evidence": 1.0, "step": 1},
        {"log_evidence": 1.0, "step": 2.5},
        {"log_evidence": 1.0},
    ],
)
def test_carried_evidence_that_does_not_decode_is_corrupt_data(carried: Any) -> None:
    """A foreign write to the carried evidence is ``CorruptData``, never a
    number the judge would draw its lines by; a state stored without it (an
    earlier version) decodes as a release's first step."""
    state = GateState(Environment.canary(5.0), carried=CarriedEvidence(-1.5, 2))
    text = encode_state(state)
    assert decode_state(text, b"1").carried == CarriedEvidence(-1.5, 2)
    assert '"carried"' not in encode_state(GateState(Environment.canary(5.0)))
    data = json.loads(text)
    data["carried"] = carried
    with pytest.raises(CorruptData, match="carried|KeyError"):
        decode_state(json.dumps(data), b"1")
    del data["carried"]
    assert decode_state(json.dumps(data), b"1").carried is None


def test_a_retired_rollout_is_kept_retired_and_a_foreign_value_is_corrupt(
    backend: Backend,
) -> None:
    """``GateState.retired`` (a rollout no longer served) round-trips through
    every store, and through a reopening of a shared one; a state written
    before it decodes as served; anything but true or false is ``CorruptData``."""
    name = rollout()
    one = backend(name)
    first = one.state.load()
    assert not first.retired
    assert one.state.compare_and_set(first.version, first.evolve(retired=True, transition="r-1"))
    assert one.state.load().retired
    if backend.shared:
        assert eventually(lambda: backend(name).state.load().retired, 5.0)
    text = encode_state(GateState(Environment.canary(5.0), retired=True))
    assert decode_state(text, b"1").retired
    assert '"retired"' not in encode_state(GateState(Environment.canary(5.0)))
    data = json.loads(text)
    data["retired"] = "yes"
    with pytest.raises(CorruptData, match="retired"):
        decode_state(json.dumps(data), b"1")
    del data["retired"]
    assert not decode_state(json.dumps(data), b"1").retired


def test_a_change_reaches_every_opening_of_a_shared_rollout(backend: Backend) -> None:
    name = rollout()
    one, two = backend(name), backend(name)
    seen: list[GateState] = []
    two.state.subscribe(seen.append)
    first = one.state.load()
    changed = first.evolve(environment=Environment.canary(50), transition="shared-1")
    assert one.state.compare_and_set(first.version, changed)
    if backend.shared:
        assert eventually(lambda: two.state.load().environment == Environment.canary(50), 5.0)
        assert eventually(lambda: any(s.transition == "shared-1" for s in seen), 5.0)
    else:  # one process's store: a second one is another rollout's
        assert two.state.load().environment == Environment.canary(10)
        assert seen == []


# -- the windows: record, stats, evidence, clear -----------------------------------------


def record(windows: WindowStore, variant: str, n: int, failures: int, now: float) -> None:
    for i in range(n):
        windows.record(variant, i >= failures, i >= failures, 0.010 + i / 10_000, now, cluster=i)


def test_outcomes_are_counted_per_variant_with_their_evidence(backend: Backend) -> None:
    stores = backend(rollout())
    now = 1_000.0
    record(stores.windows, "canary", 40, 4, now)
    record(stores.windows, "stable", 100, 1, now)
    stores.windows.record("canary", True, True, 0.01, now, evidence=False)  # warm-up
    stores.windows.flush()
    canary, stable = stores.windows.stats("canary", now), stores.windows.stats("stable", now)
    assert isinstance(canary, WindowStats)
    assert (canary.requests, canary.failures, canary.good) == (41, 4, 37)
    assert (stable.requests, stable.failures, stable.good) == (100, 1, 99)
    assert 0.010 <= canary.p99_latency <= 0.016
    evidence = stores.windows.evidence("canary")
    assert isinstance(evidence, Evidence)
    assert (evidence.requests, evidence.failures) == (40, 4)  # the warm-up is not evidence
    assert stores.windows.evidence("stable").requests == 100
    # Every store keeps the groups' counts and latency histograms whole: what
    # the judge's session-robust variances read.
    expected = Evidence()
    for i in range(40):
        expected.record(i >= 4, i >= 4, 0.010 + i / 10_000, i)
    for name in ("cluster_requests", "cluster_failures", "cluster_bad", "cluster_latency"):
        assert list(getattr(evidence, name)) == list(getattr(expected, name)), name
    assert evidence.latency_grouped


def test_route_slots_and_failing_routes_are_kept_and_merged(backend: Backend) -> None:
    """Every store keeps the route slots' counts (the per-route check reads
    them) and the failing templates by name, a non-ASCII one too, merged
    across the openings of a shared rollout."""
    name = rollout()
    one, two = backend(name), backend(name)
    routes = ["/checkout", "/café/{item_id}", "/items/{item_id}"]
    for windows in (one.windows, two.windows):
        for i in range(30):
            route = routes[i % 3]
            windows.record("canary", i % 5 != 0, True, 0.01, 1_000.0, cluster=i, route=route)
        windows.record("canary", True, True, 0.01, 1_000.0, cluster=1)  # no route known
        windows.flush()
    expected = Evidence()
    for _ in range(2 if backend.shared else 1):
        for i in range(30):
            expected.record(i % 5 != 0, True, 0.01, i, routes[i % 3])
    assert eventually(
        lambda: one.windows.evidence("canary").requests == (62 if backend.shared else 31), 5.0
    )
    evidence = one.windows.evidence("canary")
    assert list(evidence.route_requests) == list(expected.route_requests)
    assert list(evidence.route_failures) == list(expected.route_failures)
    assert evidence.route_names == expected.route_names
    assert set(evidence.route_names) == set(routes)
    slot = route_slot("/café/{item_id}")
    assert evidence.route(slot).failures == expected.route(slot).failures > 0


def test_odd_route_templates_are_counted_and_never_block_a_write(backend: Backend) -> None:
    """A template that fails once (a bool on the request path), one no store
    could write by name (a lone surrogate, a control character, an empty
    one) and more failing templates than are kept by name: every flush
    goes through, every outcome is in its slot, and about ``ROUTE_NAMES``
    names are kept, the most failing first."""
    stores = backend(rollout())
    windows = stores.windows
    odd = ["/once", "/bad\udcff", "/line\nbreak", ""]
    for route in odd:
        windows.record("canary", False, False, 0.01, 1_000.0, cluster=3, route=route)
    windows.flush()
    assert eventually(lambda: windows.evidence("canary").requests == 4, 5.0)
    assert windows.evidence("canary").route_names == {"/once": 1}
    for batch in range(3):
        for k in range(40):
            for _ in range(1 + (k == 0)):  # the first of each batch fails twice
                route = f"/many/{batch}/{k}"
                windows.record("canary", False, False, 0.01, 1_000.0, cluster=k, route=route)
        windows.flush()
    assert eventually(lambda: windows.evidence("canary").requests == 4 + 3 * 41, 5.0)
    evidence = windows.evidence("canary")
    assert sum(evidence.route_requests) == 3 + 3 * 41  # the empty template names no route
    assert sum(evidence.route_failures) == 3 + 3 * 41
    assert not {"/bad\udcff", "/line\nbreak", ""} & set(evidence.route_names)
    assert len(evidence.route_names) <= ROUTE_NAMES
    assert {"/many/0/0", "/many/1/0"} <= set(evidence.route_names)


def test_business_metrics_are_kept_per_session_and_merged(backend: Backend) -> None:
    """Every store keeps each sampled session's requests and metric totals
    (negative amounts too), added up across the openings of a shared rollout."""
    name = rollout()
    one, two = backend(name), backend(name)
    assert one.windows.tracks_metrics
    keys = [(number + 1) << 40 for number in range(40)]
    for windows in (one.windows, two.windows):
        for index, key in enumerate(keys):
            windows.record("canary", True, True, 0.01, 1_000.0, cluster=index, session=key)
            if index % 4 == 0:
                windows.track("canary", key, "checkout", SCALE)
                windows.track("canary", key, "refund.value", -2 * SCALE - 500_000)
        windows.track("stable", 7, "checkout", SCALE)  # tracked with no request counted
        windows.flush()
    factor = 2 if backend.shared else 1

    def merged() -> bool:
        one.windows.flush()
        return one.windows.evidence("canary").sample.sessions == {key: factor for key in keys}

    assert eventually(merged, 5.0)
    sample = one.windows.evidence("canary").sample
    assert sample.totals["checkout"] == {key: factor * SCALE for key in keys[::4]}
    assert sample.totals["refund.value"] == {key: factor * -2_500_000 for key in keys[::4]}
    assert sample.summary("checkout", conversion=True).mean == pytest.approx(0.25)
    assert one.windows.evidence("stable").sample.totals["checkout"] == {7: factor * SCALE}
    one.windows.clear()
    assert eventually(lambda: not one.windows.evidence("canary").sample.sessions, 5.0)


def test_the_sessions_sample_stays_its_size_in_the_store(backend: Backend) -> None:
    """More sessions than the sample holds: it keeps the smallest keys, and a
    shared store deletes the rest (the file or the hash stays the sample's size)."""
    stores = backend(rollout())
    windows = stores.windows
    extra = SAMPLE_SESSIONS // 4
    keys = [(key * 2_654_435_761) % (1 << 64) for key in range(1, SAMPLE_SESSIONS + extra + 1)]
    for key in keys:
        windows.record("stable", True, True, 0.01, 1_000.0, cluster=key, session=key)
    windows.flush()
    windows.flush()  # the second write deletes what the first read left out
    sample = windows.evidence("stable").sample
    assert set(sample.sessions) == set(sorted(keys)[:SAMPLE_SESSIONS])
    assert len(sample) == SAMPLE_SESSIONS
    if backend.name == "sqlite":
        import sqlite3
        from contextlib import closing

        path = str(windows._database.path)  # type: ignore[attr-defined]
        with closing(sqlite3.connect(path)) as db:  # ``with`` alone would not close it
            [(rows,)] = db.execute(
                "SELECT count(*) FROM gate_evidence WHERE field >= 's' AND field < 't'"
            ).fetchall()
        assert rows == SAMPLE_SESSIONS
    if backend.name == "redis":
        client = windows._client  # type: ignore[attr-defined]
        prefix, epoch = windows._prefix, windows._epoch  # type: ignore[attr-defined]
        assert client.hlen(f"{prefix}:{epoch}:stable:sample") == SAMPLE_SESSIONS


def test_a_new_step_made_by_another_process_keeps_its_sample_whole(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process read a full sample in step 1 (and would delete the sessions
    it left out, and take none above its threshold); another begins step 2,
    to which the same users come back. The first process's next writes must
    neither delete step 2's sessions nor drop them, nor show step 1's."""
    if not backend.shared:
        pytest.skip("one process's memory: no other process begins a step")
    monkeypatch.setattr(buffer_module, "SAMPLE_SESSIONS", 100)
    name = rollout()
    one, two = backend(name), backend(name)
    keys = [(i * 2_654_435_761 * 7919) % (1 << 64) for i in range(1, 301)]
    for key in keys:  # step 1, through the second process: 300 users, 200 left out
        two.windows.record("stable", True, True, 0.01, 1_000.0, cluster=key, session=key)
        two.windows.track("stable", key, "checkout", SCALE)
    two.windows.flush()
    one.windows.clear()  # the first process begins step 2
    back = sorted(keys)[220:]  # 80 users come back, through both processes
    for windows in (one.windows, two.windows):
        for key in back[:40] if windows is two.windows else back:
            windows.record("stable", True, True, 0.01, 1_000.0, cluster=key, session=key)
        windows.flush()
    for windows in (one.windows, two.windows):
        windows.flush()
        sample = windows.evidence("stable").sample
        assert set(sample.sessions) == set(back)
        assert sample.sessions == {key: 1 + (key in back[:40]) for key in back}
        assert sample.totals.get("checkout", {}) == {}  # step 1's conversions are not step 2's


def test_written_sessions_stay_in_view_between_sample_reads(backend: Backend) -> None:
    """The sample is read back every few seconds; what this process wrote in
    between is judged as soon as it is written, not at the next read."""
    windows = backend(rollout()).windows
    windows.flush()  # a read now: the next is seconds away
    for number in range(1, 501):
        windows.record("canary", True, True, 0.01, 1_000.0, cluster=number, session=number << 40)
    for number in range(1, 51):
        windows.track("canary", number << 40, "checkout", SCALE)

    def seen() -> bool:
        sample = windows.evidence("canary").sample
        return len(sample) == 500 and sample.summary("checkout", True).mean == 0.1

    assert eventually(seen, 2.0)  # the background writes every 0.25 s; reads every 5 s


def test_huge_totals_are_held_and_never_stop_a_write(backend: Backend) -> None:
    """One session reporting the largest amount over and over: its total is
    held at the store's limit, every write goes through, nothing is counted twice."""
    windows = backend(rollout()).windows
    for _ in range(5):
        for _ in range(600):
            windows.track("stable", 99, "order_value", round(MAX_AMOUNT * SCALE))
        windows.record("stable", True, True, 0.01, 1_000.0, cluster=1, session=99)
        windows.flush()
    sample = windows.evidence("stable").sample
    assert sample.totals["order_value"] == {99: STORE_LIMIT}
    assert sample.sessions == {99: 5}
    assert windows.evidence("stable").requests == 5
    assert windows.status() == ("ok", "")


def test_sample_fields_round_trip_and_skip_what_does_not_parse() -> None:
    evidence = Evidence()
    evidence.sample.expose(5, 3)
    evidence.sample.track(5, "buy", SCALE)
    evidence.sample.track(9, "value", -7)
    fields = sample_fields(evidence.sample)
    junk = [("s12", 1), ("sZZZZZZZZZZZZZZZZ", 1), ("v0000000000000005", 1), ("x", 1)]
    sample, evicted = sample_from_fields(fields + junk)
    assert sample.sessions == {5: 3, 9: 0} and evicted == []
    assert sample.totals == {"buy": {5: SCALE}, "value": {9: -7}}


def test_evidence_fields_round_trip_and_skip_what_does_not_parse() -> None:
    evidence = Evidence()
    for i in range(50):
        evidence.record(i % 7 != 0, i % 5 != 0, 0.01 * (1 + i % 9), i, f"/r/{i % 4}")
    fields = evidence_fields(evidence)
    back = evidence_from_fields([*fields, ("q²", 5), ("e-1", 2), ("zz", 1), ("@", 3)])
    # (named here: a compiled Evidence has no __slots__ to read them from)
    for name in (
        "requests",
        "failures",
        "bad",
        "latency",
        "lowest",
        "highest",
        "cluster_requests",
        "cluster_failures",
        "cluster_bad",
        "cluster_latency",
        "route_requests",
        "route_failures",
        "route_names",
    ):
        assert getattr(back, name) == getattr(evidence, name), name


def test_clear_forgets_every_outcome(backend: Backend) -> None:
    stores = backend(rollout())
    record(stores.windows, "canary", 10, 1, 1_000.0)
    record(stores.windows, "stable", 10, 1, 1_000.0)
    stores.windows.flush()
    stores.windows.clear()
    stores.windows.flush()
    for variant in ("canary", "stable"):
        assert stores.windows.stats(variant, 1_000.0).requests == 0
        assert stores.windows.evidence(variant).requests == 0


def test_outcomes_leave_the_window_but_stay_in_the_steps_evidence(backend: Backend) -> None:
    stores = backend(rollout())
    if backend.shared:
        pytest.skip("a shared store numbers its slices by the server's clock, not `now`")
    record(stores.windows, "canary", 10, 0, 1_000.0)
    assert stores.windows.stats("canary", 1_000.0 + WINDOW_SECONDS / 2).requests == 10
    assert stores.windows.stats("canary", 1_000.0 + 2 * WINDOW_SECONDS).requests == 0
    assert stores.windows.evidence("canary").requests == 10


def test_outcomes_are_merged_across_openings_of_a_shared_rollout(backend: Backend) -> None:
    name = rollout()
    one, two = backend(name), backend(name)
    record(one.windows, "canary", 30, 3, 1_000.0)
    record(two.windows, "canary", 20, 2, 1_000.0)
    one.windows.flush()
    two.windows.flush()
    expected = 50 if backend.shared else 30
    assert eventually(lambda: one.windows.stats("canary", 1_000.0).requests == expected, 5.0)
    assert one.windows.evidence("canary").requests == expected
    assert one.windows.evidence("canary").failures == (5 if backend.shared else 3)


def test_the_store_clock_is_the_hosts_or_corrected_to_the_servers(backend: Backend) -> None:
    """A process whose clock is 60 s fast reads a shared rollout's times on
    the store's clock: Redis's ``TIME`` (this host's, on loopback) for a
    store on a server; the host's own for a store on the host."""
    stores = backend(rollout())
    fast = 60.0

    def skewed() -> float:
        return time.time() + fast

    clock = stores.state.clock(skewed)
    on_a_server = backend.server_clock
    expected = time.time() if on_a_server else skewed()
    assert abs(clock() - expected) < 1.0, (backend.name, clock() - time.time())


def test_the_outbox_hands_each_delivery_to_one_owner_in_order(backend: Backend) -> None:
    name = rollout()
    stores = backend(name)
    box = stores.state.outbox()
    assert box is stores.state.outbox() and isinstance(box, Outbox)
    hook = "receiver-1"
    for i in range(3):
        assert box.put(hook, Delivery(f"d{i}", "rollback", b'{"n": %d}' % i), 10) == 0
    assert box.pending(hook) == 3 and box.pending("another") == 0
    first = box.take(hook, "owner-a", 30.0)
    assert first is not None and (first.delivery, first.body) == ("d0", b'{"n": 0}')
    assert box.take(hook, "owner-b", 30.0) is None  # leased to a; the next waits in order
    box.retry(hook, "d0", 1, time.time() + 60)
    assert box.take(hook, "owner-b", 30.0) is None  # not due yet
    box.retry(hook, "d0", 1, 0.0)
    again = box.take(hook, "owner-b", 0.0)  # a lease that runs out at once
    assert again is not None and (again.delivery, again.attempts) == ("d0", 1)
    taken_over = box.take(hook, "owner-a", 30.0)  # b died holding it: a takes it over
    assert taken_over is not None and taken_over.delivery == "d0"
    box.done(hook, "d0")
    assert box.pending(hook) == 2
    assert box.put(hook, Delivery("d3", "plan_step", b"{}"), 2) == 1  # d1, the oldest, dropped
    following = box.take(hook, "owner-a", 30.0)
    assert following is not None and following.delivery == "d2"
    shared = backend.durable_outbox  # SQLite's; Redis keeps the default memory outbox
    assert box.durable is shared
    other = backend(name).state.outbox()  # another process of the rollout
    assert other.pending(hook) == (2 if shared else 0)


def test_after_fork_and_close_leave_the_data(backend: Backend) -> None:
    name = rollout()
    stores = backend(name)
    record(stores.windows, "canary", 5, 0, 1_000.0)
    stores.windows.flush()
    stores.state.after_fork()
    stores.windows.after_fork()
    assert stores.state.load().environment == Environment.canary(10)
    assert stores.windows.stats("canary", 1_000.0).requests == 5


# -- the gate takes any store that keeps the contract -------------------------------------


class PlainStateStore(StateStoreBase):
    """The smallest state store: the two required methods."""

    def __init__(self, state: GateState) -> None:
        self.state = state

    def load(self) -> GateState:
        return self.state

    def compare_and_set(
        self, expected_version: int, new_state: GateState, *, expected_transition: str | None = None
    ) -> bool:
        if self.state.version != expected_version:
            return False
        self.state = new_state
        return True


class PlainWindowStore(WindowStoreBase):
    """A window store that delegates to the in-memory one."""

    def __init__(self) -> None:
        self.inner = InMemoryWindowStore(WINDOW_SECONDS)
        self.recorded = 0

    def record(self, variant: str, success: bool, good: bool, duration: float, now: float,
               cluster: int = 0, evidence: bool = True, route: str | None = None) -> None:  # fmt: skip
        self.recorded += 1
        self.inner.record(variant, success, good, duration, now, cluster, evidence, route)

    def stats(self, variant: str, now: float) -> WindowStats:
        return self.inner.stats(variant, now)

    def evidence(self, variant: str) -> Evidence:
        return self.inner.evidence(variant)

    def clear(self) -> None:
        self.inner.clear()


def test_a_window_store_written_before_business_metrics_serves_other_rollouts() -> None:
    """Every member of ``WindowStore`` and none of ``TrackingWindowStore``'s:
    it serves a rollout without business metrics, and is refused by name for
    one with them."""

    def old_window_store() -> Any:
        inner = InMemoryWindowStore(WINDOW_SECONDS)
        members = [name for name in vars(WindowStore) if not name.startswith("_")]
        return SimpleNamespace(**{name: getattr(inner, name) for name in members})

    assert missing_members(old_window_store(), TrackingWindowStore) == [
        "tracks_metrics",
        "track",
        "step_began",
    ]
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(50)), window_store=old_window_store()
    )
    decision = gate.route_request("a-session")
    gate.record_request_outcome("a-session", True, 0.01, decision=decision)
    assert gate.health_snapshot().canary_requests + gate.health_snapshot().production_requests == 1
    gate.close()
    with pytest.raises(ConfigError, match="TrackingWindowStore"):
        PromotionGate(
            PromotionConfig(environment=Environment.canary(50), metrics=[{"name": "x"}]),
            window_store=old_window_store(),
        )


def test_a_store_from_the_base_classes_runs_a_gate() -> None:
    config = PromotionConfig(environment=Environment.canary(50), auto_rollback_enabled=False)
    windows = PlainWindowStore()
    gate = PromotionGate(
        config,
        state_store=PlainStateStore(GateState(environment=Environment.canary(50), release=1)),
        window_store=windows,
    )
    decision = gate.route_request("a-session-id-0123456789")
    gate.record_request_outcome("a-session-id-0123456789", True, 0.01, decision=decision)
    assert windows.recorded == 1
    gate.set_traffic_percent(20)
    assert gate.environment == Environment.canary(20)
    assert gate.status().to_dict()["store"] == {"kind": "memory", "status": "ok"}
    gate.close()


def test_a_store_missing_a_member_is_refused_by_name() -> None:
    class Partial:
        def load(self) -> GateState:
            return GateState(environment=Environment.PRODUCTION)

        def compare_and_set(self, *args: Any, **kwargs: Any) -> bool:
            return False

    with pytest.raises(ConfigError, match="state_store.*lacks remote, transition_timeout"):
        PromotionGate(state_store=Partial())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window_store.*lacks remote, record, stats"):
        PromotionGate(window_store=object())  # type: ignore[arg-type]


# -- the registry: a URL's scheme picks the backend ---------------------------------------


def test_an_unknown_scheme_names_the_known_ones_and_never_the_url() -> None:
    with pytest.raises(ConfigError) as raised:
        PromotionGate.from_url("postgres://user:pw-SECRET@db/x", PromotionConfig(name="checkout"))
    message = str(raised.value)
    assert "pw-SECRET" not in message and "postgres://" in message
    assert "redis" in message and "redis+sentinel" in message
    assert set(schemes()) >= {"redis", "rediss", "redis+cluster", "redis+sentinel", "sqlite"}


def test_a_registered_scheme_opens_its_own_stores() -> None:
    opened: list[tuple[str, str, dict[str, Any]]] = []

    @register_store("contract-memory")
    def open_contract(
        url: str, config: PromotionConfig, initial: GateState, meter_provider: Any, **options: Any
    ) -> tuple[StateStore, WindowStore]:
        opened.append((url, config.name, options))
        return InMemoryStateStore(initial), InMemoryWindowStore(config.rollback_window_seconds)

    try:
        gate = PromotionGate.from_url(
            "contract-memory://here", PromotionConfig(name="orders"), transition_timeout=2.0
        )
        assert opened == [("contract-memory://here", "orders", {"transition_timeout": 2.0})]
        assert gate.route_request("a-session-id-0123456789").variant == "stable"
        gate.close()
    finally:
        store_registry._REGISTERED.pop("contract-memory")
    with pytest.raises(ConfigError, match="scheme"):
        register_store("Bad:Scheme")


def test_the_gate_imports_no_store_backend() -> None:
    code = (
        "import sys, gate_middleware\n"
        "from gate_middleware import PromotionGate\n"
        "PromotionGate().route_request('a-session-id-0123456789')\n"
        "print(sorted(m for m in sys.modules if m in ('redis', 'sqlite3') or m.endswith('_store')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=True,
    )
    assert result.stdout.strip() == "[]"
