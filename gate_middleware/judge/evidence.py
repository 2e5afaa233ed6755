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
of requests alone would read it as strong evidence.

A session's group is ``bucket % CLUSTERS``, its routing bucket, so every
process puts a session in the same group without remembering it.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from operator import add

from gate_middleware.judge.sketch import BUCKET_COUNT, bucket_index

CLUSTERS = 64


def _zeros(length: int, code: str = "q") -> array[int]:
    return array(code, bytes(array(code).itemsize * length))


# Copied, not rebuilt, for each new Evidence: a compiled ``copy()`` runs
# ``__init__`` as well (mypyc's ``__new__`` does), so ``__init__`` is kept cheap.
_NO_LATENCY = _zeros(BUCKET_COUNT, "L")  # the sketch's layout
_NO_CLUSTERS = _zeros(CLUSTERS)


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

    def record(self, success: bool, good: bool, duration: float, cluster: int) -> None:
        """Count one outcome (``cluster``: the session's routing bucket, any int)."""
        self.add(1, 0 if success else 1, 0 if good else 1, bucket_index(duration), cluster)

    def add(self, requests: int, failures: int, bad: int, index: int, cluster: int) -> None:
        # failures and bad may be bools (0 or 1) on the request path
        """Count ``requests`` outcomes in sketch bucket ``index`` (a merged batch)."""
        group = cluster % CLUSTERS
        self.requests += requests
        self.cluster_requests[group] += requests
        self.latency[index] += requests
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

    @classmethod
    def from_counts(
        cls,
        latency: Sequence[int],
        cluster_requests: Sequence[int],
        cluster_failures: Sequence[int],
        cluster_bad: Sequence[int],
    ) -> Evidence:
        """Evidence built from merged counts (another process's, or a simulation's)."""
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
        evidence.requests = sum(evidence.cluster_requests)
        evidence.failures = sum(evidence.cluster_failures)
        evidence.bad = sum(evidence.cluster_bad)
        return evidence

    def merge(self, other: Evidence) -> None:
        """Add ``other``'s counts to this evidence."""
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
        for name in ("cluster_requests", "cluster_failures", "cluster_bad"):
            mine = getattr(self, name)
            setattr(self, name, array(mine.typecode, map(add, mine, getattr(other, name))))

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
        return evidence

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def bad_rate(self) -> float:
        return self.bad / self.requests if self.requests else 0.0

    def __repr__(self) -> str:
        return f"<Evidence {self.requests} requests, {self.failures} failed, {self.bad} bad>"


__all__ = ["CLUSTERS", "Evidence"]
