"""``PromotionGate``: routes sessions, records outcomes, promotes and rolls back.

One gate object is shared by every request of an app. Routing reads an
immutable snapshot and takes no lock; recording takes one short lock inside
the window store; state changes go through the state store's
compare-and-set, so two threads that detect the same failure at the same
moment make exactly one rollback.

The gate evaluates itself: ``record_request_outcome`` asks the judge
(``gate_middleware.judge.statistics``) at most once every
``evaluation_interval_seconds`` of the injected clock (no background
thread), so an app that only records outcomes still gets its automatic
rollback. The judge reads the evidence of the current *step* (every start,
traffic change, promotion and rollback begins one); outcomes routed under
another step are dropped and counted (``stale_outcomes``).

With a rollout plan (``PromotionConfig.plan``) the gate also moves the
release forward by itself: each evaluation asks ``gate_middleware.domain.plan``
what to do next and carries it out through the same compare-and-set, so
with a shared store exactly one process makes each step. A daemon thread
per gate (``gate-plan``) evaluates every ``evaluation_interval_seconds``
too, so a quiet night does not freeze the plan; ``close()`` stops it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from opentelemetry.metrics import MeterProvider

from gate_middleware.background import run_once
from gate_middleware.domain import plan as plans
from gate_middleware.domain.config import (
    PromotionConfig,
    SloConfig,
    judge_settings,
    validate_flag_name,
    validate_flag_names,
)
from gate_middleware.domain.environment import CANARY as CANARY_ENV
from gate_middleware.domain.environment import (
    PRODUCTION,
    STAGING,
    Environment,
    validate_traffic_percent,
)
from gate_middleware.domain.naming import validate_reason
from gate_middleware.domain.plan import PlanPosition, RolloutPlan
from gate_middleware.domain.routing import (
    BUCKETS,
    CANARY,
    STABLE,
    VARIANTS,
    RoutingDecision,
    RoutingTable,
    canary_threshold,
)
from gate_middleware.domain.state import (
    MAX_SAMPLES,
    GateEvent,
    GateState,
    GateStatus,
    HealthSample,
    PromotionEvent,
    RollbackEvent,
    StoreView,
    WebhookView,
)
from gate_middleware.errors import ConfigError, OutcomeUnknownError, PromotionError
from gate_middleware.gate.autopilot import (
    API_ACTOR,
    GATE_ACTOR,
    Autopilot,
    PlanTimer,
    validate_actor,
)
from gate_middleware.gate.telemetry import GateTelemetry
from gate_middleware.gate.webhooks import Webhook
from gate_middleware.gate.workers import several_workers
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.statistics import (
    HEALTHY,
    MONITOR,
    ROLLBACK,
    judge,
    judge_against_objective,
)
from gate_middleware.judge.verdict import CanaryHealth, WindowStats, assess, no_release
from gate_middleware.stores import (
    StateStore,
    StoreCondition,
    WindowStore,
    missing_members,
    open_stores,
)
from gate_middleware.stores.memory import InMemoryStateStore
from gate_middleware.stores.windows import InMemoryWindowStore

logger = logging.getLogger("gate_middleware")

# Every live gate, so a forked child (gunicorn --preload, multiprocessing)
# can replace the locks it inherited: a lock held by another thread at the
# moment of the fork would never be released in the child.
_GATES: weakref.WeakSet[PromotionGate] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for gate in list(_GATES):
        gate._after_fork()


def _require_a_named_rollout(config: PromotionConfig | None) -> None:
    if config is None or config.name == PromotionConfig.name:
        raise ConfigError(
            "config",
            config if config is None else config.name,
            "a PromotionConfig that names the rollout (PromotionConfig(name='checkout')) or, "
            "for Redis, an explicit key_prefix=: two apps on one store would otherwise share "
            "a rollout",
        )


def _checked(store: Any, port: type, name: str) -> Any:
    """``store`` if it has every member of ``port``; else a ``ConfigError``
    naming what it lacks (a store subclasses ``gate_middleware.stores``'
    ``StateStoreBase`` / ``WindowStoreBase`` for the optional ones)."""
    missing = missing_members(store, port)
    if missing:
        raise ConfigError(
            name,
            type(store).__name__,
            f"a {port.__name__} (gate_middleware.stores); it lacks {', '.join(missing)}: "
            f"subclass {port.__name__}Base for no-op defaults of the optional methods",
        )
    return store


Callback = TypeVar("Callback", bound=Callable[..., Any])
Event = TypeVar("Event", RollbackEvent, PromotionEvent, None)

_PROMOTION_PATHS = {(CANARY_ENV, STAGING), (STAGING, PRODUCTION), (CANARY_ENV, PRODUCTION)}


def _seconds(duration: float | timedelta) -> float:
    if isinstance(duration, timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        seconds = float(duration)
    else:
        raise ConfigError("duration", duration, "a non-negative number of seconds or a timedelta")
    if not 0.0 <= seconds < math.inf:
        raise ConfigError("duration", duration, "a non-negative number of seconds or a timedelta")
    return seconds


def routing_salt(config: PromotionConfig, release: int) -> str:
    """The ``name`` of the routing formula for ``release``.

    ``config.salt`` (the rollout name by default); with
    ``cohort="release"``, ``"{salt}#{release}"``, so each release takes a
    fresh cohort instead of the previous release's sessions.
    """
    salt = config.salt if config.salt is not None else config.name
    return f"{salt}#{release}" if config.cohort == "release" else salt


def routing_table(state: GateState, config: PromotionConfig) -> RoutingTable:
    """What routing needs from ``state``, computed once per state change."""
    environment = state.environment
    holdback = config.holdback_percent
    limit = 100.0 - holdback
    threshold = canary_threshold(min(environment.traffic_percent, limit))
    stable = tuple(sorted(state.stable_flags))
    canary = tuple(sorted(state.stable_flags | state.release_flags))
    if environment.name == PRODUCTION:
        threshold = 0
        reasons = ("production: the release is stable for everyone",) * 2
    elif environment.name == STAGING and not holdback:
        threshold = BUCKETS
        reasons = ("staging: every session takes the canary path",) * 2
    elif environment.name == STAGING:
        threshold = canary_threshold(limit)
        reasons = (
            f"staging: bucket below {threshold} of {BUCKETS}",
            f"bucket at or above {threshold} of {BUCKETS}: the {holdback:g}% holdback",
        )
    else:
        reasons = (
            f"bucket below {threshold} of {BUCKETS}: canary ({environment.traffic_percent:g}%)",
            f"bucket at or above {threshold} of {BUCKETS}: stable",
        )
    return RoutingTable(
        routing_salt(config, state.release),
        threshold,
        (True, environment, canary, frozenset(canary), reasons[0]),
        (False, Environment.PRODUCTION, stable, frozenset(stable), reasons[1]),
        state.step,
    )


class PromotionGate(Autopilot):
    """The promotion gate of one rollout (``PromotionGateManager`` is the same class).

    ``clock`` returns seconds (monotonic); tests pass a fake one to move
    time. ``state_store`` and ``window_store`` default to this process's
    memory. ``meter_provider`` receives the gate's instruments (the global
    one by default).
    """

    # Changes sent to a shared store that stopped answering, by transition id:
    # reported if they turn up applied. Replaced, never mutated in place.
    _unknown_outcomes: dict[str, GateEvent] = {}

    def __init__(
        self,
        config: PromotionConfig | None = None,
        slo: SloConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        state_store: StateStore | None = None,
        window_store: WindowStore | None = None,
        meter_provider: MeterProvider | None = None,
        plan_timer: bool = True,
        webhooks: Iterable[Webhook] = (),
    ) -> None:
        config = PromotionConfig() if config is None else config
        slo = SloConfig() if slo is None else slo
        if not isinstance(config, PromotionConfig):
            raise ConfigError("config", config, "a PromotionConfig")
        if not isinstance(slo, SloConfig):
            raise ConfigError("slo", slo, "an SloConfig")
        self.config = config
        self.slo = slo
        self._objective = slo.latency_objective_seconds
        self.name = config.name
        self._settings = judge_settings(config, slo)
        self._clock = clock
        self._wall_clock = wall_clock
        self.plan: RolloutPlan | None = config.plan
        if config.store is not None and state_store is None and window_store is None:
            _require_a_named_rollout(config)
            state_store, window_store = open_stores(
                config.store, config, self._initial_state(config, wall_clock()), meter_provider
            )
        if state_store is None:
            state_store = InMemoryStateStore(self._initial_state(config, wall_clock()))
        if window_store is None:
            window_store = InMemoryWindowStore(config.rollback_window_seconds)
        self._store: StateStore = _checked(state_store, StateStore, "state_store")
        self._windows: WindowStore = _checked(window_store, WindowStore, "window_store")
        # Bakes, deadlines and event times on the store's clock (Redis's TIME
        # for a shared store): a process whose clock is off cannot move a step.
        self._wall_clock = self._store.clock(wall_clock)
        self._webhooks: list[Webhook] = []
        for webhook in webhooks:
            self.add_webhook(webhook)
        self._state = state_store.load()
        self._routing = routing_table(self._state, config)
        self._several_processes: str | None = None
        if not self._store.remote:
            logger.info(
                "rollout %r keeps its state in this process's memory: it dies with the "
                "process, and no other process sees it (share it with PromotionGate.from_url)",
                self.name,
            )
            several = several_workers()
            if several is not None:
                self.note_several_processes(several)
        self.stale_outcomes = 0
        self._burn_lock = threading.Lock()
        self._step_began(clock())
        # A shared store tells us of other processes' changes.
        self._store.subscribe(self._adopt_if_newer)
        self._rollback_callbacks: list[Callable[[RollbackEvent], Any]] = []
        self._promotion_callbacks: list[Callable[[PromotionEvent], Any]] = []
        self._evaluation_lock = threading.Lock()
        self._last_evaluation = clock()
        self._next_evaluation = self._last_evaluation + config.evaluation_interval_seconds
        samples = math.ceil(config.rollback_window_seconds / config.evaluation_interval_seconds)
        self._series: deque[HealthSample] = deque(maxlen=min(max(samples, 60), MAX_SAMPLES))
        self._last_sample = -math.inf
        self._telemetry = GateTelemetry(self, meter_provider)
        self._timer: PlanTimer | None = None
        if config.plan is not None and plan_timer:
            self._timer = PlanTimer(self, config.evaluation_interval_seconds)
            self._timer.ensure()
        _GATES.add(self)

    @staticmethod
    def _initial_state(config: PromotionConfig, now: float) -> GateState:
        flags = frozenset(config.feature_flags)
        if config.environment.name == PRODUCTION:
            return GateState(environment=config.environment, stable_flags=flags)
        position = None
        if config.plan is not None:  # a release configured in progress follows the plan
            index = config.plan.index_for(
                config.environment.name, config.environment.traffic_percent
            )
            position = PlanPosition(index, now, release_flags=tuple(sorted(flags)))
        return GateState(
            environment=config.environment, release_flags=flags, release=1, plan=position
        )

    # -- state ------------------------------------------------------------

    def _current(self) -> GateState:
        state = self._store.load()
        if state is not self._state:
            self._adopt(state)
        return state

    def _adopt_if_newer(self, state: GateState) -> None:
        if state is not self._state:
            self._adopt(state)
        if self._unknown_outcomes:
            self._report_if_applied(state)

    def _report_if_applied(self, state: GateState) -> None:
        """A change whose outcome was unknown turned up in the shared state:
        report it now, once (the follower's thread calls this)."""
        recent = state.history[-50:]
        for transition, event in list(self._unknown_outcomes.items()):
            if event not in recent or transition not in self._unknown_outcomes:
                continue
            self._unknown_outcomes = {
                k: v for k, v in self._unknown_outcomes.items() if k != transition
            }
            logger.warning("A change whose outcome was unknown was applied after all: %s", event)
            self._after_change(event)

    @classmethod
    def from_url(
        cls,
        url: str,
        config: PromotionConfig | None = None,
        slo: SloConfig | None = None,
        *,
        key_prefix: str | None = None,
        wait_replicas: int | None = None,
        transition_timeout: float = 5.0,
        **options: Any,
    ) -> PromotionGate:
        """A gate whose state and windows are shared through the store at ``url``:
        ``sqlite:///path/gate.db`` (every process on the host), ``redis://``
        (every process that reaches the Redis); the scheme picks the backend
        (``gate_middleware.stores.registry``). ``PromotionConfig(store=url)``
        with ``PromotionGate(config)`` does the same.

        Every process that uses the same store (and ``key_prefix``) and
        ``config.name`` shares one rollout, so the rollout must be named:
        ``PromotionConfig(name="checkout")`` (or an explicit ``key_prefix``).
        ``url`` may also be ``redis+cluster://host:port`` or
        ``redis+sentinel://host:port,host:port/service``. A state change
        gives up with ``PromotionError`` after ``transition_timeout`` seconds;
        ``wait_replicas`` (1 behind Sentinels) replicas confirm it first.
        Needs ``pip install "gate-middleware[redis]"``; see
        ``gate_middleware.stores.redis`` for what holds while Redis is down.
        """
        if key_prefix is None:
            _require_a_named_rollout(config)
        config = PromotionConfig() if config is None else config
        wall_clock = options.get("wall_clock", time.time)
        backend: dict[str, Any] = {"transition_timeout": transition_timeout}
        if key_prefix is not None:
            backend["key_prefix"] = key_prefix
        if wait_replicas is not None:
            backend["wait_replicas"] = wait_replicas
        state_store, window_store = open_stores(
            url,
            config,
            cls._initial_state(config, wall_clock()),
            options.get("meter_provider"),
            **backend,
        )
        return cls(config, slo, state_store=state_store, window_store=window_store, **options)

    def _adopt(self, state: GateState) -> None:
        new_step = state.step != self._state.step
        self._state = state
        self._routing = routing_table(state, self.config)
        if new_step:
            self._step_began(self._clock())

    def _step_began(self, now: float) -> None:
        """A new step: its evidence counts after the warm-up; the burn windows restart."""
        self._evidence_from = now + self.config.initial_delay_seconds
        with self._burn_lock:
            self._burn: deque[tuple[float, int, int]] = deque([(now, 0, 0)])

    def _transition(
        self, change: Callable[[GateState], tuple[GateState, Event] | None]
    ) -> tuple[GateState, Event] | None:
        """Apply ``change`` atomically; ``None`` from it means nothing to do.

        Each attempt carries a new random transition id. An attempt that the
        store holds after all (its reply was lost, and a retry re-read it) is
        this transition, reported once. Bounded: after the store's
        ``transition_timeout`` (5 s) of lost races, ``PromotionError``.
        """
        timeout = self._store.transition_timeout
        deadline = time.monotonic() + timeout
        attempts: dict[str, tuple[GateState, Event]] = {}
        pause = 0.001
        while True:
            state = self._current()
            made = attempts.get(state.transition)
            if made is not None:
                return made
            result = change(state)
            if result is None:
                return None
            new_state = replace(result[0], transition=secrets.token_hex(8))
            attempts[new_state.transition] = (new_state, result[1])
            try:
                done = self._store.compare_and_set(
                    state.version, new_state, expected_transition=state.transition
                )
            except OutcomeUnknownError:
                event = result[1]
                if event is not None:  # reported when the follower sees it applied
                    self._unknown_outcomes = {
                        **dict(list(self._unknown_outcomes.items())[-15:]),
                        new_state.transition: event,
                    }
                    self._report_if_applied(self._store.load())  # the follower may have seen it
                raise
            if done:
                self._adopt(new_state)
                if result[1] is not None:
                    self._after_change(result[1])
                return new_state, result[1]
            if time.monotonic() >= deadline:
                raise PromotionError(
                    f"nothing changed: the shared state changed under each of {len(attempts)} "
                    f"attempts in {timeout:g} s (another process keeps changing it); try again"
                )
            time.sleep(pause)  # let the other writer finish; never a busy loop
            pause = min(pause * 2, 0.05)

    @property
    def state(self) -> GateState:
        return self._current()

    @property
    def environment(self) -> Environment:
        return self._current().environment

    # -- routing and recording ---------------------------------------------

    def route_request(self, session_id: str) -> RoutingDecision:
        """Which path ``session_id`` takes and which flags it gets (no lock)."""
        return self._routing.route(session_id)

    def decision_for_variant(
        self, variant: str, *, reason: str, bucket: int = -1
    ) -> RoutingDecision:
        """The decision a session on ``variant`` gets now, without hashing.

        The middleware uses it for the QA override and to fail open to the
        stable path.
        """
        if variant not in VARIANTS:
            raise ConfigError("variant", variant, "'canary' or 'stable'")
        return self._routing.decision(variant, reason, bucket)

    def record_request_outcome(
        self,
        session_id: str,
        success: bool,
        duration: float | timedelta,
        *,
        variant: str | None = None,
        decision: RoutingDecision | None = None,
    ) -> None:
        """Count one request's outcome for the session's variant.

        ``duration`` is in seconds (or a ``timedelta``). Pass the
        ``decision`` that ``route_request`` returned for the request (best:
        an outcome routed under an earlier step or release is then dropped,
        not counted against the new one), or its ``variant`` ("canary" or
        "stable"), so the session is not hashed again.
        """
        seconds = _seconds(duration)
        if decision is not None:
            if not isinstance(decision, RoutingDecision):
                raise ConfigError("decision", decision, "a RoutingDecision from route_request")
            self.record_outcome(
                decision.variant, bool(success), seconds, decision.step, decision.bucket
            )
            return
        if variant is None:
            routed = self.route_request(session_id)
            self.record_outcome(routed.variant, bool(success), seconds, routed.step, routed.bucket)
            return
        if variant not in VARIANTS:
            raise ConfigError("variant", variant, "'canary', 'stable' or None")
        group = zlib.crc32(str(session_id).encode("utf-8", "surrogatepass"))
        self.record_outcome(variant, bool(success), seconds, -1, group)

    def record_outcome(
        self, variant: str, success: bool, seconds: float, step: int = -1, cluster: int = 0
    ) -> None:
        """``record_request_outcome`` without the argument checks, for callers
        that already hold a valid variant, a bool and a non-negative float
        (the middleware). ``step`` is the decision's step (-1: unknown, the
        outcome counts) and ``cluster`` its bucket (it groups the evidence
        by session)."""
        now = self._clock()
        if step >= 0 and step != self._routing.step:
            self.stale_outcomes += 1  # routed under another step or release
            return
        self._windows.record(
            variant,
            success,
            success and seconds <= self._objective,
            seconds,
            now,
            cluster,
            now >= self._evidence_from,
        )
        if now >= self._next_evaluation or now < self._last_evaluation:
            self._evaluate_on_schedule(now)

    def _evaluate_on_schedule(self, now: float) -> None:
        if not self._evaluation_lock.acquire(blocking=False):
            return  # another thread is evaluating right now
        # A clock that stepped back (now < the last evaluation) must not
        # suspend evaluation until it catches up again.
        if self._last_evaluation <= now < self._next_evaluation:
            self._evaluation_lock.release()
            return
        self._last_evaluation = now
        self._next_evaluation = now + self.config.evaluation_interval_seconds
        if self._store.remote:
            # A rollback through a shared store is network I/O: never on the
            # request's thread (an ASGI worker's event loop). The thread
            # releases the lock.
            try:
                run_once("gate-evaluate", self._evaluate_in_background)
            except BaseException:
                self._evaluation_lock.release()
                raise
            return
        try:
            self._evaluate(act=True)
        finally:
            self._evaluation_lock.release()

    def _evaluate_in_background(self) -> None:
        try:
            self._evaluate(act=True)
        except PromotionError as exc:  # the store logged the outage already
            logger.warning("Automatic evaluation could not change the shared state: %s", exc)
        except Exception:
            logger.exception("Automatic evaluation failed; the gate carries on")
        finally:
            self._evaluation_lock.release()

    # -- evaluation -------------------------------------------------------

    def _concurrent(self, environment: Environment) -> bool:
        """Whether stable sessions run beside the canary to compare it with."""
        if self.config.holdback_percent > 0:
            return True
        return environment.name == CANARY_ENV and environment.traffic_percent < 100.0

    def _burn_windows(
        self, canary: Evidence, now: float
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """(requests, bad) of the canary over the long and the short burn window.

        The long window is ``rollback_window_seconds``, the short one a
        twelfth of it (the SRE workbook's 1 h / 5 min pair, scaled); both
        are differences of the step's evidence between evaluations.
        """
        long_seconds = self.config.rollback_window_seconds
        short_seconds = long_seconds / 12
        with self._burn_lock:  # status, gauges and evaluations may read at once
            burn = self._burn
            last = burn[-1][0]
            if now - last >= self.config.evaluation_interval_seconds / 2 or now < last:
                burn.append((now, canary.requests, canary.bad))
            while len(burn) > 2 and burn[1][0] <= now - long_seconds:
                burn.popleft()
            moments = list(burn)

        def since(seconds: float) -> tuple[int, int]:
            start = moments[0]
            for moment in moments:
                if moment[0] > now - seconds:
                    break
                start = moment
            return canary.requests - start[1], canary.bad - start[2]

        return since(long_seconds), since(short_seconds)

    def _health(self, state: GateState) -> tuple[CanaryHealth, WindowStats, WindowStats]:
        now = self._clock()
        canary = self._windows.stats(CANARY, now)
        stable = self._windows.stats(STABLE, now)
        environment = state.environment
        if environment.name == PRODUCTION:
            return no_release(canary, stable), canary, stable
        canary_evidence = self._windows.evidence(CANARY)
        if self._concurrent(environment):
            holdback = self.config.holdback_percent > 0 and (
                environment.name == STAGING
                or environment.traffic_percent >= 100.0 - self.config.holdback_percent
            )
            judgement = judge(
                canary_evidence,
                self._windows.evidence(STABLE),
                self._settings,
                canary_window_compliance=canary.slo_compliance if canary.requests else None,
                comparison="holdback" if holdback else "production",
            )
        else:
            long_window, short_window = self._burn_windows(canary_evidence, now)
            judgement = judge_against_objective(
                canary_evidence, long_window, short_window, self._settings
            )
        return assess(environment.traffic_percent, canary, stable, judgement), canary, stable

    def health_snapshot(self) -> CanaryHealth:
        """The current ``CanaryHealth`` without acting on it (for gauges and dashboards)."""
        return self._health(self._current())[0]

    def _slo_status(
        self, state: GateState, health: CanaryHealth, canary: WindowStats, stable: WindowStats
    ) -> tuple[float, bool]:
        """(compliance, enough evidence): the canary's window while a release
        is in progress, overall in production."""
        if state.environment.name == PRODUCTION:
            requests = canary.requests + stable.requests
            good = canary.good + stable.good
            compliance = good / requests if requests else 0.0
            return compliance, requests >= self.config.min_requests
        compliance = canary.good / canary.requests if canary.requests else 0.0
        return compliance, health.sufficient_data

    def _evaluate(self, act: bool) -> tuple[CanaryHealth, float, bool]:
        state = self._current()
        health, canary, stable = self._health(state)
        compliance, enough = self._slo_status(state, health, canary, stable)
        if act:
            self._sample(state, health, compliance)
        in_release = state.environment.name != PRODUCTION
        if in_release and health.verdict == MONITOR:
            logger.warning(
                "Canary health score %.2f: %s", health.health_score, health.recommendation
            )
        if act and in_release and self.config.auto_rollback_enabled and health.verdict == ROLLBACK:
            reason = f"Canary health score {health.health_score:.2f}: {health.recommendation}"
            self._roll_back(state.release, reason, health, automatic=True)
        elif act and in_release and state.plan is not None:
            self._carry_out_plan(state, health)
        return health, compliance, enough

    # -- notifications ------------------------------------------------------

    def add_webhook(self, webhook: Webhook) -> Webhook:
        """Send every event to ``webhook`` (see ``gate_middleware.gate.webhooks``):
        the process that makes an event puts it once into the store's outbox;
        a durable one (SQLite) is shared by every process running the webhook
        and kept across restarts, so a delivery left by a process that exited
        is made by another, or by the next one to start."""
        if not isinstance(webhook, Webhook):
            raise ConfigError("webhook", webhook, "a gate_middleware.gate.webhooks.Webhook")
        webhook.attach(self._store.outbox())
        self._webhooks.append(webhook)
        return webhook

    def _after_change(self, event: GateEvent) -> None:
        """What follows each change this process made, written once (another
        process's changes are its own to report): a new step's windows start
        empty (fresh evidence for the new split); a rollback, or a release
        reaching staging or production, is counted and its callbacks called;
        the webhooks are told of every event."""
        if isinstance(event, RollbackEvent):
            if event.feature == "all":
                self._windows.clear()
            self._telemetry.count_rollback(event.environment.name, event.automatic)
            self._notify(self._rollback_callbacks, event)
        elif event.from_environment != event.to_environment:
            self._windows.clear()
            if event.to_environment.name in (STAGING, PRODUCTION):
                self._telemetry.count_promotion(event.to_environment.name)
                self._notify(self._promotion_callbacks, event)
        self._announce(event)

    def _announce(self, event: GateEvent) -> None:
        if not self._webhooks:
            return
        state = self._state
        extra = {
            "environment": state.environment.to_dict(),
            "plan": None if state.plan is None else state.plan.to_dict(),
        }
        payload = event.to_dict()
        for webhook in list(self._webhooks):
            try:
                webhook.send(self.name, payload, extra)
            except Exception:
                logger.exception("A webhook could not be queued; the gate carries on")

    def webhook_status(self) -> list[WebhookView]:
        return [webhook.status() for webhook in self._webhooks]

    def _sample(self, state: GateState, health: CanaryHealth, compliance: float) -> None:
        """Keep one health sample per evaluation interval (for charts)."""
        now = self._clock()
        if 0.0 <= now - self._last_sample < self.config.evaluation_interval_seconds / 2:
            return
        self._last_sample = now
        self._series.append(
            HealthSample(
                timestamp=self._wall_clock(),
                environment=state.environment.name,
                traffic_percent=state.environment.traffic_percent,
                health_score=health.health_score,
                canary_error_rate=health.canary_error_rate,
                production_error_rate=health.production_error_rate,
                canary_p99_latency=health.canary_p99_latency,
                production_p99_latency=health.production_p99_latency,
                canary_requests=health.canary_requests,
                production_requests=health.production_requests,
                slo_compliance=compliance,
            )
        )

    def get_health_series(self) -> list[HealthSample]:
        """Health samples taken at the gate's evaluations, oldest first (bounded)."""
        return list(self._series)

    def status(self, recent_events: int = 20) -> GateStatus:
        """Everything an operator looks at, computed now without acting on it."""
        state = self._current()
        health, canary, stable = self._health(state)
        compliance, enough = self._slo_status(state, health, canary, stable)
        return GateStatus(
            rollout=self.name,
            environment=state.environment,
            stable_flags=tuple(sorted(state.stable_flags)),
            release_flags=tuple(sorted(state.release_flags)),
            health=health,
            slo_compliance=compliance,
            slo_met=enough and compliance >= self.config.slo_threshold,
            canary=canary,
            stable=stable,
            recent_events=state.history[-recent_events:] if recent_events > 0 else (),
            config=self.config,
            slo=self.slo,
            store=self._store_status(),
            plan=self.plan_status(),
            webhooks=tuple(self.webhook_status()),
        )

    def monitor_canary_health(self) -> CanaryHealth:
        """Evaluate now: compute the health and roll back if a check fails."""
        return self._evaluate(act=True)[0]

    def check_slo_compliance(self) -> bool:
        """Evaluate now; ``True`` only when the SLO is met on enough evidence
        (``min_requests`` canary outcomes in the step; overall in production)."""
        _, compliance, enough = self._evaluate(act=True)
        return enough and compliance >= self.config.slo_threshold

    # -- state changes ----------------------------------------------------

    def promote(
        self, target: Environment, *, force: bool = False, actor: str = API_ACTOR
    ) -> Environment:
        """Promote the release to ``target``: Canary -> Staging -> Production.

        Refused with ``PromotionError`` (saying why) for any other path, or
        unless the judge's verdict is HEALTHY (enough evidence, no sign of a
        regression, the SLO met); ``force=True`` skips the checks (not the
        path rules). ``actor`` names who asked (kept in the history).
        """
        actor = validate_actor(actor)
        if not isinstance(target, Environment):
            raise ConfigError(
                "target", target, "an Environment (Environment.STAGING or Environment.PRODUCTION)"
            )
        state = self._current()
        source = state.environment
        if (source.name, target.name) not in _PROMOTION_PATHS:
            raise PromotionError(self._invalid_path(source, target))
        health, compliance, enough = self._evaluate(act=False)
        if not force:
            self._check_promotable(health, compliance, enough)

        def change(current: GateState) -> tuple[GateState, PromotionEvent]:
            if current.environment != source or current.release != state.release:
                raise PromotionError(
                    f"cannot promote to {target}: the gate changed to {current.environment} meanwhile"
                )
            event = PromotionEvent(
                source, target, self._utcnow(), "promote", force, health, actor=actor
            )
            step = current.step + 1
            plan = self._plan_after(current, target)
            if target.name == STAGING:
                return current.evolve(event, environment=target, step=step, plan=plan), event
            return (
                current.evolve(
                    event,
                    environment=target,
                    stable_flags=current.stable_flags | current.release_flags,
                    release_flags=frozenset(),
                    step=step,
                    plan=plan,
                ),
                event,
            )

        result = self._transition(change)
        if result is None:  # change() never declines; it raises instead
            return target
        if source.name == CANARY_ENV and target.name == PRODUCTION:
            logger.warning("Promoted directly from %s to production, skipping staging", source)
        else:
            logger.info("Promoted from %s to %s", source, target)
        return target

    @staticmethod
    def _invalid_path(source: Environment, target: Environment) -> str:
        valid = {
            CANARY_ENV: "staging or production",
            STAGING: "production",
            PRODUCTION: "none (start the next release with start_canary)",
        }[source.name]
        hint = ""
        if source.name == CANARY_ENV and target.name == CANARY_ENV:
            hint = "; use set_traffic_percent to ramp a canary"
        return (
            f"cannot promote from {source} to {target}: "
            f"valid targets from {source.name} are {valid}{hint}"
        )

    def _check_promotable(self, health: CanaryHealth, compliance: float, enough: bool) -> None:
        if not enough or not health.sufficient_data:
            raise PromotionError(
                f"Promotion refused: not enough data yet ({health.recommendation})"
            )
        if compliance < self.config.slo_threshold:
            raise PromotionError(
                f"Promotion refused: SLO compliance below threshold: "
                f"{compliance:.4f} < {self.config.slo_threshold}"
            )
        if health.verdict != HEALTHY:
            raise PromotionError(
                f"Promotion refused: health score {health.health_score:.2f}, "
                f"verdict {health.recommendation}"
            )

    def set_traffic_percent(self, traffic_percent: float, *, actor: str = API_ACTOR) -> Environment:
        """Ramp the canary to ``traffic_percent`` % of sessions (canary only)."""
        actor = validate_actor(actor)
        percent = validate_traffic_percent(traffic_percent)
        target = Environment.canary(percent)

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            if current.environment.name != CANARY_ENV:
                raise PromotionError(
                    f"cannot set traffic in {current.environment}: only a canary has a traffic "
                    "share (start one with start_canary)"
                )
            if current.environment == target:
                return None
            event = PromotionEvent(
                current.environment, target, self._utcnow(), "set_traffic", actor=actor
            )
            plan = self._plan_after(current, target)
            return current.evolve(
                event, environment=target, step=current.step + 1, plan=plan
            ), event

        result = self._transition(change)
        if result is not None:
            logger.info("Canary traffic set to %g%%", percent)
        return target

    def start_canary(
        self,
        traffic_percent: float | None = None,
        feature_flags: Iterable[str] = (),
        *,
        actor: str = API_ACTOR,
    ) -> Environment:
        """Begin the next release from production: ``feature_flags`` on for
        ``traffic_percent`` % of sessions.

        With a rollout plan the release follows it from the step at
        ``traffic_percent`` (``None``: the plan's first step).
        """
        actor = validate_actor(actor)
        if traffic_percent is None:
            if self.plan is None:
                raise ConfigError(
                    "traffic_percent", None, "a percentage from 0 to 100 (the gate has no plan)"
                )
            traffic_percent = self.plan.steps[0].traffic_percent
        percent = validate_traffic_percent(traffic_percent)
        flags = frozenset(validate_flag_names(feature_flags))
        target = Environment.canary(percent)

        def change(current: GateState) -> tuple[GateState, PromotionEvent]:
            if current.environment.name != PRODUCTION:
                raise PromotionError(
                    f"cannot start a canary: a release is already in {current.environment}; "
                    "promote it or roll it back first"
                )
            event = PromotionEvent(
                current.environment, target, self._utcnow(), "start_canary", actor=actor
            )
            position = None
            if self.plan is not None:
                position = PlanPosition(
                    self.plan.index_for(CANARY_ENV, percent),
                    self._wall_clock(),
                    release_flags=tuple(sorted(flags)),
                )
            state = current.evolve(
                event,
                environment=target,
                release_flags=flags,
                release=current.release + 1,
                step=current.step + 1,
                plan=position,
            )
            return state, event

        self._transition(change)
        logger.info("Canary started at %g%% with flags %s", percent, sorted(flags))
        return target

    def rollback(self, reason: str, *, actor: str = API_ACTOR) -> RollbackEvent:
        """Roll the release in progress back to production (manual); its plan
        ends ``aborted``."""
        validate_reason(reason)
        actor = validate_actor(actor)
        state = self._current()
        if state.environment.name == PRODUCTION:
            raise PromotionError(
                "cannot roll back: no release in progress (the gate is in production)"
            )
        health = self._health(state)[0]
        event = self._roll_back(state.release, reason, health, automatic=False, actor=actor)
        if event is None:
            raise PromotionError("cannot roll back: the release ended meanwhile")
        return event

    def _roll_back(
        self,
        release: int,
        reason: str,
        health: CanaryHealth,
        *,
        automatic: bool,
        actor: str = GATE_ACTOR,
    ) -> RollbackEvent | None:
        def change(current: GateState) -> tuple[GateState, RollbackEvent] | None:
            if current.release != release or current.environment.name == PRODUCTION:
                return None  # already rolled back (or promoted) by someone else
            event = RollbackEvent(
                reason, self._utcnow(), current.environment, "all", health, automatic, actor
            )
            plan = current.plan
            if plan is not None:
                status = plans.ROLLED_BACK if automatic else plans.ABORTED
                plan = replace(plan, status=status, reason=reason)
            state = current.evolve(
                event,
                environment=Environment.PRODUCTION,
                release_flags=frozenset(),
                step=current.step + 1,
                plan=plan,
            )
            return state, event

        result = self._transition(change)
        if result is None:
            return None
        if automatic:
            logger.error("Triggering automatic rollback: %s", reason)
        else:
            logger.warning("Manual rollback: %s", reason)
        return result[1]

    def enable_feature(self, name: str) -> None:
        """Turn a flag on: for canary sessions while a release is in
        progress, for everyone in production."""
        validate_flag_name(name, "feature")

        def change(current: GateState) -> tuple[GateState, None] | None:
            if name in current.stable_flags or name in current.release_flags:
                return None
            if current.environment.name == PRODUCTION:
                return current.evolve(stable_flags=current.stable_flags | {name}), None
            return current.evolve(release_flags=current.release_flags | {name}), None

        if self._transition(change) is not None:
            logger.info("Feature flag enabled: %s", name)

    def disable_feature(self, name: str, *, actor: str = API_ACTOR) -> RollbackEvent:
        """Take a flag away from every session at once; records a RollbackEvent."""
        validate_flag_name(name, "feature")
        actor = validate_actor(actor)
        health = self.health_snapshot()

        def change(current: GateState) -> tuple[GateState, RollbackEvent]:
            if name not in current.stable_flags and name not in current.release_flags:
                enabled = sorted(current.stable_flags | current.release_flags)
                raise ConfigError("feature", name, f"one of the enabled flags {enabled}")
            event = RollbackEvent(
                f"Feature flag disabled: {name}",
                self._utcnow(),
                current.environment,
                name,
                health,
                actor=actor,
            )
            state = current.evolve(
                event,
                stable_flags=current.stable_flags - {name},
                release_flags=current.release_flags - {name},
            )
            return state, event

        result = self._transition(change)
        if result is None:  # change() never declines; it raises instead
            raise PromotionError(f"cannot disable {name!r}")
        logger.info("Feature flag disabled: %s", name)
        return result[1]

    def is_feature_enabled(self, name: str) -> bool:
        """Whether ``name`` is on for anyone (stable, or for canary sessions)."""
        state = self._current()
        return name in state.stable_flags or name in state.release_flags

    # -- history and callbacks -------------------------------------------

    def get_rollback_history(self) -> list[RollbackEvent]:
        return [e for e in self._current().history if isinstance(e, RollbackEvent)]

    def get_history(self) -> list[GateEvent]:
        """Every event: starts, traffic changes, promotions and rollbacks."""
        return list(self._current().history)

    def on_rollback(self, callback: Callback) -> Callback:
        """Call ``callback(event)`` after every rollback (usable as a decorator)."""
        self._rollback_callbacks.append(callback)
        return callback

    def on_promotion(self, callback: Callback) -> Callback:
        """Call ``callback(event)`` after every promotion (usable as a decorator)."""
        self._promotion_callbacks.append(callback)
        return callback

    @staticmethod
    def _notify(callbacks: list[Callable[[Any], Any]], event: GateEvent) -> None:
        for callback in list(callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("A %s callback raised; the gate carries on", event.kind)

    def _store_status(self) -> StoreView:
        """The stores' health: "ok", "unreachable" or "corrupt" (the worst), and why."""
        if not (self._store.remote or self._windows.remote):
            return {"kind": "memory", "status": "ok"}
        found = [self._store.status(), self._windows.status()]
        problems = [detail for _, detail in found if detail]
        names = {name for name, _ in found}
        worst: StoreCondition = "ok"
        for condition in ("unreachable", "corrupt"):  # the worse last
            if condition in names:
                worst = condition
        return {"kind": "shared", "status": worst, "problems": problems}

    def close(self) -> None:
        """Stop the background work: the plan's timer, the webhooks' senders
        and a shared gate's follower threads."""
        if self._timer is not None:
            self._timer.close()
        for webhook in self._webhooks:
            webhook.close()
        self._store.close()
        self._windows.close()

    @property
    def shared(self) -> bool:
        """Whether the state lives in a store other processes share (SQLite,
        Redis), rather than in this process's memory."""
        return self._store.remote

    @property
    def decides_alone(self) -> str | None:
        """Why a change made through this gate would hold in this process only,
        or ``None``: set when a gate that keeps its state in memory can tell
        that it is one of several processes. The admin API then refuses
        changes (409) with this text instead of answering for one worker."""
        return self._several_processes

    def note_several_processes(self, reason: str) -> None:
        """This gate serves one of several processes (``reason``). For a gate
        that keeps its state in memory, each process then decides alone: log
        it once, with the fix. A shared store needs nothing."""
        if self._several_processes is not None or self._store.remote:
            return
        self._several_processes = (
            f"rollout {self.name!r} keeps its state in this process's memory, and this is one "
            f"of several processes ({reason}): each process decides alone, a change made "
            "through one reaches that one only, and a restarted process starts again from its "
            "config. Share the rollout: PromotionGate.from_url('sqlite:///path/gate.db', config) "
            "for the processes of one host, or a redis:// URL across hosts"
        )
        logger.warning("%s", self._several_processes)

    def _after_fork(self) -> None:
        """In a forked child: new locks for the gate and its stores."""
        self.note_several_processes(
            f"process {os.getpid()} was forked from {os.getppid()} after the gate was built "
            "(gunicorn --preload, multiprocessing)"
        )
        self._evaluation_lock = threading.Lock()
        self._burn_lock = threading.Lock()
        self._store.after_fork()
        self._windows.after_fork()
        for webhook in self._webhooks:
            webhook.after_fork()
        if self._timer is not None:
            self._timer.ensure()  # threads do not survive a fork; started once all is fresh

    def _utcnow(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    def __repr__(self) -> str:
        return f"<PromotionGate {self.name!r} {self._state.environment}>"


PromotionGateManager = PromotionGate

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
