"""One rollout across many workers and replicas: the gate's state and windows in Redis.

::

    gate = PromotionGate.from_url("redis://127.0.0.1:6379/0", PromotionConfig(name="checkout"))

Every process that points at the same Redis and rollout name shares one
environment, traffic share, flag set and history (``RedisStateStore``) and
one merged pair of windows (``RedisWindowStore``). Needs
``pip install "gate-middleware[redis]"`` (redis-py). ``connect`` takes
``redis://``, ``rediss://`` and ``unix://`` URLs, ``redis+cluster://host:port``
for a Redis Cluster and ``redis+sentinel://host:port,host:port/service`` for
a primary watched by Sentinels.

Keys
    All the keys of one rollout carry its name as a hash tag
    (``gate_middleware:{checkout}:state``), so they live in one hash slot
    and the scripts run on a Redis Cluster too.

How it stays fast
    Routing never talks to Redis: each process keeps the last state it saw
    and a background thread follows changes (a pub/sub notification, and an
    identity check every ``refresh_seconds``, 0.25 s). Outcomes are counted
    into a small local buffer (counts and sketch buckets per time slice) and
    flushed in one pipeline every ``flush_seconds`` (0.25 s); the same
    thread reads the merged windows back, so evaluating health costs no
    round trip either.

How it stays correct
    A state is identified by its version and a random transition id, kept
    once, in the fields ``version`` and ``id`` of the state's hash (the
    JSON beside them holds neither). A change is a compare-and-set on that
    identity in a Lua script, which also publishes it: two processes that
    detect the same failure at the same moment make exactly one rollback
    event. An empty Redis is seeded by one script that writes only into an
    empty hash. A process never writes back a state older than the newest
    it has seen: when the shared state is older than its own (Redis came
    back empty, or a failover lost a write), it writes its own back and the
    history records a ``restore`` event; when the shared state has the same
    version but another id (two processes seeded different configs), the
    one written first wins, and the difference is logged once. A change
    whose reply was lost is looked up by its id before anyone retries it.
    Window slices are numbered by Redis's clock (``TIME``, read on every
    flush), so a process whose clock is off neither loses nor doubles
    outcomes; an offset beyond ``MAX_CLOCK_SKEW_SECONDS`` is logged. Bake
    starts, plan deadlines and event timestamps are read on Redis's clock
    too (``RedisStateStore.clock``: the process's clock plus the offset the
    follower measures every few seconds), so a skewed process can neither
    shorten nor stretch a step.

When Redis is unavailable
    Requests never fail and never wait on Redis. Each process keeps serving
    its last known state; outcomes stay in the bounded local buffer and are
    flushed when Redis returns; slices that leave the window before they
    could be flushed are dropped and counted (``dropped_outcomes``, and the
    ``gate_middleware.store.dropped`` counter); the outage is logged once.
    State changes (promotions, ramps, flag changes and automatic rollbacks)
    are refused with ``PromotionError`` while the store is unreachable,
    since they could not be shared. A gate that has never reached Redis
    starts from its configured environment and logs so.

When a key holds garbage
    A state, epoch or window field that does not decode is reported (the
    store's status turns ``corrupt``, it is logged once, and the
    ``gate_middleware.store.corrupt`` counter counts it); requests are still
    served from the last good state, outcomes are still flushed, and state
    changes are refused with a ``PromotionError`` that names the key until
    it is repaired (deleting it lets the processes write back the newest
    state they hold).

When Redis refuses a command (an ACL)
    A ``NOPERM`` reply (the client's user lacks a command, a key or a
    channel) is neither an outage nor garbage: the store's status turns
    ``forbidden``, naming the command and the rule that grants it
    (``ACL SETUSER gate +evalsha``), logged once until it is allowed again.
    What still works, works: without ``EVALSHA`` state changes are refused
    with ``StorePermissionError`` (nothing changed); without ``PUBLISH`` or
    ``SUBSCRIBE`` changes are made and followed by polling; without
    ``TIME`` outcomes stay in the local buffer, and a window store that
    cannot deliver outcomes never lets the verdict read HEALTHY. Any other
    error reply (out of memory, a read-only replica, a failover under way)
    counts as Redis unavailable. Every command the stores send is listed in
    ``ACL_COMMANDS``.

The catalog of rollouts added at run time
    ``open_catalog`` (what ``Rollouts.from_url`` opens on a Redis URL) keeps
    the rollouts that ``Rollouts.create`` adds while the app runs in one
    hash, ``gate_middleware:catalog`` (``{key_prefix}catalog``): one field
    per rollout name, so it lives in one slot of a Redis Cluster, and the
    ACL's ``~gate_middleware:*`` already covers it. An entry is added only
    under a name not yet taken, by a script of ``HGET`` and ``HSET``: the
    commands of ``ACL_COMMANDS``, so a user granted them needs nothing more.
    The catalog is the key prefix's: two apps that share a Redis and a
    prefix share one. While Redis does not answer, refuses a command, or
    holds something else under the key, reading and adding raise
    ``PromotionError`` naming the cause (and, for a refusal, the rule to
    grant), and the set keeps serving the rollouts it has.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from gate_middleware.background import BackgroundThread
from gate_middleware.domain.codec import (
    _INTEGER,
    CorruptData,
    config_differences,
    decode_state,
    encode_state,
    new_transition_id,
)
from gate_middleware.domain.config import PromotionConfig
from gate_middleware.domain.routing import CANARY, STABLE
from gate_middleware.domain.state import MAX_HISTORY, GateState, PromotionEvent
from gate_middleware.errors import (
    ConfigError,
    OutcomeUnknownError,
    PromotionError,
    StorePermissionError,
)
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.sample import STORE_LIMIT
from gate_middleware.judge.sketch import BUCKET_COUNT
from gate_middleware.stores.buffer import (
    EVIDENCE_SECONDS,
    BufferedWindowStore,
    Merged,
    Slice,
    digest,
    evidence_fields,
    evidence_from_fields,
    sample_fields,
    sample_from_fields,
)
from gate_middleware.stores.port import (
    TRANSITION_TIMEOUT_SECONDS,
    StateStoreBase,
    StoreCondition,
)
from gate_middleware.stores.windows import SLICES

try:
    import redis
    from redis.exceptions import NoPermissionError, RedisClusterException, RedisError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'the shared gate needs redis-py: pip install "gate-middleware[redis]"'
    ) from exc

logger = logging.getLogger("gate_middleware")

# What "Redis did not answer" looks like (a cluster that cannot be reached
# raises RedisClusterException, which is no RedisError).
Unavailable = (RedisError, RedisClusterException, OSError)

DEFAULT_KEY_PREFIX = "gate_middleware:"
MAX_CLOCK_SKEW_SECONDS = 1.0  # a process further off Redis's clock is logged
FULL_READ_EVERY = 4  # follower steps (1-2 s): the whole state is read and checked
# The offset to Redis's clock is measured again (and what Redis refused is
# asked again) this often, by the clock: a step can last longer than its
# interval (it waits up to 0.2 s for an announcement).
CLOCK_SECONDS = 4.0

# Both state scripts announce a change they wrote with PUBLISH, through
# pcall: a user that may not PUBLISH still writes (the other processes then
# see it by polling), and the script returns Redis's refusal instead of 1.

# Write ``state`` only into an empty hash (a fresh or emptied Redis).
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'id', ARGV[2], 'state', ARGV[3])
local announced = redis.pcall('PUBLISH', ARGV[4], ARGV[1])
if type(announced) == 'table' and announced.err then return announced.err end
return 1
"""

