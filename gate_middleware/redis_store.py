"""One rollout across many workers and replicas: the gate's state and windows in Redis.

::

    gate = PromotionGate.from_url("redis://127.0.0.1:6379/0", PromotionConfig(...))

Every process that points at the same Redis and rollout name shares one
environment, traffic share, flag set and history (``RedisStateStore``) and
one merged pair of windows (``RedisWindowStore``). Needs
``pip install "gate-middleware[redis]"`` (redis-py).

How it stays fast
    Routing never talks to Redis: each process keeps the last state it saw
    and a background thread follows changes (a pub/sub notification, and a
    version check every ``refresh_seconds``, 0.25 s). Outcomes are counted
    into a small local buffer (counts and sketch buckets per time slice) and
    flushed in one pipeline every ``flush_seconds`` (0.25 s); the same
    thread reads the merged windows back, so evaluating health costs no
    round trip either.

How it stays correct
    State changes are a compare-and-set on the state's version in a Lua
    script, which also publishes the change: two processes that detect the
    same failure at the same moment make exactly one rollback event. Window
    slices are numbered by wall-clock time (so processes agree), keyed by an
    epoch that ``clear()`` increments, and expire with the window.

When Redis is unavailable
    Requests never fail and never wait on Redis. Each process keeps serving
    its last known state; outcomes stay in the bounded local buffer and are
    flushed when Redis returns; slices that leave the window before they
    could be flushed are dropped and counted (``dropped_outcomes``, and the
    ``gate_middleware.store.dropped`` counter); the outage is logged once.
    State changes (promotions, ramps, flag changes and automatic rollbacks)
    are refused with ``PromotionError`` while the store is unreachable,
    since they could not be shared. When Redis returns, each process
    reads the shared state again; a Redis that came back empty is seeded
    from the newest state a process knows. A gate that has never reached
    Redis starts from its configured environment and logs so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from gate_middleware.config import PromotionConfig
from gate_middleware.environment import Environment
from gate_middleware.errors import PromotionError
from gate_middleware.evidence import CLUSTERS, Evidence
from gate_middleware.health import CanaryHealth
from gate_middleware.routing import CANARY, STABLE
from gate_middleware.sketch import BUCKET_COUNT, bucket_index, quantile
from gate_middleware.state import MAX_HISTORY, GateEvent, GateState, PromotionEvent, RollbackEvent
from gate_middleware.window import SLICES, WindowStats

try:
    import redis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'the shared gate needs redis-py: pip install "gate-middleware[redis]"'
    ) from exc

logger = logging.getLogger("gate_middleware")

STORED_HISTORY = 200  # events kept in Redis (the newest)

_CAS = """
local version = redis.call('HGET', KEYS[1], 'version')
if (version or '-1') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'state', ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""


# -- the state as JSON ---------------------------------------------------------------


def _environment(data: dict[str, Any]) -> Environment:
    return Environment(data["name"], data["traffic_percent"])


def _health(data: dict[str, Any] | None) -> CanaryHealth | None:
    if data is None:
        return None
    fields = {k: v for k, v in data.items() if k not in ("verdict",)}
    return CanaryHealth(**fields)


def _event(data: dict[str, Any]) -> GateEvent:
    timestamp = datetime.fromisoformat(data["timestamp"])
    if data["kind"] == "rollback":
        return RollbackEvent(
            data["reason"],
            timestamp,
            _environment(data["environment"]),
            data["feature"],
            _health(data["health"]),
            data["automatic"],
        )
    return PromotionEvent(
        _environment(data["from_environment"]),
        _environment(data["to_environment"]),
        timestamp,
        data["action"],
        data["forced"],
        _health(data["health"]),
    )


def encode_state(state: GateState) -> str:
    return json.dumps(
        {
            "environment": state.environment.to_dict(),
            "stable_flags": sorted(state.stable_flags),
            "release_flags": sorted(state.release_flags),
            "history": [event.to_dict() for event in state.history[-STORED_HISTORY:]],
            "release": state.release,
            "step": state.step,
            "version": state.version,
        },
        separators=(",", ":"),
    )


def decode_state(text: str | bytes) -> GateState:
    data = json.loads(text)
    return GateState(
        environment=_environment(data["environment"]),
        stable_flags=frozenset(data["stable_flags"]),
        release_flags=frozenset(data["release_flags"]),
        history=tuple(_event(e) for e in data["history"])[-MAX_HISTORY:],
        release=data["release"],
        step=int(data.get("step", 0)),
        version=data["version"],
    )


