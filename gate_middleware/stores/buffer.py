"""What a shared store's process holds before it writes: outcomes counted per
time slice, and a step's evidence as named counters; and the window store
written once for every shared backend (``BufferedWindowStore``).

Outcomes are counted here on the request path (a short lock, no I/O) and
written by the store's background thread; the windows read back are the
sum over every process. Used by the Redis and SQLite stores.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import TypeVar

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from gate_middleware.background import BackgroundThread
from gate_middleware.domain.routing import CANARY, STABLE
from gate_middleware.judge.evidence import CLUSTERS, COARSE, ROUTE_NAMES, ROUTE_SLOTS, Evidence
from gate_middleware.judge.sample import NO_LIMIT, SAMPLE_SESSIONS, SessionSample
from gate_middleware.judge.sketch import BUCKET_COUNT, bucket_index, quantile
from gate_middleware.judge.verdict import WindowStats
from gate_middleware.stores.port import WindowStoreBase
from gate_middleware.stores.windows import SLICES


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
    (requests, failures, bad), per sketch bucket b, per cell of the
    groups' latency histograms l (``Evidence.cluster_latency``), per cell of
    the route slots q/e (requests, failures: ``Evidence.route_requests``),
    and ``@`` and a route template's name for its failures."""
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
    for cell, count in enumerate(evidence.cluster_latency):
        if count:
            fields.append((f"l{cell}", count))
    for cell, count in enumerate(evidence.route_requests):
        if count:
            fields.append((f"q{cell}", count))
            if evidence.route_failures[cell]:
                fields.append((f"e{cell}", evidence.route_failures[cell]))
    fields.extend((f"@{route}", count) for route, count in evidence.route_names.items())
    return fields


def evidence_from_fields(fields: Iterable[tuple[str, int]]) -> Evidence:
    """Evidence from its counter fields; a field that does not parse is skipped."""
    latency = [0] * BUCKET_COUNT
    cells = [0] * (CLUSTERS * COARSE)
    groups = {"r": [0] * CLUSTERS, "f": [0] * CLUSTERS, "x": [0] * CLUSTERS}
    routes = {"q": [0] * (ROUTE_SLOTS * CLUSTERS), "e": [0] * (ROUTE_SLOTS * CLUSTERS)}
    names: dict[str, int] = {}
    for name, count in fields:
        kind, number = name[:1], name[1:]
        if not isinstance(count, int) or count < 0:
            continue
        if kind == "@":
            if number:
                names[number] = count
            continue
        if not (number.isascii() and number.isdigit()):
            continue
        index = int(number)
        if kind == "b" and index < BUCKET_COUNT:
            latency[index] = count
        elif kind == "l" and index < len(cells):
            cells[index] = count
        elif kind in groups and index < CLUSTERS:
            groups[kind][index] = count
        elif kind in routes and index < ROUTE_SLOTS * CLUSTERS:
            routes[kind][index] = count
    if len(names) > ROUTE_NAMES:  # written by several processes at once: the most failing
        names = dict(sorted(names.items(), key=lambda item: -item[1])[:ROUTE_NAMES])
    return Evidence.from_counts(
        latency, groups["r"], groups["f"], groups["x"], cells, routes["q"], routes["e"], names
    )


SAMPLE_READ_SECONDS = 5.0  # how often a process reads the sessions' sample back (it is large)


def sample_fields(sample: SessionSample) -> list[tuple[str, int]]:
    """The counter fields of a sample: ``s<key>`` a session's requests and
    ``v<key>/<metric>`` its total of a metric (keys as 16 hex digits)."""
    fields = [(f"s{key:016x}", requests) for key, requests in sample.sessions.items()]
    for metric, totals in sample.totals.items():
        fields.extend((f"v{key:016x}/{metric}", total) for key, total in totals.items() if total)
    return fields


