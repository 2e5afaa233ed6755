"""Sliding windows of request outcomes, one per variant, in fixed memory.

A window covers ``window_seconds`` and is made of ``SLICES`` fixed time
slices. Each slice keeps its counts (requests, failures, good requests) and
a latency sketch; the window also keeps their running totals, so reading it
costs the same after a thousand outcomes or ten million. When time moves on,
a slice older than the window is subtracted from the totals and reused:
memory does not grow with traffic.

Beside the windows, a store keeps the *evidence* of the current step for
each variant (``gate_middleware.judge.evidence``): every outcome since the last
``clear()``, which the judge decides by. The windows are for display (the
error rates and p99s an operator reads) and for the SLO's burn windows.

A clock that steps backwards is handled both ways: outcomes are counted in
the slice of the new time, and slices numbered after it ("from the
future") are expired, so they neither linger nor hide new outcomes.

``WindowStore`` is the small interface the gate uses, so that a store
shared between processes can replace ``InMemoryWindowStore``.
"""

from __future__ import annotations

import threading

from gate_middleware.domain.routing import CANARY, STABLE
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.sketch import BLOCK_BITS, bucket_index, new_blocks, new_counts, quantile
from gate_middleware.judge.verdict import WindowStats
from gate_middleware.stores.port import StoreCondition

SLICES = 10


class _Counts:
    __slots__ = ("number", "requests", "failures", "good", "latency", "highest", "blocks")

    def __init__(self, number: int) -> None:
        self.number = number
        self.requests = 0
        self.failures = 0
        self.good = 0
        self.latency = new_counts()
        self.highest = 0
        self.blocks = new_blocks()  # only the window's total uses them


class SlidingWindow:
    """One variant's outcomes over the last ``window_seconds``. Not locked:
    ``InMemoryWindowStore`` serialises access."""

    def __init__(self, window_seconds: float, slices: int = SLICES) -> None:
        self.window_seconds = float(window_seconds)
        self.slices = slices
        self.slice_seconds = self.window_seconds / slices
        self._ring: list[_Counts | None] = [None] * slices
        self._total = _Counts(0)

    def record(self, success: bool, good: bool, duration: float, now: float) -> None:
        self.record_bucket(success, good, bucket_index(duration), now)

    def record_bucket(self, success: bool, good: bool, index: int, now: float) -> None:
        """``record`` for a duration already turned into its sketch bucket."""
        number = int(now // self.slice_seconds)
        ring = self._ring
        slot = ring[number % self.slices]
        if slot is None or slot.number != number:
            slot = self._reuse(number)
        total = self._total
        slot.requests += 1
        total.requests += 1
        slot.latency[index] += 1
        total.latency[index] += 1
        total.blocks[index >> BLOCK_BITS] += 1
        if index > slot.highest:
            slot.highest = index
            if index > total.highest:
                total.highest = index
        if not success:
            slot.failures += 1
            total.failures += 1
        if good:
            slot.good += 1
            total.good += 1

    def _reuse(self, number: int) -> _Counts:
        position = number % self.slices
        old = self._ring[position]
        if old is not None:
            # An older slice leaves the window; a newer one is from before
            # a backward clock step: it leaves too.
            self._subtract(old)
            old.number = number
            return old
        fresh = _Counts(number)
        self._ring[position] = fresh
        return fresh

    def _subtract(self, old: _Counts) -> None:
        total = self._total
        total.requests -= old.requests
        total.failures -= old.failures
        total.good -= old.good
        if old.requests:
            latency = total.latency
            blocks = total.blocks
            for index, count in enumerate(old.latency[: old.highest + 1]):
                if count:
                    latency[index] -= count
                    blocks[index >> BLOCK_BITS] -= count
        old.requests = old.failures = old.good = 0
        old.latency = new_counts()
        old.highest = 0

    def expire(self, now: float) -> None:
        """Drop the slices that lie wholly before ``now - window_seconds``."""
        newest = int(now // self.slice_seconds)
        oldest = newest - self.slices + 1
        for slot in self._ring:
            if slot is not None and slot.requests and not oldest <= slot.number <= newest:
                self._subtract(slot)

    def stats(self, now: float) -> WindowStats:
        self.expire(now)
        total = self._total
        if total.requests == 0:
            total.highest = 0
            return WindowStats()
        return WindowStats(
            requests=total.requests,
            failures=total.failures,
            good=total.good,
            p99_latency=quantile(total.latency, total.requests, 0.99, total.highest, total.blocks),
        )

    def clear(self) -> None:
        self._ring = [None] * self.slices
        self._total = _Counts(0)


class InMemoryWindowStore:
    """Both windows in this process, behind one short lock."""

    def __init__(self, window_seconds: float, slices: int = SLICES) -> None:
        self._lock = threading.Lock()
        self._windows = {
            CANARY: SlidingWindow(window_seconds, slices),
            STABLE: SlidingWindow(window_seconds, slices),
        }
        self._evidence = {CANARY: Evidence(), STABLE: Evidence()}

    def record(
        self,
        variant: str,
        success: bool,
        good: bool,
        duration: float,
        now: float,
        cluster: int = 0,
        evidence: bool = True,
        route: str | None = None,
        session: int | None = None,
    ) -> None:
        window = self._windows[variant]
        index = bucket_index(duration)
        with self._lock:
            window.record_bucket(success, good, index, now)
            if evidence:
                side = self._evidence[variant]
                side.add(1, not success, not good, index, cluster, route)
                if session is not None:
                    side.sample.expose(session)

    @property
    def tracks_metrics(self) -> bool:
        return True

    def track(self, variant: str, session: int, metric: str, amount: int) -> None:
        with self._lock:
            self._evidence[variant].sample.track(session, metric, amount)

    def step_began(self) -> None:
        """No other process shares these windows: nothing of theirs to forget."""

    def stats(self, variant: str, now: float) -> WindowStats:
        with self._lock:
            return self._windows[variant].stats(now)

    def evidence(self, variant: str) -> Evidence:
        with self._lock:  # the copy is of the dicts only: the request path waits for no sort
            evidence = self._evidence[variant].copy()
        evidence.sample.trim()
        return evidence

    def clear(self) -> None:
        with self._lock:
            for window in self._windows.values():
                window.clear()
            self._evidence = {CANARY: Evidence(), STABLE: Evidence()}

    @property
    def remote(self) -> bool:
        return False  # this process's alone

    def flush(self) -> None:
        """Nothing is held back: every outcome is counted as it comes."""

    def status(self) -> tuple[StoreCondition, str]:
        return ("ok", "")

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the inherited one may be held)."""
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to stop."""