class _Outage:
    """Logs an outage once, and its end once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            logger.error(
                "%s: Redis is unreachable (%s); serving the last known state", self.what, exc
            )

    def recovered(self) -> None:
        if self.down:
            self.down = False
            logger.warning("%s: Redis is reachable again; resynchronised", self.what)


class _Follower:
    """A background thread per process, started lazily (and again after a fork)."""

    def __init__(self, name: str, step: Callable[[], None], interval: float) -> None:
        self._name = name
        self._step = step
        self._interval = interval
        self._pid = -1
        self._stop = threading.Event()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        thread.start()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                self._step()
            except Exception:  # the follower must never die
                logger.exception("%s failed; retrying", self._name)
            stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()


class RedisStateStore:
    """The gate's state, shared through Redis (see the module's documentation)."""

    def __init__(
        self,
        client: redis.Redis,
        rollout: str,
        initial: GateState,
        *,
        refresh_seconds: float = 0.25,
    ) -> None:
        self._client = client
        self._key = f"gate_middleware:{rollout}:state"
        self._channel = f"gate_middleware:{rollout}:changed"
        self._cas = client.register_script(_CAS)
        self._state = initial
        self._lock = threading.Lock()
        self._listeners: list[Callable[[GateState], None]] = []
        self._outage = _Outage(f"rollout {rollout!r} state")
        self._pubsub: Any = None
        self._follower = _Follower(f"gate-state-{rollout}", self._follow, refresh_seconds)
        try:
            self._sync()
        except RedisError as exc:
            self._outage.failed(exc)
            logger.warning(
                "rollout %r has never reached Redis; starting from the configured environment (%s)",
                rollout,
                initial.environment,
            )

    def subscribe(self, listener: Callable[[GateState], None]) -> None:
        """Call ``listener(state)`` whenever another process changes the state."""
        self._listeners.append(listener)

    def load(self) -> GateState:
        self._follower.ensure()
        return self._state

    def compare_and_set(self, expected_version: int, new_state: GateState) -> bool:
        self._follower.ensure()
        try:
            done = self._cas(
                keys=[self._key, self._channel],
                args=[str(expected_version), str(new_state.version), encode_state(new_state)],
            )
        except RedisError as exc:
            raise self._unreachable(exc) from exc
        if done:
            self._set(new_state)
            return True
        try:
            self._sync()  # someone else changed it: read theirs before the gate retries
        except RedisError as exc:
            raise self._unreachable(exc) from exc
        return False

    def _unreachable(self, exc: RedisError) -> PromotionError:
        self._outage.failed(exc)
        return PromotionError(
            "the shared store (Redis) is unreachable: nothing changed; try again when it is back"
        )

    def _set(self, state: GateState) -> None:
        with self._lock:
            if state.version < self._state.version:
                return
            self._state = state
        for listener in list(self._listeners):
            listener(state)

    def _sync(self) -> None:
        """Read the shared state; seed Redis from ours when it holds none."""
        raw = self._client.hget(self._key, "state")
        if raw is None:
            state = self._state
            self._client.hsetnx(self._key, "state", encode_state(state))
            self._client.hsetnx(self._key, "version", str(state.version))
            raw = self._client.hget(self._key, "state")
        self._outage.recovered()
        if raw is not None:
            shared = decode_state(raw)
            if shared.version != self._state.version:
                self._set(shared)

    def _follow(self) -> None:
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                self._pubsub.subscribe(self._channel)
            message = self._pubsub.get_message(timeout=0.2)
            version = self._client.hget(self._key, "version")
            if message is not None or version is None or int(version) != self._state.version:
                self._sync()
            else:
                self._outage.recovered()
        except (RedisError, OSError, ValueError) as exc:
            self._outage.failed(exc)
            self._pubsub = None

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pubsub = None  # the follower starts again in this process

    def close(self) -> None:
        self._follower.close()


class _Slice:
    __slots__ = ("requests", "failures", "good", "buckets")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.good = 0
        self.buckets: dict[int, int] = {}


class _Merged:
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


class RedisWindowStore:
    """Both windows, merged across every process of the rollout.

    Slices are numbered by ``clock`` (wall-clock seconds, shared by the
    processes), not by the gate's monotonic clock.
    """

    def __init__(
        self,
        client: redis.Redis,
        rollout: str,
        window_seconds: float,
        *,
        flush_seconds: float = 0.25,
        clock: Callable[[], float] = time.time,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._client = client
        self._prefix = f"gate_middleware:{rollout}:window"
        self._epoch_key = f"gate_middleware:{rollout}:epoch"
        self._slice_seconds = window_seconds / SLICES
        self._expire = int(window_seconds + 2 * self._slice_seconds) + 1
        self._clock = clock
        self._lock = threading.Lock()
        self._buffer: dict[tuple[str, int], _Slice] = {}
        self._merged: dict[str, _Merged] = {CANARY: _Merged(), STABLE: _Merged()}
        self._merged_slices: set[tuple[str, int]] = set()
        # The step's evidence: unflushed here, merged from every process there.
        self._evidence_buffer = {CANARY: Evidence(), STABLE: Evidence()}
        self._merged_evidence = {CANARY: Evidence(), STABLE: Evidence()}
        self._epoch = 0
        self.dropped_outcomes = 0
        self._outage = _Outage(f"rollout {rollout!r} windows")
        self._follower = _Follower(f"gate-windows-{rollout}", self.flush, flush_seconds)
        meter = get_meter("gate_middleware", meter_provider=meter_provider)
        meter.create_observable_counter(
            "gate_middleware.store.dropped",
            callbacks=[self._observe_dropped],
            unit="{outcome}",
            description="Outcomes that could not reach the shared store before leaving the window",
        )
        self._rollout = rollout

    def _observe_dropped(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.dropped_outcomes, {"gate.rollout": self._rollout})]

    def record(
        self,
        variant: str,
        success: bool,
        good: bool,
        duration: float,
        now: float,
        cluster: int = 0,
        evidence: bool = True,
    ) -> None:
        number = int(self._clock() // self._slice_seconds)
        index = bucket_index(duration)
        with self._lock:
            if evidence:
                self._evidence_buffer[variant].add(1, not success, not good, index, cluster)
            entry = self._buffer.get((variant, number))
            if entry is None:
                entry = self._buffer[(variant, number)] = _Slice()
            entry.requests += 1
            if not success:
                entry.failures += 1
            if good:
                entry.good += 1
            entry.buckets[index] = entry.buckets.get(index, 0) + 1
        self._follower.ensure()

    def stats(self, variant: str, now: float) -> WindowStats:
        self._follower.ensure()
        oldest = int(self._clock() // self._slice_seconds) - SLICES + 1
        total = _Merged()
        with self._lock:
            merged = self._merged[variant]
            total.add(merged.requests, merged.failures, merged.good, {})
            total.buckets = list(merged.buckets)
            total.highest = merged.highest
            for (name, number), entry in self._buffer.items():
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

    def evidence(self, variant: str) -> Evidence:
        """The step's evidence of every process (as of the last flush) and this one's unflushed."""
        self._follower.ensure()
        with self._lock:
            evidence = self._merged_evidence[variant].copy()
            evidence.merge(self._evidence_buffer[variant])
        return evidence

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()
            self._merged = {CANARY: _Merged(), STABLE: _Merged()}
            self._evidence_buffer = {CANARY: Evidence(), STABLE: Evidence()}
            self._merged_evidence = {CANARY: Evidence(), STABLE: Evidence()}
        try:
            self._epoch = int(self._client.incr(self._epoch_key))
        except RedisError as exc:
            self._outage.failed(exc)

    def flush(self) -> None:
        """Send the buffered outcomes in one pipeline and read the merged windows back."""
        now_slice = int(self._clock() // self._slice_seconds)
        oldest = now_slice - SLICES + 1
        with self._lock:
            pending, self._buffer = self._buffer, {}
            evidence, self._evidence_buffer = (
                self._evidence_buffer,
                {CANARY: Evidence(), STABLE: Evidence()},
            )
        pending = {key: entry for key, entry in pending.items() if self._keep(key, entry, oldest)}
        try:
            epoch = self._client.get(self._epoch_key)
            self._epoch = int(epoch) if epoch is not None else 0
            pipe = self._client.pipeline(transaction=False)
            for (variant, number), entry in pending.items():
                redis_key = f"{self._prefix}:{self._epoch}:{variant}:{number}"
                fields = {"r": entry.requests, "f": entry.failures, "g": entry.good}
                fields.update({f"b{index}": count for index, count in entry.buckets.items()})
                for name, amount in fields.items():
                    if amount:
                        pipe.hincrby(redis_key, name, amount)
                pipe.expire(redis_key, self._expire)
            order = [
                (variant, number)
                for variant in (CANARY, STABLE)
                for number in range(oldest, now_slice + 1)
            ]
            for variant in (CANARY, STABLE):
                evidence_key = f"{self._prefix}:{self._epoch}:{variant}:evidence"
                for name, amount in _evidence_fields(evidence[variant]):
                    pipe.hincrby(evidence_key, name, amount)
                pipe.expire(evidence_key, EVIDENCE_SECONDS)
            for variant in (CANARY, STABLE):
                pipe.hgetall(f"{self._prefix}:{self._epoch}:{variant}:evidence")
            for variant, number in order:
                pipe.hgetall(f"{self._prefix}:{self._epoch}:{variant}:{number}")
            replies = pipe.execute()
        except RedisError as exc:
            self._outage.failed(exc)
            with self._lock:  # keep them for the next try (bounded: the window's slices)
                for key, entry in pending.items():
                    self._merge_back(key, entry)
                for variant, unsent in evidence.items():  # fixed size: never dropped
                    self._evidence_buffer[variant].merge(unsent)
            return
        evidence_replies = replies[-len(order) - 2 : -len(order)] if order else replies[-2:]
        merged_evidence = {
            variant: _decode_evidence(reply)
            for variant, reply in zip((CANARY, STABLE), evidence_replies, strict=True)
        }
        self._outage.recovered()
        merged = {CANARY: _Merged(), STABLE: _Merged()}
        for (variant, _), reply in zip(order, replies[-len(order) :], strict=True):
            if not reply:
                continue
            buckets = {int(k[1:]): int(v) for k, v in reply.items() if k.startswith(b"b")}
            merged[variant].add(
                int(reply.get(b"r", 0)), int(reply.get(b"f", 0)), int(reply.get(b"g", 0)), buckets
            )
        with self._lock:
            self._merged = merged
            self._merged_evidence = merged_evidence

    def _keep(self, key: tuple[str, int], entry: _Slice, oldest: int) -> bool:
        if key[1] >= oldest:
            return True
        self.dropped_outcomes += entry.requests
        return False

    def _merge_back(self, key: tuple[str, int], entry: _Slice) -> None:
        current = self._buffer.get(key)
        if current is None:
            self._buffer[key] = entry
            return
        current.requests += entry.requests
        current.failures += entry.failures
        current.good += entry.good
        for index, count in entry.buckets.items():
            current.buckets[index] = current.buckets.get(index, 0) + count

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._buffer = {}  # the parent's outcomes are the parent's to flush

    def close(self) -> None:
        self._follower.close()


EVIDENCE_SECONDS = 7 * 24 * 3600  # a step's evidence outlives any window; refreshed at each flush


def _evidence_fields(evidence: Evidence) -> list[tuple[str, int]]:
    """The HINCRBY fields of a step's evidence: per session group r/f/x
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