def sample_from_fields(fields: Iterable[tuple[str, int]]) -> tuple[SessionSample, list[str]]:
    """A sample from its fields (trimmed to ``SAMPLE_SESSIONS``), and the
    fields of the sessions the trim left out (for the store to delete: none
    of them is ever taken again). A field that does not parse is skipped."""
    sessions: dict[int, int] = {}
    totals: dict[str, dict[int, int]] = {}
    read: list[tuple[str, int]] = []
    for name, count in fields:
        if not isinstance(count, int):
            continue
        kind, key_text, metric = name[:1], name[1:17], name[18:]
        if len(key_text) != 16 or not key_text.isascii():
            continue
        try:
            key = int(key_text, 16)
        except ValueError:
            continue
        if kind == "s" and len(name) == 17 and count >= 0:
            sessions[key] = sessions.get(key, 0) + count
        elif kind == "v" and name[17:18] == "/" and metric:
            totals.setdefault(metric, {})[key] = count
            sessions.setdefault(key, 0)
        else:
            continue
        read.append((name, key))
    sample = SessionSample(SAMPLE_SESSIONS)
    sample.sessions = sessions
    sample.totals = totals
    sample.trim()
    evicted = [name for name, key in read if key > sample.threshold]
    return sample, evicted


class OutcomeBuffer:
    """A shared window store's side in one process: the outcomes not yet
    written (per variant and time slice, and the step's evidence), and the
    windows and evidence of every process as last read back. ``lock`` is
    the only lock the request path takes (``record``), and never over I/O.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slices: dict[tuple[str, int], Slice] = {}
        self.evidence = _both(Evidence)
        self.merged = _both(Merged)
        self.merged_evidence = _both(Evidence)
        self.dropped = 0  # outcomes whose slice left the window before they were written
        self.evicted: dict[str, list[str]] = {}  # sample fields the store may delete
        self.sample_read = -math.inf  # monotonic time of the last read
        self.epoch: int | None = None  # the store's step the read-back data belongs to
        # Samples this process wrote since the sample was last read back: the
        # judged view holds them until the next read does.
        self.written = _both(SessionSample)
        self.read_in_write = False  # the last write read the sample back

    def record(
        self,
        variant: str,
        success: bool,
        good: bool,
        index: int,
        cluster: int,
        number: int,
        evidence: bool,
        route: str | None = None,
        session: int | None = None,
    ) -> None:
        """Count one outcome (latency bucket ``index``) in slice ``number``."""
        with self.lock:
            if evidence:
                side = self.evidence[variant]
                side.add(1, not success, not good, index, cluster, route)
                if session is not None:
                    side.sample.expose(session)
            entry = self.slices.get((variant, number))
            if entry is None:
                entry = self.slices[(variant, number)] = Slice()
            entry.requests += 1
            if not success:
                entry.failures += 1
            if good:
                entry.good += 1
            entry.buckets[index] = entry.buckets.get(index, 0) + 1

    def track(self, variant: str, session: int, metric: str, amount: int) -> None:
        with self.lock:
            self.evidence[variant].sample.track(session, metric, amount)

    def sample_due(self) -> bool:
        """Whether the store should read the sample back in this write."""
        return time.monotonic() - self.sample_read >= SAMPLE_READ_SECONDS

    def evictions(self, epoch: int) -> dict[str, list[str]]:
        """The sample fields the store may delete, for a write into the
        store's step ``epoch``. When that is not the step they were read in
        (another process began a new step), none: what was read back of the
        last step (its sample, its threshold, its evictions) is dropped, and
        the sample is read again in this write."""
        with self.lock:
            if self.epoch is not None and epoch != self.epoch:
                self.evicted = {}
                self.written = _both(SessionSample)
                for variant, merged in self.merged_evidence.items():
                    merged.sample = SessionSample()
                    self.evidence[variant].sample.threshold = NO_LIMIT
                self.sample_read = -math.inf
                self.epoch = epoch
            evicted, self.evicted = self.evicted, {}
        return evicted

    def wrote(self, samples: dict[str, SessionSample]) -> None:
        """``samples`` reached the store: the judged view keeps them until the
        sample is read back (unless the write that took them read it)."""
        with self.lock:
            if self.read_in_write:
                self.read_in_write = False
                return
            for variant, sample in samples.items():
                if sample.sessions:
                    self.written[variant].merge(sample)

    def stats(self, variant: str, oldest: int) -> WindowStats:
        """The variant's window: every process's as last read, and this one's unwritten
        slices from ``oldest`` on."""
        total = Merged()
        with self.lock:
            merged = self.merged[variant]
            total.add(merged.requests, merged.failures, merged.good, {})
            total.buckets = list(merged.buckets)
            total.highest = merged.highest
            for (name, number), entry in self.slices.items():
                if name == variant and number >= oldest:
                    total.add(entry.requests, entry.failures, entry.good, entry.buckets)
        if total.requests == 0:
            return WindowStats()
        return WindowStats(
            total.requests,
            total.failures,
            total.good,
            quantile(total.buckets, total.requests, 0.99, total.highest),
        )

    def step_evidence(self, variant: str) -> Evidence:
        """The step's evidence of every process (as last read), the sessions
        this one wrote since the sample was read, and this one's unwritten."""
        with self.lock:
            evidence = self.merged_evidence[variant].copy()
            evidence.sample.merge(self.written[variant])
            evidence.merge(self.evidence[variant])
        evidence.sample.trim()
        return evidence

    def clear(self) -> None:
        with self.lock:
            self.slices.clear()
            self.evidence = _both(Evidence)
            self.merged = _both(Merged)
            self.merged_evidence = _both(Evidence)
            self.evicted = {}
            self.sample_read = -math.inf
            self.epoch = None
            self.written = _both(SessionSample)
            self.read_in_write = False

    def take(self) -> tuple[dict[tuple[str, int], Slice], dict[str, Evidence]]:
        """What is to be written, taken out (``put_back`` if the write fails)."""
        with self.lock:
            pending, self.slices = self.slices, {}
            evidence, self.evidence = self.evidence, _both(Evidence)
            for variant, fresh in self.evidence.items():
                # no session above the store's full sample is taken again
                fresh.sample.lower_threshold(self.merged_evidence[variant].sample.threshold)
            for variant, unsent in evidence.items():
                # The store keeps about ROUTE_NAMES failing templates by name,
                # not one more each flush: once it holds that many, only
                # their counts grow (the slots count every template).
                known = self.merged_evidence[variant].route_names
                if len(known) >= ROUTE_NAMES:
                    unsent.route_names = {
                        name: count for name, count in unsent.route_names.items() if name in known
                    }
        return pending, evidence

    def drop_expired(self, pending: dict[tuple[str, int], Slice], oldest: int) -> None:
        """Remove the slices older than ``oldest`` from ``pending``, counting them dropped."""
        for key in [key for key in pending if key[1] < oldest]:
            self.dropped += pending.pop(key).requests

    def put_back(
        self, pending: dict[tuple[str, int], Slice], evidence: dict[str, Evidence], oldest: int
    ) -> None:
        """Keep what could not be written for the next try (bounded: the window's
        slices; the evidence has a fixed size and is never dropped)."""
        self.drop_expired(pending, oldest)
        with self.lock:
            for key, entry in pending.items():
                current = self.slices.get(key)
                if current is None:
                    self.slices[key] = entry
                    continue
                current.requests += entry.requests
                current.failures += entry.failures
                current.good += entry.good
                for index, count in entry.buckets.items():
                    current.buckets[index] = current.buckets.get(index, 0) + count
            for variant, unsent in evidence.items():
                self.evidence[variant].merge(unsent)

    def publish(
        self,
        merged: dict[str, Merged],
        merged_evidence: dict[str, Evidence],
        samples: dict[str, tuple[SessionSample, list[str]]] | None = None,
        epoch: int | None = None,
    ) -> None:
        """The windows and evidence of every process, as just read back from
        the store's step ``epoch``, and the sessions' samples when they were
        read too (``sample_due``; else the last ones read are kept)."""
        with self.lock:
            for variant, evidence in merged_evidence.items():
                if samples is None:
                    evidence.sample = self.merged_evidence[variant].sample
                else:
                    evidence.sample, evicted = samples[variant]
                    if evicted:
                        self.evicted[variant] = evicted
            if samples is not None:
                self.sample_read = time.monotonic()
                self.written = _both(SessionSample)
            self.read_in_write = samples is not None
            self.epoch = epoch
            self.merged = merged
            self.merged_evidence = merged_evidence

    def after_fork(self) -> None:
        """In a forked child: a fresh lock; the parent's outcomes are the parent's to write."""
        self.lock = threading.Lock()
        self.slices = {}
        self.evidence = _both(Evidence)


