"""The evidence of one step: every outcome since the step began, in fixed memory.

A *step* is a stretch of a release with one traffic split: starting a
release, changing its share, promoting it or rolling it back begins a new
step and fresh evidence, so a ramp cannot bias the comparison (the side
whose share grew would otherwise hold more of the recent traffic).

``Evidence`` is what the judge reads for one side (the canary, or the
production sessions it is compared with): counts of requests, failures and *bad*
requests (failed, or slower than the latency objective), a latency sketch
(the layout of ``gate_middleware.judge.sketch``), and the same counts split into
``CLUSTERS`` groups of sessions. The groups let the judge measure how much
the sessions themselves vary: one heavy session that fails every request
lands in one group, and the spread between groups shows it, where a count
of requests alone would read it as strong evidence. Each group also keeps a
coarse latency histogram (``COARSE_SHIFT``: 16 sketch buckets, a factor of
1.38, to one), so the latency test can measure how much the sessions' own
speeds vary too (a slow user is slow on every request).

A session's group is ``bucket % CLUSTERS``, its routing bucket, so every
process puts a session in the same group without remembering it.

Requests to a known route template (``/items/{item_id}``) are also counted
per *route slot*: ``ROUTE_SLOTS`` fixed slots, a template's slot its CRC-32
modulo ``ROUTE_SLOTS`` (the same in every process, without a registry),
each with the groups' requests and failures. So a regression confined to one
endpoint can be judged at that endpoint's rate, in fixed memory however
many routes an app has (templates that share a slot are judged together).
The failures of up to ``ROUTE_NAMES`` templates are kept by name, so a
verdict can say which route it saw failing.

When the rollout judges business metrics, ``sample`` holds a uniform sample
of the side's sessions with their totals (``gate_middleware.judge.sample``).
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Mapping, Sequence
from operator import add

from gate_middleware.judge.sample import SessionSample
from gate_middleware.judge.sketch import BUCKET_COUNT, bucket_index

CLUSTERS = 64
COARSE_SHIFT = 4  # a group's latency histogram: 2**4 sketch buckets to one
COARSE = (BUCKET_COUNT >> COARSE_SHIFT) + 1  # buckets of a group's histogram
ROUTE_SLOTS = 16  # a route template's slot: crc32(template) % ROUTE_SLOTS
ROUTE_NAMES = 64  # templates whose failures are kept by name (one side, one process)
ROUTE_NAME_LENGTH = 200  # a longer template is counted in its slot, not by name


_KNOWN_SLOTS: dict[str, int] = {}  # the request path's templates, hashed once each
_KNOWN_SLOTS_LIMIT = 4096  # past this many templates (a misbehaving router), hash each time


def route_slot(route: str) -> int:
    """The slot a route template's outcomes are counted in (every process agrees)."""
    slot = _KNOWN_SLOTS.get(route)
    if slot is None:
        slot = zlib.crc32(route.encode("utf-8", "surrogatepass")) % ROUTE_SLOTS
        if len(_KNOWN_SLOTS) < _KNOWN_SLOTS_LIMIT and len(route) <= ROUTE_NAME_LENGTH:
            _KNOWN_SLOTS[route] = slot
    return slot


def nameable(route: str) -> bool:
    """Whether a template may be kept by name: short, printable and valid
    UTF-8 (every store writes it; a reason shows it). Any other template is
    still counted in its slot."""
    if not route or len(route) > ROUTE_NAME_LENGTH or not route.isprintable():
        return False
    try:
        route.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _zeros(length: int, code: str = "q") -> array[int]:
    return array(code, bytes(array(code).itemsize * length))


# Copied, not rebuilt, for each new Evidence: a compiled ``copy()`` runs
# ``__init__`` as well (mypyc's ``__new__`` does), so ``__init__`` is kept cheap.
_NO_LATENCY = _zeros(BUCKET_COUNT, "L")  # the sketch's layout
_NO_CLUSTERS = _zeros(CLUSTERS)
_NO_CLUSTER_LATENCY = _zeros(CLUSTERS * COARSE)
_NO_ROUTES = _zeros(ROUTE_SLOTS * CLUSTERS)


