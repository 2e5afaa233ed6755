"""What a shared store's process holds before it writes: outcomes counted per
time slice, and a step's evidence as named counters.

Outcomes are counted here on the request path (a short lock, no I/O) and
written by the store's background thread; the windows read back are the
sum over every process. Used by the Redis and SQLite stores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from gate_middleware.evidence import CLUSTERS, Evidence
from gate_middleware.sketch import BUCKET_COUNT


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Slice:
    """One time slice's outcomes of one variant, not yet in the shared store."""

    __slots__ = ("requests", "failures", "good", "buckets")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.good = 0
        self.buckets: dict[int, int] = {}


class Merged:
    """A window's counts merged from every process."""

    __slots__ = ("requests", "failures", "good", "buckets", "highest")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.good = 0
        self.buckets = [0] * BUCKET_COUNT
        self.highest = 0

    def add(self, requests: int, failures: int, good: int, buckets: dict[int, int]) -> None:
        self.requests += requests
        self.failures += failures
        self.good += good
        for index, count in buckets.items():
            self.buckets[index] += count
            if index > self.highest:
                self.highest = index


EVIDENCE_SECONDS = 7 * 24 * 3600  # a step's evidence outlives any window; refreshed at each flush


def evidence_fields(evidence: Evidence) -> list[tuple[str, int]]:
    """The counter fields of a step's evidence: per session group r/f/x
    (requests, failures, bad) and per sketch bucket b."""
    fields: list[tuple[str, int]] = []
    if not evidence.requests:
        return fields
    for group in range(CLUSTERS):
        if evidence.cluster_requests[group]:
            fields.append((f"r{group}", evidence.cluster_requests[group]))
        if evidence.cluster_failures[group]:
            fields.append((f"f{group}", evidence.cluster_failures[group]))
        if evidence.cluster_bad[group]:
            fields.append((f"x{group}", evidence.cluster_bad[group]))
    for index in range(evidence.lowest, evidence.highest + 1):
        if evidence.latency[index]:
            fields.append((f"b{index}", evidence.latency[index]))
    return fields


def evidence_from_fields(fields: Iterable[tuple[str, int]]) -> Evidence:
    """Evidence from its counter fields; a field that does not parse is skipped."""
    latency = [0] * BUCKET_COUNT
    groups = {"r": [0] * CLUSTERS, "f": [0] * CLUSTERS, "x": [0] * CLUSTERS}
    for name, count in fields:
        kind, number = name[:1], name[1:]
        if not number.isdigit() or not isinstance(count, int) or count < 0:
            continue
        index = int(number)
        if kind == "b" and index < BUCKET_COUNT:
            latency[index] = count
        elif kind in groups and index < CLUSTERS:
            groups[kind][index] = count
    return Evidence.from_counts(latency, groups["r"], groups["f"], groups["x"])