# Replace the state whose identity is (ARGV[1], ARGV[2]) by (ARGV[3], ARGV[4], ARGV[5]).
_CAS = """
local current = redis.call('HMGET', KEYS[1], 'version', 'id')
if current[1] ~= ARGV[1] or (current[2] or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'id', ARGV[4], 'state', ARGV[5])
local announced = redis.pcall('PUBLISH', ARGV[6], ARGV[3])
if type(announced) == 'table' and announced.err then return announced.err end
return 1
"""

# INCR that first repairs an epoch that is not an integer (a foreign write).
# Add to a sessions' sample's metric totals, each held within ±ARGV[1]
# (``STORE_LIMIT``): HINCRBY would fail past int64 and lose the whole flush.
_ADD_HELD = """
local limit = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local total = (tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') or 0) + tonumber(ARGV[i + 1])
  if total > limit then total = limit elseif total < -limit then total = -limit end
  redis.call('HSET', KEYS[1], ARGV[i], string.format('%.0f', total))
end
return 1
"""

_NEXT_EPOCH = """
local value = redis.call('GET', KEYS[1])
if value and not string.match(value, '^%-?%d+$') then redis.call('DEL', KEYS[1]) end
return redis.call('INCR', KEYS[1])
"""


def rollout_keys(rollout: str, key_prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """The common start of a rollout's keys, with its name as the hash tag."""
    if not isinstance(key_prefix, str) or "{" in key_prefix or "}" in key_prefix:
        raise ConfigError("key_prefix", key_prefix, "a text without '{' or '}'")
    return f"{key_prefix}{{{rollout}}}"


class RedisClock:
    """A process's wall clock corrected to Redis's: ``local()`` plus the
    offset to Redis's ``TIME``, measured again by ``measure`` (a round trip
    slower than 0.2 s is not trusted). An offset beyond
    ``MAX_CLOCK_SKEW_SECONDS`` is logged once, naming what it is used for."""

    def __init__(self, local: Callable[[], float], rollout: str, use: str) -> None:
        self._local = local
        self._rollout = rollout
        self._use = use
        self.offset = 0.0  # Redis's clock minus ours
        self._skew_logged = False

    def __call__(self) -> float:
        return self._local() + self.offset

    def measure(self, client: Any) -> None:
        before = self._local()
        seconds, micros = client.time()
        after = self._local()
        if after - before > 0.2:
            return  # too slow a round trip to tell
        self.offset = seconds + micros / 1e6 - (before + after) / 2
        if abs(self.offset) > MAX_CLOCK_SKEW_SECONDS and not self._skew_logged:
            self._skew_logged = True
            logger.warning(
                "rollout %r: this process's clock is %+.1f s off Redis's; "
                "%s Redis's clock (check NTP)",
                self._rollout,
                -self.offset,
                self._use,
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


class _Corruption:
    """Corrupt keys: each logged once (until repaired) and counted."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}  # key -> what is wrong with it
        self.counts: dict[str, int] = {}

    def found(self, key: str, problem: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in self.problems:
            logger.error(
                "Redis key %s is corrupt (%s): serving the last good state; "
                "state changes are refused until it is repaired",
                key,
                problem,
            )
        self.problems[key] = problem

    def repaired(self, key: str) -> None:
        if self.problems.pop(key, None) is not None:
            logger.warning("Redis key %s decodes again", key)


# -- what Redis refuses ------------------------------------------------------------------

#: Every command the stores send, as ACL rules (``tests/stores/test_redis_acl.py``
#: runs a user with exactly these, and ``+wait`` is needed with ``wait_replicas``).
ACL_COMMANDS = (
    "+hmget +hgetall +hget +hset +hincrby +hdel +exists +get +incr +del +expire "
    "+evalsha +script|load +script|exists +subscribe +publish +time +ping"
)

# Inside a script, Redis 7.0 refuses a command with these words (7.2 and
# later: a NOPERM reply that names the command).
_IN_SCRIPT_REFUSAL = "The user executing the script can't"
_NAMED_COMMAND = re.compile(r"run the '([^']+)' command")

# The commands of each script that Redis 7.0 does not name when it refuses one.
_STATE_SCRIPT_COMMANDS = ("+exists", "+hmget", "+hset")
_WINDOW_SCRIPT_COMMANDS = ("+get", "+del", "+incr", "+hget", "+hset")

# What a store cannot do while Redis refuses each of its operations.
_CONSEQUENCES = {
    "read": "this process cannot read the shared state and serves the last state it knew",
    "change": "state changes are refused (nothing changed)",
    "publish": "the other processes see changes by polling (within a second), not at once",
    "subscribe": "this process follows changes by polling (within a second), not at once",
    "time": "bakes, plan deadlines and event times follow this process's clock, not Redis's",
    "wait": "changes are reported without waiting for replicas to hold them",
    "flush": "this process's outcomes do not reach the shared windows (the verdict is not "
    "HEALTHY until they do)",
    "clear": "a new step does not reach the other processes: their windows keep the last "
    "step's outcomes (the verdict is not HEALTHY until it does)",
    "catalog": "this process cannot read the rollouts added while the app runs and serves "
    "the ones it has",
    "add": "no rollout can be added while the app runs (nothing changed)",
}

# The state store's operation that a command Redis names belongs to.
_STATE_OPERATIONS = {
    "hmget": "read",
    "evalsha": "change",
    "script|load": "change",
    "exists": "change",
    "hset": "change",
    "publish": "publish",
    "subscribe": "subscribe",
    "time": "time",
    "wait": "wait",
}


def _state_operation(exc: BaseException, default: str) -> str:
    """The state store's operation that Redis refused: a change when a script
    was refused a command (every state script writes), else the one the
    command Redis names belongs to, else ``default``."""
    text = str(exc)
    if " script: " in text or _IN_SCRIPT_REFUSAL in text:
        return "change"
    named = _NAMED_COMMAND.search(text)
    return _STATE_OPERATIONS.get(named.group(1).lower(), default) if named else default


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command, a key or a channel to
    this client's user (its ACL)."""
    if isinstance(exc, NoPermissionError):
        return True
    return isinstance(exc, redis.ResponseError) and _IN_SCRIPT_REFUSAL in str(exc)


def _corrupt_reply(exc: BaseException) -> bool:
    """Whether Redis's error reply says that a key holds what the store never
    writes there (another type, a field that is no integer)."""
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and (
        "WRONGTYPE" in text or "not an integer" in text or "not a valid float" in text
    )


def _reply(text: str) -> str:
    """Redis's words, without the script's location it appends."""
    return text.split(" script: ", 1)[0]


def _acl_user(client: Any) -> str:
    """The ACL user ``client`` authenticates as (``default`` without one)."""
    with contextlib.suppress(AttributeError, TypeError):
        return str(client.get_connection_kwargs().get("username") or "default")
    return "default"


class _Refusals:
    """What Redis refuses to this client's user, by operation of the store:
    the command, Redis's words and the ACL rule that grants it; each logged
    once, until the operation succeeds again."""

    def __init__(self, what: str, client: Any, key_prefix: str) -> None:
        self.what = what
        self.user = _acl_user(client)
        self.key_prefix = key_prefix
        self.problems: dict[str, str] = {}  # operation -> what is refused and the fix
        self._logged: dict[str, str] = {}  # operation -> the rules it was logged with

    def rule(self, text: str, commands: tuple[str, ...]) -> tuple[str, str]:
        """(the command Redis refused, the rule that grants it), from its words."""
        named = _NAMED_COMMAND.search(text)
        if named:
            return named.group(1).upper(), "+" + named.group(1).lower()
        lowered = text.lower()
        if "channel" in lowered:
            return f"the channels {self.key_prefix}*", f"&{self.key_prefix}*"
        if "key" in lowered:
            return f"the keys {self.key_prefix}*", f"~{self.key_prefix}*"
        names = [command.lstrip("+").upper() for command in commands]
        return (names[0] if len(names) == 1 else "one of " + ", ".join(names)), " ".join(commands)

    def found(
        self,
        operation: str,
        refusals: list[tuple[str, str]],
        reply: str,
    ) -> str:
        """Redis refused ``refusals`` ((command, rule) pairs, with ``reply``,
        its words for the first) during ``operation``: what is wrong, and the fix."""
        commands = ", ".join(dict.fromkeys(command for command, _ in refusals))
        rules = " ".join(dict.fromkeys(rule for _, rule in refusals))
        problem = (
            f"Redis refuses {commands} to user {self.user!r} ({_reply(reply)}): "
            f"{_CONSEQUENCES[operation]}; grant it with ACL SETUSER {self.user} {rules}"
        )
        if self._logged.get(operation) != rules:  # once, until allowed or refused otherwise
            self._logged[operation] = rules
            self.problems[operation] = problem
            logger.error("%s: %s", self.what, problem)
        return self.problems[operation]

    def refused(self, operation: str, exc: BaseException | str, commands: tuple[str, ...]) -> str:
        """Redis refused ``exc`` during ``operation`` (``commands``: the rules
        to name when Redis does not say which command): what is wrong, and the fix."""
        text = str(exc)
        return self.found(operation, [self.rule(text, commands)], text)

    def allowed(self, operation: str) -> None:
        self._logged.pop(operation, None)
        if self.problems.pop(operation, None) is not None:
            logger.warning("%s: Redis allows what it refused again (%s)", self.what, operation)

    def detail(self) -> str:
        return "; ".join(self.problems.values())


class RedisStateStore(StateStoreBase):
    """The gate's state, shared through Redis (see the module's documentation).

    ``wait_replicas`` > 0 makes every change wait (``WAIT``, up to
    ``wait_seconds``) until that many replicas hold it before it is
    reported, so that it survives the loss of the primary.
    """

    remote = True  # the gate keeps its writes off the request path

    def __init__(
        self,
        client: Any,
        rollout: str,
        initial: GateState,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        refresh_seconds: float = 0.25,
        transition_timeout: float = TRANSITION_TIMEOUT_SECONDS,
        wait_replicas: int = 0,
        wait_seconds: float = 0.5,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        base = rollout_keys(rollout, key_prefix)
        self._client = client
        self._rollout = rollout
        self._key = f"{base}:state"
        self._channel = f"{base}:changed"
        self._cas = client.register_script(_CAS)
        self._seed_script = client.register_script(_SEED)
        self.transition_timeout = transition_timeout
        self._wait_replicas = wait_replicas
        self._wait_ms = int(wait_seconds * 1000)
        if not initial.transition:  # the same config gives the same identity in every process
            initial = replace(initial, transition="config-" + digest(encode_state(initial)))
        self._configured = initial
        self._state = initial
        self._seen_shared = False
        self._config_logged = False
        self._lock = threading.Lock()
        self._listeners: list[Callable[[GateState], None]] = []
        self._outage = _Outage(f"rollout {rollout!r} state")
        self._corruption = _Corruption()
        self._refusals = _Refusals(f"rollout {rollout!r} state", client, key_prefix)
        self._pubsub: Any = None
        self._steps = 0
        self._asked_at = -math.inf  # time.monotonic() of the follower's last "again" step
        self._clocks: list[RedisClock] = []
        self._follower = BackgroundThread(f"gate-state-{rollout}", self._follow, refresh_seconds)
        meter = get_meter("gate_middleware", meter_provider=meter_provider)
        meter.create_observable_counter(
            "gate_middleware.store.corrupt",
            callbacks=[self._observe_corrupt],
            unit="{read}",
            description="Reads of a shared-store key that did not decode",
        )
        try:
            self._sync()
        except redis.ResponseError as exc:
            self._answered(exc, "read")
        except Unavailable as exc:
            self._outage.failed(exc)
            logger.warning(
                "rollout %r has never reached Redis; starting from the configured environment (%s)",
                rollout,
                initial.environment,
            )

    def _observe_corrupt(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(count, {"gate.rollout": self._rollout, "gate.store.key": "state"})
            for count in self._corruption.counts.values()
        ]

    def subscribe(self, listener: Callable[[GateState], None]) -> None:
        """Call ``listener(state)`` whenever another process changes the state."""
        self._listeners.append(listener)

    def load(self) -> GateState:
        self._follower.ensure()
        return self._state

    def status(self) -> tuple[StoreCondition, str]:
        """("ok" | "unreachable" | "forbidden" | "corrupt", what is wrong)."""
        if self._corruption.problems:
            key, problem = next(iter(self._corruption.problems.items()))
            return "corrupt", f"{key}: {problem}"
        if self._refusals.problems:
            return "forbidden", self._refusals.detail()
        if self._outage.down:
            return "unreachable", "Redis does not answer; serving the last known state"
        return "ok", ""

    def _answered(self, exc: redis.ResponseError, operation: str) -> PromotionError:
        """Redis answered ``operation`` with an error reply: record it (a
        refusal, corrupt data, or anything else: Redis unavailable for now)
        and return the error a state change raises for it (nothing changed)."""
        if _refused(exc):
            self._outage.recovered()
            return StorePermissionError(
                self._refusals.refused(
                    _state_operation(exc, operation), exc, _STATE_SCRIPT_COMMANDS
                )
            )
        if _corrupt_reply(exc):
            self._outage.recovered()
            self._corruption.found(self._key, str(exc))
            return self._corrupt_error()
        return self._unreachable(exc)

    def _written(self, result: Any) -> bool:
        """Whether a seed or compare-and-set script wrote (its reply is 1, or
        Redis's refusal of the PUBLISH that would have announced it)."""
        if isinstance(result, bytes):
            self._refusals.refused("publish", result.decode("utf-8", "replace"), ("+publish",))
        elif result:
            self._refusals.allowed("publish")
        if result:
            self._refusals.allowed("change")
        return bool(result)

    def compare_and_set(
        self, expected_version: int, new_state: GateState, *, expected_transition: str | None = None
    ) -> bool:
        """Store ``new_state`` if the shared state is still the expected one.

        Raises ``PromotionError`` when Redis is unreachable, the shared state
        is corrupt, or the outcome stays unknown (a reply lost and Redis
        silent until ``transition_timeout``).
        """
        self._follower.ensure()
        if expected_transition is None:
            expected_transition = self._state.transition
        if not new_state.transition:
            new_state = replace(new_state, transition=new_transition_id())
        if self._corruption.problems:
            self._read_or_refuse()
            if self._corruption.problems:
                raise self._corrupt_error()
        try:
            done = self._written(self._write(str(expected_version), expected_transition, new_state))
        except redis.ResponseError as exc:  # Redis answered: the script did not write
            raise self._answered(exc, "change") from exc
        except Unavailable as exc:
            if _never_sent(exc):
                raise self._unreachable(exc) from exc
            done = self._applied_after_all(new_state, exc)
        if done:
            self._confirm_replicas()
            self._set(new_state)
            return True
        self._read_or_refuse()  # someone else changed it: read theirs before the gate retries
        if self._corruption.problems:
            raise self._corrupt_error()
        return False

    def _write(self, expected_version: str, expected_transition: str, state: GateState) -> Any:
        return self._cas(
            keys=[self._key],
            args=[
                expected_version,
                expected_transition,
                str(state.version),
                state.transition,
                encode_state(state),
                self._channel,
            ],
        )

    def _applied_after_all(self, new_state: GateState, exc: Exception) -> bool:
        """The reply of a compare-and-set was lost: did it run? Ask until the deadline."""
        deadline = time.monotonic() + self.transition_timeout
        while True:
            try:
                _, transition = self._client.hmget(self._key, "version", "id")
                break
            except Unavailable as again:
                if time.monotonic() >= deadline:
                    self._outage.failed(again)
                    raise OutcomeUnknownError(
                        "the outcome of this change is unknown: Redis stopped answering after it "
                        f"was sent ({exc}); check the status once Redis is back"
                    ) from again
                time.sleep(0.05)
        if transition is not None and transition.decode("ascii", "replace") == new_state.transition:
            logger.warning(
                "rollout %r: the reply to a state change was lost (%s); it was applied",
                self._rollout,
                exc,
            )
            return True
        return False

    def _confirm_replicas(self) -> None:
        if self._wait_replicas <= 0:
            return
        try:
            acknowledged = int(
                self._client.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            )
        except Unavailable as exc:
            if _refused(exc):
                self._refusals.refused("wait", exc, ("+wait",))
                return
            acknowledged = 0
            logger.warning("rollout %r: WAIT failed (%s)", self._rollout, exc)
        else:
            self._refusals.allowed("wait")
        if acknowledged < self._wait_replicas:
            logger.warning(
                "rollout %r: a state change is on the primary but only %d of %d replicas confirmed "
                "it within %d ms; if the primary is lost now, the processes that hold it write it back",
                self._rollout,
                acknowledged,
                self._wait_replicas,
                self._wait_ms,
            )

    def _read_or_refuse(self) -> None:
        try:
            self._sync()
        except redis.ResponseError as exc:
            raise self._answered(exc, "read") from exc
        except Unavailable as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> PromotionError:
        self._outage.failed(exc)
        return PromotionError(
            "the shared store (Redis) is unreachable: nothing changed; try again when it is back"
        )

    def _corrupt_error(self) -> PromotionError:
        return PromotionError(
            f"the shared state in Redis is corrupt ({self.status()[1]}): nothing changed; "
            f"repair the key or delete it (the processes then write back the newest state they hold)"
        )

    def _set(self, state: GateState) -> None:
        with self._lock:
            if not state.supersedes(self._state):
                return
            self._state = state
        for listener in list(self._listeners):
            listener(state)

    def _sync(self) -> None:
        """Read the shared state and reconcile it with ours (see the module's documentation)."""
        version, transition, raw = self._client.hmget(self._key, "version", "id", "state")
        self._outage.recovered()
        self._refusals.allowed("read")
        if version is None and transition is None and raw is None:
            self._seed()
            return
        try:
            shared = decode_state(
                raw if raw is not None else b"", version or b"", transition or b""
            )
        except CorruptData as exc:
            self._corruption.found(self._key, str(exc))
            return
        self._corruption.repaired(self._key)
        self._reconcile(shared)

    def _reconcile(self, shared: GateState) -> None:
        local = self._state
        if shared.version < local.version:
            self._restore(shared)
            return
        self._seen_shared = True
        if (
            shared.version == 0
            and local is self._configured
            and shared.transition != local.transition
        ):
            self._log_config_difference(shared)
        if shared.transition != local.transition or shared.version != local.version:
            self._set(shared)

    def _log_config_difference(self, shared: GateState) -> None:
        if self._config_logged:
            return
        self._config_logged = True
        differences = config_differences(self._configured, shared)
        if differences:
            logger.warning(
                "rollout %r: this process's config differs from the shared state's in %s; "
                "following the shared state (written first)",
                self._rollout,
                ", ".join(differences),
            )

    def _restored(self, state: GateState, shared: GateState | None) -> GateState:
        """``state`` with a ``restore`` event, the same version and a new id."""
        event = PromotionEvent(
            shared.environment if shared is not None else state.environment,
            state.environment,
            datetime.now(UTC),
            "restore",
        )
        history = (*state.history, event)[-MAX_HISTORY:]
        return replace(state, history=history, transition=new_transition_id())

    def _seed(self) -> None:
        """Redis holds no state: write ours (one script, only into an empty hash)."""
        state = self._state
        if self._seen_shared:  # Redis lost it: put back the newest we know, and say so
            state = self._restored(state, None)
        written = self._written(
            self._seed_script(
                keys=[self._key],
                args=[str(state.version), state.transition, encode_state(state), self._channel],
            )
        )
        if written:
            if self._seen_shared:
                logger.warning(
                    "rollout %r: Redis held no state; wrote back version %d (%s)",
                    self._rollout,
                    state.version,
                    state.environment,
                )
            self._seen_shared = True
            self._set(state)
        else:
            self._sync()  # someone seeded it first

    def _restore(self, shared: GateState) -> None:
        """The shared state is older than ours: write ours back over it."""
        state = self._restored(self._state, shared)
        if self._written(self._write(str(shared.version), shared.transition, state)):
            logger.warning(
                "rollout %r: the shared state (version %d) was older than this process's; "
                "wrote back version %d (%s)",
                self._rollout,
                shared.version,
                state.version,
                state.environment,
            )
            self._set(state)

    def _follow(self) -> None:
        self._steps += 1
        now = time.monotonic()
        again = now - self._asked_at >= CLOCK_SECONDS  # the clocks, and what was refused
        if again:
            self._asked_at = now
        try:
            announced = self._announced(again)
            version, transition = self._client.hmget(self._key, "version", "id")
            self._refusals.allowed("read")
            local = self._state
            if (
                announced
                or self._corruption.problems
                or self._steps % FULL_READ_EVERY == 0  # a foreign write may leave the id alone
                or version != str(local.version).encode()
                or transition != local.transition.encode()
            ):
                self._sync()
            else:
                self._outage.recovered()
            if again:
                for clock in self._clocks:
                    self._measure(clock)
                self._ask_to_publish()
        except redis.ResponseError as exc:  # Redis answered: refused, not what we wrote, or busy
            self._answered(exc, "read")
        except Unavailable as exc:
            self._outage.failed(exc)
            self._drop_pubsub()

    def _announced(self, again: bool) -> bool:
        """Whether another process announced a change (``SUBSCRIBE``). While
        Redis refuses SUBSCRIBE, never: the follower polls, and subscribes
        again only when ``again``."""
        try:
            if self._pubsub is None:
                if "subscribe" in self._refusals.problems and not again:
                    return False
                self._pubsub = self._client.pubsub()
                self._pubsub.subscribe(self._channel)
            message = self._pubsub.get_message(timeout=0.2)
        except Unavailable as exc:
            if not _refused(exc):
                raise
            self._drop_pubsub()
            self._refusals.refused("subscribe", exc, ("+subscribe",))
            return False
        if message is None:
            return False
        if message["type"] == "subscribe":  # Redis confirmed it
            self._refusals.allowed("subscribe")
            return False
        return bool(message["type"] == "message")

    def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*Unavailable):
                pubsub.close()

    def _ask_to_publish(self) -> None:
        """At the follower's first step, and while Redis refuses PUBLISH, ask
        whether it may (a notification the other processes answer with a
        read): every process, not only those that write, says so."""
        if self._steps == 1 or "publish" in self._refusals.problems:
            try:
                self._client.publish(self._channel, str(self._state.version))
            except redis.ResponseError as exc:
                if not _refused(exc):
                    raise
                self._refusals.refused("publish", exc, ("+publish",))
            else:
                self._refusals.allowed("publish")

    def _measure(self, clock: RedisClock) -> None:
        """Measure ``clock``'s offset to Redis's (``TIME``); a refusal is recorded."""
        try:
            clock.measure(self._client)
        except redis.ResponseError as exc:
            if not _refused(exc):
                raise
            self._refusals.refused("time", exc, ("+time",))
        else:
            self._refusals.allowed("time")

    def clock(self, local: Callable[[], float]) -> Callable[[], float]:
        """``local`` corrected to Redis's clock, measured now (if Redis answers)
        and again by the follower every ``CLOCK_SECONDS``."""
        clock = RedisClock(local, self._rollout, "bakes, deadlines and event times follow")
        with contextlib.suppress(*Unavailable):
            self._measure(clock)
        self._clocks.append(clock)
        self._follower.ensure()
        return clock

    def after_fork(self) -> None:
        """In a forked child (gunicorn ``--preload``): fresh locks, and the
        state followed again from a first step at once on the follower's
        thread (threads do not survive a fork, and a worker that only routes
        never reads the state itself). Nothing is read here, inside the fork."""
        self._lock = threading.Lock()
        self._pubsub = None  # the parent's subscription is its own
        self._steps, self._asked_at = 0, -math.inf  # a first step of its own
        self._follower.ensure()

    def close(self) -> None:
        self._follower.close()


def _never_sent(exc: Exception) -> bool:
    """Whether the command failed before reaching Redis (no connection could be made)."""
    return isinstance(exc, redis.ConnectionError) and " connecting to " in str(exc)


def _count(value: bytes) -> int:
    """A stored counter: a non-negative integer, or ``CorruptData``."""
    if not _INTEGER.fullmatch(value) or value.startswith(b"-"):
        raise CorruptData(f"the count {value[:40]!r} is not a non-negative integer")
    return int(value)


def _decode_slice(reply: dict[bytes, bytes]) -> tuple[int, int, int, dict[int, int], list[str]]:
    """(requests, failures, good, buckets, problems) of one stored slice; bad fields are skipped."""
    totals = {b"r": 0, b"f": 0, b"g": 0}
    buckets: dict[int, int] = {}
    problems: list[str] = []
    for name, value in reply.items():
        try:
            if name in totals:
                totals[name] = _count(value)
            elif name.startswith(b"b") and _INTEGER.fullmatch(name[1:]):
                index = int(name[1:])
                if not 0 <= index < BUCKET_COUNT:
                    raise CorruptData(f"the bucket field {name[:40]!r} is out of range")
                buckets[index] = _count(value)
            else:
                raise CorruptData(f"unknown field {name[:40]!r}")
        except CorruptData as exc:
            problems.append(str(exc))
    return totals[b"r"], totals[b"f"], totals[b"g"], buckets, problems


# What a write of a flush carries: a slice's outcomes (variant, number), a
# variant's evidence and sessions' sample (its name), or neither.
_Outcomes = tuple[str, int] | str | None


class RedisWindowStore(BufferedWindowStore):
    """Both windows, merged across every process of the rollout.

    Slices are numbered by Redis's clock: ``clock`` (wall-clock seconds)
    plus the offset to Redis's ``TIME`` measured at every flush, so that
    processes whose clocks disagree still number a moment alike.
    """

    unreachable_errors = Unavailable

    def __init__(
        self,
        client: Any,
        rollout: str,
        window_seconds: float,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        flush_seconds: float = 0.25,
        clock: Callable[[], float] = time.time,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(
            rollout, window_seconds, flush_seconds=flush_seconds, meter_provider=meter_provider
        )
        base = rollout_keys(rollout, key_prefix)
        self._client = client
        self._prefix = f"{base}:window"
        self._epoch_key = f"{base}:epoch"
        self._next_epoch = client.register_script(_NEXT_EPOCH)
        self._add_held = client.register_script(_ADD_HELD)
        self._expire = int(window_seconds + 2 * self._slice_seconds) + 1
        self._clock = RedisClock(clock, rollout, "outcomes are numbered by")
        self._epoch = 0
        self._outage = _Outage(f"rollout {rollout!r} windows")
        self._corruption = _Corruption()
        self._refusals = _Refusals(f"rollout {rollout!r} windows", client, key_prefix)
        meter = get_meter("gate_middleware", meter_provider=meter_provider)
        meter.create_observable_counter(
            "gate_middleware.store.corrupt",
            callbacks=[self._observe_corrupt],
            unit="{read}",
            description="Reads of a shared-store key that did not decode",
        )
        with contextlib.suppress(*Unavailable):  # if Redis is away, the first flush says so
            self._measure_offset()

    def _unreachable(self, exc: BaseException) -> None:
        """A flush failed before Redis took its outcomes (they wait in the
        buffer): Redis refused a command (``TIME``...), or is unavailable."""
        if _refused(exc):
            self._outage.recovered()
            self._refusals.refused("flush", exc, _WINDOW_SCRIPT_COMMANDS)
        else:
            self._outage.failed(exc)

    def _observe_corrupt(self, options: CallbackOptions) -> list[Observation]:
        counts: dict[str, int] = {}
        for key, count in self._corruption.counts.items():
            kind = "epoch" if key == self._epoch_key else "window"
            counts[kind] = counts.get(kind, 0) + count
        return [
            Observation(count, {"gate.rollout": self._rollout, "gate.store.key": kind})
            for kind, count in counts.items()
        ]

    def status(self) -> tuple[StoreCondition, str]:
        """("ok" | "unreachable" | "forbidden" | "corrupt", what is wrong).
        ``forbidden`` and ``unreachable`` come first: they say that outcomes
        may not be delivered, which the gate's verdict heeds."""
        condition: StoreCondition = "ok"
        problems = [f"{key}: {problem}" for key, problem in self._corruption.problems.items()]
        if problems:
            condition = "corrupt"
        if self._outage.down:
            condition = "unreachable"
            problems.insert(0, "Redis does not answer; outcomes wait in the local buffer")
        if self._refusals.problems:
            condition = "forbidden"
            problems.insert(0, self._refusals.detail())
        return condition, "; ".join(problems)

    def _now(self) -> float:
        return self._clock()

    def _measure_offset(self) -> None:
        self._clock.measure(self._client)

    @property
    def clock_offset_seconds(self) -> float:
        """Redis's clock minus this process's, as last measured."""
        return self._clock.offset

    def _clear_shared(self) -> None:
        try:
            previous = self._epoch
            self._epoch = int(self._next_epoch(keys=[self._epoch_key]))
            # The last step's sessions' sample is the largest thing it left:
            # gone now, not when it expires.
            for variant in (CANARY, STABLE):
                self._client.delete(f"{self._prefix}:{previous}:{variant}:sample")
        except Unavailable as exc:
            if _refused(exc):
                self._outage.recovered()
                self._refusals.refused("clear", exc, _WINDOW_SCRIPT_COMMANDS)
            elif _corrupt_reply(exc):
                self._corruption.found(self._epoch_key, _reply(str(exc)))
            else:
                self._outage.failed(exc)
        else:
            self._refusals.allowed("clear")

    def _read_epoch(self) -> int:
        try:
            raw = self._client.get(self._epoch_key)
        except redis.ResponseError as exc:
            if not _corrupt_reply(exc):
                raise
            self._corruption.found(self._epoch_key, _reply(str(exc)))  # not a string at all
            return -1
        if raw is None:
            self._corruption.repaired(self._epoch_key)
            return 0
        if not _INTEGER.fullmatch(raw):
            # Every process reads the same garbage, so every process falls back
            # to the same epoch: the windows stay shared until the next clear().
            self._corruption.found(self._epoch_key, f"the epoch {raw[:40]!r} is not an integer")
            return -1
        self._corruption.repaired(self._epoch_key)
        return int(raw)

    def _write(self, pending: dict[tuple[str, int], Slice], evidence: dict[str, Evidence]) -> None:
        now_slice = int(self._now() // self._slice_seconds)
        oldest = now_slice - SLICES + 1
        self._buffer.drop_expired(pending, oldest)
        self._measure_offset()  # TIME cannot be pipelined on a cluster
        self._epoch = self._read_epoch()
        pipe = self._client.pipeline(transaction=False)
        # Each command queued: its name, its key and, for a write of outcomes,
        # their slice (or the variant, for the evidence and its sample).
        queued: list[tuple[str, str, _Outcomes]] = []

        def send(command: str, key: str, *args: Any, outcomes: _Outcomes = None) -> None:
            pipe.execute_command(command, key, *args)
            queued.append((command, key, outcomes))

        for (variant, number), entry in pending.items():
            redis_key = f"{self._prefix}:{self._epoch}:{variant}:{number}"
            fields = {"r": entry.requests, "f": entry.failures, "g": entry.good}
            fields.update({f"b{index}": count for index, count in entry.buckets.items()})
            for name, amount in fields.items():
                if amount:
                    send("HINCRBY", redis_key, name, amount, outcomes=(variant, number))
            send("EXPIRE", redis_key, self._expire)
        order = [
            (variant, number)
            for variant in (CANARY, STABLE)
            for number in range(oldest, now_slice + 1)
        ]
        evicted = self._buffer.evictions(self._epoch)
        read_sample = self._buffer.sample_due()
        for variant in (CANARY, STABLE):
            evidence_key = f"{self._prefix}:{self._epoch}:{variant}:evidence"
            for name, amount in evidence_fields(evidence[variant]):
                send("HINCRBY", evidence_key, name, amount, outcomes=variant)
            send("EXPIRE", evidence_key, EVIDENCE_SECONDS)
            # The sessions' sample: a hash of its own, read back only every
            # SAMPLE_READ_SECONDS (it holds thousands of fields).
            sample_key = f"{self._prefix}:{self._epoch}:{variant}:sample"
            counters = sample_fields(evidence[variant].sample)
            held: list[Any] = [STORE_LIMIT]
            for name, amount in counters:
                if name.startswith("s"):  # a session's requests
                    send("HINCRBY", sample_key, name, amount, outcomes=variant)
                else:  # a metric's total
                    held += (name, amount)
            if len(held) > 1:
                self._add_held(keys=[sample_key], args=held, client=pipe)
                queued.append(("EVALSHA", sample_key, variant))
            if evicted.get(variant):
                send("HDEL", sample_key, *evicted[variant])
            if counters:
                send("EXPIRE", sample_key, EVIDENCE_SECONDS)
        for variant in (CANARY, STABLE):
            send("HGETALL", f"{self._prefix}:{self._epoch}:{variant}:evidence")
        for variant, number in order:
            send("HGETALL", f"{self._prefix}:{self._epoch}:{variant}:{number}")
        if read_sample:
            for variant in (CANARY, STABLE):
                send("HGETALL", f"{self._prefix}:{self._epoch}:{variant}:sample")
        # Redis answers each command: one it refuses does not fail the others.
        replies = pipe.execute(raise_on_error=False)
        corrupt_keys, unsent = self._note_errors(queued, replies, pending)
        retry = {key: entry for key, entry in pending.items() if key in unsent}
        retry_evidence = {variant: evidence[variant] for variant in evidence if variant in unsent}
        pending.clear()  # in Redis now (or put back below): nothing may lose or repeat them
        evidence.clear()
        if retry or retry_evidence:
            self._buffer.put_back(retry, retry_evidence, oldest)
        replies = [{} if isinstance(reply, Exception) else reply for reply in replies]
        samples = None
        if read_sample:
            samples = {
                variant: sample_from_fields(_decode_fields(reply))
                for variant, reply in zip((CANARY, STABLE), replies[-2:], strict=True)
            }
            replies = replies[:-2]
        evidence_replies = replies[-len(order) - 2 : -len(order)]
        merged_evidence = {
            variant: _decode_evidence(reply)
            for variant, reply in zip((CANARY, STABLE), evidence_replies, strict=True)
        }
        merged = {CANARY: Merged(), STABLE: Merged()}
        for (variant, number), reply in zip(order, replies[-len(order) :], strict=True):
            if not reply:
                continue
            requests, failures, good, buckets, problems = _decode_slice(reply)
            slice_key = f"{self._prefix}:{self._epoch}:{variant}:{number}"
            if problems:
                self._corruption.found(slice_key, "; ".join(problems))
            else:
                self._corruption.repaired(slice_key)
            merged[variant].add(requests, failures, good, buckets)
        for old_key in [k for k in self._corruption.problems if k.startswith(self._prefix)]:
            if old_key not in corrupt_keys and not any(
                old_key.endswith(f":{v}:{n}") for v, n in order
            ):
                self._corruption.repaired(old_key)  # it left the window, or holds a hash again
        self._buffer.publish(merged, merged_evidence, samples, self._epoch)

    def _note_errors(
        self,
        queued: list[tuple[str, str, _Outcomes]],
        replies: list[Any],
        pending: dict[tuple[str, int], Slice],
    ) -> tuple[set[str], set[_Outcomes]]:
        """Record the commands of a flush that Redis answered with an error:
        refused (``forbidden``), on a key that holds something else
        (``corrupt``), or anything else (unavailable for now). Returns the
        keys found corrupt, and the slices and evidence none of whose writes
        Redis took (to send again). Of a slice only some of whose writes it
        took, the outcomes are lost and counted dropped (sent again, the
        fields it took would count twice), unless what failed was a field
        that holds garbage (reported corrupt)."""
        refusals: list[tuple[str, str]] = []
        first_refusal = ""
        corrupt_keys: set[str] = set()
        trouble: Exception | None = None
        taken: dict[_Outcomes, list[bool]] = {}  # per slice or evidence: each write, taken
        lost: set[_Outcomes] = set()  # a write failed, and not on garbage
        for (command, key, outcomes), reply in zip(queued, replies, strict=True):
            failed = isinstance(reply, Exception)
            if outcomes is not None:
                taken.setdefault(outcomes, []).append(not failed)
            if not failed:
                continue
            if _corrupt_reply(reply):
                corrupt_keys.add(key)
                self._corruption.found(key, _reply(str(reply)))
                continue
            if outcomes is not None:
                lost.add(outcomes)
            if _refused(reply):
                fallback = (
                    _WINDOW_SCRIPT_COMMANDS if command == "EVALSHA" else ("+" + command.lower(),)
                )
                refusals.append(self._refusals.rule(str(reply), fallback))
                first_refusal = first_refusal or str(reply)
            elif trouble is None:
                trouble = reply
        unsent = {outcomes for outcomes, writes in taken.items() if not any(writes)}
        self._buffer.dropped += sum(
            pending[outcomes].requests for outcomes in lost - unsent if isinstance(outcomes, tuple)
        )
        if refusals:
            self._refusals.found("flush", refusals, first_refusal)
        else:
            self._refusals.allowed("flush")
        if trouble is not None:
            self._outage.failed(trouble)
        else:
            self._outage.recovered()
        return corrupt_keys, unsent


def _decode_fields(reply: dict[bytes, bytes]) -> list[tuple[str, int]]:
    """A hash's counter fields; a field that does not parse is skipped."""
    fields: list[tuple[str, int]] = []
    for key, value in reply.items():
        try:
            fields.append((key.decode("utf-8"), int(value)))
        except (UnicodeDecodeError, ValueError):
            continue
    return fields


def _decode_evidence(reply: dict[bytes, bytes]) -> Evidence:
    """Evidence from its hash (``evidence_from_fields``); a field that does not parse is skipped."""
    return evidence_from_fields(_decode_fields(reply))


# -- connecting ------------------------------------------------------------------------

_TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


# What each scheme's URL looks like: said by every ConfigError about one.
_FORMS = {
    "redis": "redis://[[user]:password@]host[:port][/db][?option=value...]",
    "rediss": "rediss://[[user]:password@]host[:port][/db][?option=value...]",
    "unix": "unix://[[user]:password@]/path/to/socket[?db=N&option=value...]",
    "redis+cluster": "redis+cluster://[[user]:password@]host:port[,host:port...] (no db, no options)",
    "redis+sentinel": (
        "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db] (no options)"
    ),
}
_PASSWORD_OPTION = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)
_DB_PATH = re.compile(r"/?(\d+)?/?")


def redacted_url(url: str) -> str:
    """``url`` with the password of its user info (and of a ``password=``
    option) replaced by ``***``: what an error or a log line may show.
    Everything before the last ``@`` is user info, so a password holding
    ``/``, ``?`` or ``@`` does not leak either."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return f"{scheme.partition(':')[0]}:***" if "@" in url else url
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        user = user if not set(user) & set("/?#") else ""
        rest = f"{user}:***@{after}"
    return _PASSWORD_OPTION.sub(r"\1***", f"{scheme}://{rest}")


def _malformed(url: str, problem: str) -> ConfigError:
    """The ConfigError for a malformed ``url``: its form, the problem, the URL redacted."""
    scheme = url.partition("://")[0].lower()
    form = _FORMS.get(
        scheme, "a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL"
    )
    return ConfigError("url", redacted_url(url), f"{form}: {problem}")


def _split(url: str) -> SplitResult:
    """``url``'s parts; a ConfigError when they do not parse (Python's words,
    which may quote the URL, are never shown)."""
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() in ("redis", "rediss"):
            parts.port  # noqa: B018 - read here, so that a bad one fails here
    except ValueError:
        raise _malformed(url, "its host and port do not parse (a port from 1 to 65535)") from None
    return parts


def _port(text: str, url: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise _malformed(url, "each port must be an integer from 1 to 65535")
    return int(text)


def _hosts(url: str, netloc: str, default_port: int) -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a cluster's or Sentinels' URL (``[v6]:port`` too)."""
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        if part.startswith("["):
            host, bracket, port_part = part[1:].partition("]")
            if not bracket or (port_part and not port_part.startswith(":")):
                raise _malformed(url, "an IPv6 host is written [address]:port")
            port = port_part[1:] if port_part else None
        elif ":" in part:
            host, _, port = part.rpartition(":")
        else:
            host, port = part, None
        hosts.append((host or "127.0.0.1", default_port if port is None else _port(port, url)))
    return hosts


def _credentials(parts: SplitResult, options: dict[str, Any]) -> None:
    """The URL's user and password, unless ``options`` name their own."""
    if parts.username:
        options.setdefault("username", unquote(parts.username))
    if parts.password:
        options.setdefault("password", unquote(parts.password))


def connect(url: str, **options: Any) -> Any:
    """A client with short timeouts: a request must never wait long on the store.

    ``redis+cluster://host:port[,host:port...]`` gives a ``RedisCluster``;
    ``redis+sentinel://host:port[,host:port...]/service[/db]`` the primary
    that the Sentinels name for ``service`` (followed through failovers);
    any other URL goes to ``redis.Redis.from_url``. A URL that does not
    parse is a ``ConfigError`` that shows it with its password as ``***``.
    """
    from redis.backoff import ConstantBackoff, NoBackoff
    from redis.retry import Retry

    for name, seconds in _TIMEOUTS.items():
        options.setdefault(name, seconds)
    # No sleeping retries inside redis-py (its default backs off by seconds,
    # with jitter): the store's own loops retry, within their deadlines.
    no_retry = Retry(NoBackoff(), 0)
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis+cluster", "redis+sentinel") and (parts.query or parts.fragment):
        raise _malformed(url, "options are not read from this URL (pass them to the client)")
    if scheme == "redis+cluster":
        from redis.cluster import ClusterNode, RedisCluster

        if parts.path.strip("/") not in ("", "0"):
            raise _malformed(url, "a Redis Cluster has db 0 only")
        nodes = [
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in _hosts(url, parts.netloc, 6379)
        ]
        _credentials(parts, options)
        options.setdefault("retry", Retry(ConstantBackoff(0.05), 2))
        return RedisCluster(startup_nodes=nodes, **options)
    if scheme == "redis+sentinel":
        from redis.sentinel import Sentinel

        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise _malformed(url, "it names the service, and at most a db after it")
        if len(path) > 1:
            if not (path[1].isascii() and path[1].isdigit()):
                raise _malformed(url, "the db must be an integer")
            options.setdefault("db", int(path[1]))
        hosts = _hosts(url, parts.netloc, 26379)
        _credentials(parts, options)
        options.setdefault("retry", no_retry)
        # redis-py before 8.2 ships Sentinel without annotations (mypy --strict:
        # no-untyped-call) and 8.2 annotates it (an ignore would then be unused):
        # called through a Callable[..., Any], both pass with no ignore at all.
        make_sentinel: Callable[..., Any] = Sentinel
        sentinel = make_sentinel(hosts, sentinel_kwargs={**_TIMEOUTS, "retry": no_retry}, **options)
        return sentinel.master_for(unquote(path[0]), **options)
    if scheme in ("redis", "rediss") and not _DB_PATH.fullmatch(unquote(parts.path)):
        raise _malformed(url, "the db must be an integer")  # redis-py would take db 0
    options.setdefault("health_check_interval", 5)
    try:
        client = redis.Redis.from_url(url, **options)
        # A connection is made at the first command: an option it does not
        # take (``?no_such_option=1``) fails here instead (no socket is opened).
        pool: Any = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        # redis-py's words name an option (never its value); the password is taken out anyway.
        raise _malformed(url, _without_secrets(str(exc), parts)) from None
    return client


def _without_secrets(text: str, parts: SplitResult) -> str:
    """``text`` with the URL's passwords (its user info's and its ``password``
    options', as written and decoded) taken out."""
    secrets = [parts.password or ""]
    secrets += [value for name, value in parse_qsl(parts.query) if "password" in name.lower()]
    for secret in secrets:
        for form in (secret, unquote(secret)):
            if form:
                text = text.replace(form, "***")
    return text


def shared_stores(
    url: str,
    config: PromotionConfig,
    initial: GateState,
    meter_provider: MeterProvider | None = None,
    *,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    wait_replicas: int | None = None,
    transition_timeout: float = TRANSITION_TIMEOUT_SECONDS,
) -> tuple[RedisStateStore, RedisWindowStore]:
    """Both stores of ``config.name``'s rollout on the Redis at ``url``.

    ``wait_replicas`` defaults to 1 behind Sentinels (a primary with
    replicas) and 0 otherwise.
    """
    rollout_keys(config.name, key_prefix)  # validates the prefix
    client = connect(url)
    if wait_replicas is None:
        wait_replicas = 1 if url.startswith("redis+sentinel:") else 0
    return (
        RedisStateStore(
            client,
            config.name,
            initial,
            key_prefix=key_prefix,
            wait_replicas=wait_replicas,
            transition_timeout=transition_timeout,
            meter_provider=meter_provider,
        ),
        RedisWindowStore(
            client,
            config.name,
            config.rollback_window_seconds,
            key_prefix=key_prefix,
            meter_provider=meter_provider,
        ),
    )


# -- the catalog of rollouts added at run time ----------------------------------------

# Keep ARGV[2] under the field ARGV[1] unless the field is taken (HSETNX,
# written with the commands of ACL_COMMANDS: a user granted them may add).
_ADD_ENTRY = """
if redis.call('HGET', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# The commands of that script, named when Redis 7.0 refuses one without saying which.
_CATALOG_SCRIPT_COMMANDS = ("+hget", "+hset")


class RedisCatalog:
    """The rollouts added while the app runs (``RolloutCatalog``), in the hash
    ``{key_prefix}catalog``: every process that opens the same Redis with the
    same ``key_prefix`` reads them (see the module's documentation).

    ``url`` is where ``client`` connects: shown in errors, its password as ``***``.
    """

    shared = True

    def __init__(self, client: Any, *, key_prefix: str = DEFAULT_KEY_PREFIX, url: str = "") -> None:
        rollout_keys("catalog", key_prefix)  # validates the prefix
        self.key = f"{key_prefix}catalog"
        self._client = client
        self._url = url
        self._add_entry = client.register_script(_ADD_ENTRY)
        self._refusals = _Refusals(f"the catalog of rollouts {self.key}", client, key_prefix)

    def entries(self) -> dict[str, str]:
        """Every entry, by rollout name; bytes that are not UTF-8 are read as
        U+FFFD (the set then refuses that entry by name, and serves the rest)."""
        try:
            fields = self._client.hgetall(self.key)
        except Unavailable as exc:
            raise self._failed("catalog", exc) from exc
        self._refusals.allowed("catalog")
        return {_text(name): _text(entry) for name, entry in fields.items()}

    def add(self, name: str, entry: str) -> bool:
        """Keep ``entry`` under ``name`` unless the name is taken. A reply lost
        after the script was sent is looked up once: ``OutcomeUnknownError``
        when Redis does not answer that either."""
        try:
            added = self._add_entry(keys=[self.key], args=[name, entry])
        except redis.ResponseError as exc:  # Redis answered: the script did not write
            raise self._failed("add", exc) from exc
        except Unavailable as exc:
            if _never_sent(exc):
                raise self._failed("add", exc) from exc
            added = self._added_after_all(name, entry, exc)
        self._refusals.allowed("add")
        return bool(added)

    def _added_after_all(self, name: str, entry: str, exc: Exception) -> bool:
        """The reply to an add was lost: whether the entry is this one (True),
        another process's (False), or not there (nothing changed)."""
        try:
            kept = self._client.hget(self.key, name)
        except Unavailable as again:
            raise OutcomeUnknownError(
                f"whether rollout {name!r} was added is unknown: Redis ({redacted_url(self._url)}) "
                f"stopped answering after it was sent ({self._cause(exc)}); if it was, every "
                "process of the set serves it once it reads the catalog"
            ) from again
        if kept is None:
            raise self._failed("add", exc) from exc
        return bool(kept == entry.encode("utf-8"))

    def _failed(self, operation: str, exc: BaseException) -> PromotionError:
        """The error ``operation`` (``catalog``: reading, or ``add``) raises
        for ``exc``: a refusal names the rule to grant; nothing changed."""
        if _refused(exc):
            commands = ("+hgetall",) if operation == "catalog" else _CATALOG_SCRIPT_COMMANDS
            return StorePermissionError(self._refusals.refused(operation, exc, commands))
        doing = (
            "the catalog of rollouts could not be read"
            if operation == "catalog"
            else "nothing changed: the new rollout could not be added to the catalog"
        )
        if _corrupt_reply(exc):
            return PromotionError(
                f"{doing}: the key {self.key} in Redis ({redacted_url(self._url)}) holds what "
                f"the catalog never writes there ({self._cause(exc)}); repair or delete it"
            )
        again = "" if operation == "catalog" else "; try again when it is back"
        return PromotionError(
            f"{doing}: Redis ({redacted_url(self._url)}) does not answer ({self._cause(exc)}){again}"
        )

    def _cause(self, exc: BaseException) -> str:
        """``exc`` in a line, without the URL's passwords."""
        text = _reply(str(exc))
        if self._url:
            text = _without_secrets(text, _split(self._url))
        return f"{type(exc).__name__}: {text}"

    def close(self) -> None:
        """Release the client's connections (a later call opens new ones)."""
        with contextlib.suppress(*Unavailable):
            self._client.close()


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def open_catalog(url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX, **options: Any) -> RedisCatalog:
    """The catalog of rollouts added at run time on the Redis at ``url``
    (any URL ``connect`` takes), under ``key_prefix``. A ``ConfigError``
    names an option it does not take, a malformed URL (its password as
    ``***``) or prefix; ``PromotionError`` when a Redis Cluster, which is
    asked for its slots at once, does not answer."""
    for name, value in options.items():
        shown = "***" if "password" in name.lower() else value
        raise ConfigError(name, shown, "no such option for a Redis catalog (key_prefix)")
    rollout_keys("catalog", key_prefix)  # validates the prefix before connecting
    try:
        client = connect(url)
    except Unavailable as exc:
        text = _without_secrets(_reply(str(exc)), _split(url))
        raise PromotionError(
            f"the catalog of rollouts could not be opened: Redis ({redacted_url(url)}) does not "
            f"answer ({type(exc).__name__}: {text})"
        ) from exc
    return RedisCatalog(client, key_prefix=key_prefix, url=url)


__all__ = [
    "ACL_COMMANDS",
    "CorruptData",
    "RedisCatalog",
    "RedisStateStore",
    "RedisWindowStore",
    "connect",
    "open_catalog",
    "redacted_url",
    "rollout_keys",
    "shared_stores",
]