def _count_name(names: dict[str, int], route: str, count: int) -> None:
    """Add ``count`` failures to ``route``'s, keeping at most ``ROUTE_NAMES`` names."""
    if route in names:
        names[route] += count
    elif len(names) < ROUTE_NAMES:
        names[route] = count


class Evidence:
    """One side's outcomes since the step began. Not locked: its store serialises access."""

    __slots__ = (
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
        "sample",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.bad = 0
        self.latency = _NO_LATENCY[:]
        self.lowest = BUCKET_COUNT
        self.highest = -1
        self.cluster_requests = _NO_CLUSTERS[:]
        self.cluster_failures = _NO_CLUSTERS[:]
        self.cluster_bad = _NO_CLUSTERS[:]
        # group g's coarse bucket c at g * COARSE + c
        self.cluster_latency = _NO_CLUSTER_LATENCY[:]
        # slot s's group g at s * CLUSTERS + g
        self.route_requests = _NO_ROUTES[:]
        self.route_failures = _NO_ROUTES[:]
        self.route_names: dict[str, int] = {}  # a template's failures, by name
        self.sample = SessionSample()  # the sessions business metrics are judged on

    def record(
        self, success: bool, good: bool, duration: float, cluster: int, route: str | None = None
    ) -> None:
        """Count one outcome (``cluster``: the session's routing bucket, any
        int; ``route``: the request's route template, when known)."""
        self.add(1, 0 if success else 1, 0 if good else 1, bucket_index(duration), cluster, route)

    def add(
        self,
        requests: int,
        failures: int,
        bad: int,
        index: int,
        cluster: int,
        route: str | None = None,
    ) -> None:
        # failures and bad may be bools (0 or 1) on the request path
        """Count ``requests`` outcomes in sketch bucket ``index`` (a merged batch)."""
        group = cluster % CLUSTERS
        if route:
            self.add_route(route, group, requests, failures)
        self.requests += requests
        self.cluster_requests[group] += requests
        self.latency[index] += requests
        self.cluster_latency[group * COARSE + (index >> COARSE_SHIFT)] += requests
        if index < self.lowest:
            self.lowest = index
        if index > self.highest:
            self.highest = index
        if failures:
            self.failures += failures
            self.cluster_failures[group] += failures
        if bad:
            self.bad += bad
            self.cluster_bad[group] += bad

    def add_route(self, route: str, group: int, requests: int, failures: int) -> None:
        """Count outcomes of session group ``group`` on ``route`` in its slot."""
        cell = route_slot(route) * CLUSTERS + group % CLUSTERS
        self.route_requests[cell] += requests
        if failures:
            count = int(failures)  # a bool on the request path; stores write ints
            self.route_failures[cell] += count
            if route in self.route_names or nameable(route):
                _count_name(self.route_names, route, count)

    def route(self, slot: int) -> Evidence:
        """The outcomes counted in route slot ``slot``, as evidence of their
        own (requests and failures per group; no latency)."""
        evidence = Evidence()
        first = slot * CLUSTERS
        evidence.cluster_requests = self.route_requests[first : first + CLUSTERS]
        evidence.cluster_failures = self.route_failures[first : first + CLUSTERS]
        evidence.requests = sum(evidence.cluster_requests)
        evidence.failures = sum(evidence.cluster_failures)
        evidence.route_names = {
            name: count for name, count in self.route_names.items() if route_slot(name) == slot
        }
        return evidence

    @classmethod
    def from_counts(
        cls,
        latency: Sequence[int],
        cluster_requests: Sequence[int],
        cluster_failures: Sequence[int],
        cluster_bad: Sequence[int],
        cluster_latency: Sequence[int] = (),
        route_requests: Sequence[int] = (),
        route_failures: Sequence[int] = (),
        route_names: Mapping[str, int] | None = None,
    ) -> Evidence:
        """Evidence built from merged counts (another process's, or a simulation's).

        ``cluster_latency`` (the groups' histograms, flat) may be missing from
        counts written before it existed: the latency test then treats the
        groups as unknown (``latency_grouped`` is false). So may the route
        slots' counts (``route_requests``, ``route_failures``, flat like
        ``Evidence.route_requests``) and the failing templates' names."""
        evidence = cls()
        for index, count in enumerate(latency):
            if count:
                evidence.latency[index] = int(count)
                evidence.lowest = min(evidence.lowest, index)
                evidence.highest = index
        for group in range(CLUSTERS):
            evidence.cluster_requests[group] = int(cluster_requests[group])
            evidence.cluster_failures[group] = int(cluster_failures[group])
            evidence.cluster_bad[group] = int(cluster_bad[group])
        for cell, count in enumerate(cluster_latency):
            if count:
                evidence.cluster_latency[cell] = int(count)
        for cell, count in enumerate(route_requests):
            if count:
                evidence.route_requests[cell] = int(count)
        for cell, count in enumerate(route_failures):
            if count:
                evidence.route_failures[cell] = int(count)
        if route_names:
            evidence.route_names = dict(route_names)
        evidence.requests = sum(evidence.cluster_requests)
        evidence.failures = sum(evidence.cluster_failures)
        evidence.bad = sum(evidence.cluster_bad)
        return evidence

    def merge(self, other: Evidence) -> None:
        """Add ``other``'s counts to this evidence."""
        if other.sample.sessions or other.sample.threshold < self.sample.threshold:
            self.sample.merge(other.sample)
        if not other.requests:
            return
        self.requests += other.requests
        self.failures += other.failures
        self.bad += other.bad
        lo, hi = other.lowest, other.highest + 1
        self.latency[lo:hi] = array(
            self.latency.typecode, map(add, self.latency[lo:hi], other.latency[lo:hi])
        )
        self.lowest = min(self.lowest, other.lowest)
        self.highest = max(self.highest, other.highest)
        for name in (
            "cluster_requests",
            "cluster_failures",
            "cluster_bad",
            "cluster_latency",
            "route_requests",
            "route_failures",
        ):
            mine = getattr(self, name)
            setattr(self, name, array(mine.typecode, map(add, mine, getattr(other, name))))
        for route, count in other.route_names.items():
            _count_name(self.route_names, route, count)

    def copy(self) -> Evidence:
        evidence = Evidence.__new__(Evidence)
        evidence.requests = self.requests
        evidence.failures = self.failures
        evidence.bad = self.bad
        evidence.latency = self.latency[:]
        evidence.lowest = self.lowest
        evidence.highest = self.highest
        evidence.cluster_requests = self.cluster_requests[:]
        evidence.cluster_failures = self.cluster_failures[:]
        evidence.cluster_bad = self.cluster_bad[:]
        evidence.cluster_latency = self.cluster_latency[:]
        evidence.route_requests = self.route_requests[:]
        evidence.route_failures = self.route_failures[:]
        evidence.route_names = dict(self.route_names)
        evidence.sample = self.sample.copy()
        return evidence

    @property
    def latency_grouped(self) -> bool:
        """Whether every outcome is in the groups' latency histograms (counts
        merged from a process that did not keep them are not)."""
        return sum(self.cluster_latency) == self.requests

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def bad_rate(self) -> float:
        return self.bad / self.requests if self.requests else 0.0

    def __repr__(self) -> str:
        return f"<Evidence {self.requests} requests, {self.failures} failed, {self.bad} bad>"


__all__ = [
    "CLUSTERS",
    "COARSE",
    "COARSE_SHIFT",
    "ROUTE_NAMES",
    "ROUTE_SLOTS",
    "Evidence",
    "nameable",
    "route_slot",
]