_T = TypeVar("_T")


def _both(kind: Callable[[], _T]) -> dict[str, _T]:
    return {CANARY: kind(), STABLE: kind()}


class BufferedWindowStore(WindowStoreBase):
    """A window store shared through a backend, written once for every backend.

    The request path only counts into this process's ``OutcomeBuffer``
    (``record``: a short lock, no I/O); a background thread calls
    ``flush`` every ``flush_seconds``, which hands what was counted to the
    backend's ``_write`` (write it, read every process's windows back,
    ``publish`` them) and puts it back for the next try when the backend
    cannot be reached. A backend supplies ``_now`` (the clock its slices
    are numbered by), ``_write``, ``_clear_shared`` (a new step for every
    process), ``_unreachable`` (note an error of ``unreachable_errors``) and
    ``status``.
    """

    remote = True  # outcomes reach the backend off the request path
    tracks_metrics = True
    unreachable_errors: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        rollout: str,
        window_seconds: float,
        *,
        flush_seconds: float,
        meter_provider: MeterProvider | None,
    ) -> None:
        self._rollout = rollout
        self._slice_seconds = window_seconds / SLICES
        self._buffer = OutcomeBuffer()
        self._flush_lock = threading.Lock()
        self._follower = BackgroundThread(
            f"gate-windows-{rollout}", self._flush_batch, flush_seconds
        )
        meter = get_meter("gate_middleware", meter_provider=meter_provider)
        meter.create_observable_counter(
            "gate_middleware.store.dropped",
            callbacks=[self._observe_dropped],
            unit="{outcome}",
            description="Outcomes that could not reach the shared store before leaving the window",
        )

    @abstractmethod
    def _now(self) -> float:
        """Seconds of the clock every process numbers slices by."""

    @abstractmethod
    def _write(self, pending: dict[tuple[str, int], Slice], evidence: dict[str, Evidence]) -> None:
        """Write ``pending`` and ``evidence`` (emptying both once they are
        written), read every process's windows back and ``publish`` them."""

    @abstractmethod
    def _clear_shared(self) -> None:
        """Start a new step for every process of the rollout."""

    @abstractmethod
    def _unreachable(self, exc: BaseException) -> None:
        """The backend could not be reached (``exc`` is one of ``unreachable_errors``)."""

    @property
    def dropped_outcomes(self) -> int:
        """Outcomes whose slice left the window before they could be written."""
        return self._buffer.dropped

    def _observe_dropped(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.dropped_outcomes, {"gate.rollout": self._rollout})]

    def _slice_now(self) -> int:
        return int(self._now() // self._slice_seconds)

    def _oldest(self) -> int:
        return self._slice_now() - SLICES + 1

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
        number = self._slice_now()
        self._buffer.record(
            variant,
            success,
            good,
            bucket_index(duration),
            cluster,
            number,
            evidence,
            route,
            session,
        )
        self._follower.ensure()

    def track(self, variant: str, session: int, metric: str, amount: int) -> None:
        self._buffer.track(variant, session, metric, amount)
        self._follower.ensure()

    def stats(self, variant: str, now: float) -> WindowStats:
        self._follower.ensure()
        return self._buffer.stats(variant, self._oldest())

    def evidence(self, variant: str) -> Evidence:
        """The step's evidence of every process (as of the last flush) and this one's unwritten."""
        self._follower.ensure()
        return self._buffer.step_evidence(variant)

    def clear(self) -> None:
        self._buffer.clear()
        self._clear_shared()

    def step_began(self) -> None:
        """Another process began a new step: this one's unwritten outcomes and
        what it read back belong to the last one."""
        self._buffer.clear()

    def flush(self) -> None:
        """Write what was counted and read the merged windows back, the
        sessions' sample too (the background's flushes read it every
        ``SAMPLE_READ_SECONDS``)."""
        self._flush_batch(read_sample=True)

    def _flush_batch(self, read_sample: bool = False) -> None:
        # One flush at a time: when an explicit flush returns, its read-back
        # includes what a background flush had in flight.
        with self._flush_lock:
            if read_sample:  # under the lock: a flush in flight cannot take it over
                self._buffer.sample_read = -math.inf
            pending, evidence = self._buffer.take()
            samples = {variant: side.sample for variant, side in evidence.items()}
            try:
                self._write(pending, evidence)
                self._buffer.wrote(samples)
            except self.unreachable_errors as exc:
                self._unreachable(exc)
                self._buffer.put_back(pending, evidence, self._oldest())
            except Exception:  # never lose the buffer to a bug
                self._buffer.put_back(pending, evidence, self._oldest())
                raise

    def after_fork(self) -> None:
        self._buffer.after_fork()
        self._flush_lock = threading.Lock()

    def close(self) -> None:
        self._follower.close()