def _decode_evidence(reply: dict[bytes, bytes]) -> Evidence:
    """Evidence from its hash; a field that does not parse is skipped."""
    latency = [0] * BUCKET_COUNT
    groups = {b"r": [0] * CLUSTERS, b"f": [0] * CLUSTERS, b"x": [0] * CLUSTERS}
    for key, value in reply.items():
        try:
            number, count = int(key[1:]), int(value)
        except ValueError:
            continue
        kind = key[:1]
        if kind == b"b" and 0 <= number < BUCKET_COUNT:
            latency[number] = count
        elif kind in groups and 0 <= number < CLUSTERS:
            groups[kind][number] = count
    return Evidence.from_counts(latency, groups[b"r"], groups[b"f"], groups[b"x"])


def connect(url: str, **options: Any) -> redis.Redis:
    """A client with short timeouts: a request must never wait long on the store."""
    options.setdefault("socket_timeout", 0.5)
    options.setdefault("socket_connect_timeout", 0.5)
    options.setdefault("health_check_interval", 5)
    return redis.Redis.from_url(url, **options)


def shared_stores(
    url: str,
    config: PromotionConfig,
    initial: GateState,
    meter_provider: MeterProvider | None = None,
) -> tuple[RedisStateStore, RedisWindowStore]:
    client = connect(url)
    return (
        RedisStateStore(client, config.name, initial),
        RedisWindowStore(
            client, config.name, config.rollback_window_seconds, meter_provider=meter_provider
        ),
    )


__all__ = ["RedisStateStore", "RedisWindowStore", "connect", "shared_stores"]
