"""``PromotionGate``: routes sessions, records outcomes, promotes and rolls back.

One gate object is shared by every request of an app. Routing reads an
immutable snapshot and takes no lock; recording takes one short lock inside
the window store; state changes go through the state store's
compare-and-set, so two threads that detect the same failure at the same
moment make exactly one rollback.

The gate evaluates itself: ``record_request_outcome`` asks the judge at
most once every ``evaluation_interval_seconds`` of the injected clock (no
background thread), so an app that only records outcomes still gets its
automatic rollback. The judge reads the evidence of the current *step*
(every start, traffic change, promotion and rollback begins one); outcomes
routed under another step are dropped and counted (``stale_outcomes``).

With a rollout plan (``PromotionConfig.plan``) the gate also moves the
release forward by itself: each evaluation asks ``gate_middleware.domain.plan``
what to do next and carries it out through the same compare-and-set, so
with a shared store exactly one process makes each step. A daemon thread
per gate (``gate-plan``) evaluates every ``evaluation_interval_seconds``
too, so a quiet night does not freeze the plan; ``close()`` stops it.

The front wires four parts and keeps the commands: ``transitions`` (the
state, compare-and-set and what follows each change), ``evaluation`` (the
schedule and the judge), ``autopilot`` (the plan) and ``telemetry``.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from opentelemetry.metrics import MeterProvider

from gate_middleware.domain import plan as plans
from gate_middleware.domain.clock import Clock, clock_readings
from gate_middleware.domain.codec import config_differences
from gate_middleware.domain.config import (
    PromotionConfig,
    SloConfig,
    validate_flag_name,
    validate_flag_names,
)
from gate_middleware.domain.environment import (
    CANARY_STAGE,
    PRODUCTION,
    STAGING,
    Environment,
    validate_traffic_percent,
)
from gate_middleware.domain.naming import validate_reason
from gate_middleware.domain.plan import PlanPosition, RolloutPlan
from gate_middleware.domain.routing import (
    BUCKETS,
    VARIANTS,
    RoutingDecision,
    RoutingTable,
    canary_threshold,
)
from gate_middleware.domain.state import (
    GateEvent,
    GateState,
    GateStatus,
    HealthSample,
    MetricView,
    PromotionEvent,
    RollbackEvent,
    StoreView,
    WebhookView,
    this_process,
)
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.gate.autopilot import (
    API_ACTOR,
    GATE_ACTOR,
    Autopilot,
    PlanTimer,
    validate_actor,
)
from gate_middleware.gate.evaluation import Evaluation
from gate_middleware.gate.telemetry import GateTelemetry
from gate_middleware.gate.tracking import MetricTracker, metric_checks, metric_views
from gate_middleware.gate.transitions import AfterChange, Transitions, event_time
from gate_middleware.gate.webhooks import Webhook
from gate_middleware.gate.workers import several_workers
from gate_middleware.judge.guardrails import with_metric_checks
from gate_middleware.judge.statistics import DEFAULT_CHECKS, ROLLBACK, Check
from gate_middleware.judge.verdict import CanaryHealth
from gate_middleware.stores import (
    StateStore,
    StoreCondition,
    TrackingWindowStore,
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

_PROMOTION_PATHS = {(CANARY_STAGE, STAGING), (STAGING, PRODUCTION), (CANARY_STAGE, PRODUCTION)}


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
    salt = rollout_salt(config)
    return f"{salt}#{release}" if config.cohort == "release" else salt


def rollout_salt(config: PromotionConfig) -> str:
    """What the rollout routes by, before any release suffix: ``config.salt``,
    or its name."""
    return config.salt if config.salt is not None else config.name


def routing_table(
    state: GateState, config: PromotionConfig, tracker: MetricTracker | None = None
) -> RoutingTable:
    """What routing needs from ``state``, computed once per state change."""
    environment = state.environment
    holdback = config.holdback_percent
    limit = 100.0 - holdback
    threshold = canary_threshold(min(environment.traffic_percent, limit))
    stable = tuple(sorted(state.stable_flags))
    canary = tuple(sorted(state.stable_flags | state.release_flags))
    if state.retired:  # no longer served: every flag off, on every path
        threshold = 0
        stable = canary = ()
        reasons = ("retired: the rollout is not served, its flags are off",) * 2
    elif environment.name == PRODUCTION:
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
        tracker,
        tracker is not None and tracker.sampling,
        config.name,
    )


class PromotionGate:
    """The promotion gate of one rollout (``PromotionGateManager`` is the same class).

    ``clock`` is the one clock everything time-based reads
    (``gate_middleware.Clock``: ``monotonic()`` for windows and evaluations,
    ``time()`` for bakes, deadlines and event times); a test passes a
    ``ManualClock`` and moves both with ``advance``. A bare callable is read
    as the monotonic clock, beside ``wall_clock`` (``time.time``); without
    one, the host's clocks (``SystemClock``). ``state_store`` and
    ``window_store`` default to this process's memory. ``meter_provider``
    receives the gate's instruments (the global one by default). ``checks``
    are what the judge tests the canary on against production
    (``gate_middleware.judge.statistics.Check``; their shares of
    ``false_rollback_rate`` sum to 1): errors, latency and the SLO by default.
    """

    def __init__(
        self,
        config: PromotionConfig | None = None,
        slo: SloConfig | None = None,
        *,
        clock: Clock | Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
        state_store: StateStore | None = None,
        window_store: WindowStore | None = None,
        meter_provider: MeterProvider | None = None,
        plan_timer: bool = True,
        webhooks: Iterable[Webhook] = (),
        checks: Sequence[Check] = DEFAULT_CHECKS,
    ) -> None:
        config = PromotionConfig() if config is None else config
        slo = SloConfig() if slo is None else slo
        if not isinstance(config, PromotionConfig):
            raise ConfigError("config", config, "a PromotionConfig")
        if not isinstance(slo, SloConfig):
            raise ConfigError("slo", slo, "an SloConfig")
        self.config = config
        self.slo = slo
        self.name = config.name
        clock, wall_clock = clock_readings(clock, wall_clock)
        self._clock = clock
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
        # A store that keeps business metrics (and hears of other processes' steps).
        self._tracking: TrackingWindowStore | None = (
            self._windows
            if isinstance(self._windows, TrackingWindowStore) and self._windows.tracks_metrics
            else None
        )
        if config.metrics and self._tracking is None:
            raise ConfigError(
                "window_store",
                type(self._windows).__name__,
                "a TrackingWindowStore whose tracks_metrics is true (gate_middleware.stores) "
                f"for metrics={[metric.name for metric in config.metrics]}",
            )
        checks = with_metric_checks(checks, metric_checks(config.metrics))
        self._tracker = MetricTracker(
            self.name,
            config.metrics,
            self._count_metric,
            lambda: self._routing.step,
        )
        # Bakes, deadlines and event times on the store's clock (Redis's TIME
        # for a shared store): a process whose clock is off cannot move a step.
        self._wall_clock = self._store.clock(wall_clock)
        self._effects = AfterChange(
            self.name,
            self._windows,
            GateTelemetry(self, meter_provider, metrics=bool(config.metrics)),
            self._step_metric_figures,
        )
        self._transitions = Transitions(
            self._store,
            self._adopted,
            self._effects,
            lambda state: self._evaluation.step_evidence(state),
        )
        self._routing = routing_table(self._transitions.state, config, self._tracker)
        self._retired = self._transitions.state.retired
        self._evaluation = Evaluation(
            config,
            slo,
            self._windows,
            self._transitions.current,
            self._act,
            clock=clock,
            wall_clock=self._wall_clock,
            remote=self._store.remote,
            checks=checks,
        )
        self._autopilot = Autopilot(
            config.plan,
            config,
            self._windows,
            self._transitions,
            self._evaluation,
            self.rollback,
            self._wall_clock,
        )
        for webhook in webhooks:
            self.add_webhook(webhook)
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
        else:
            self._note_config_difference(config, wall_clock())
        self.stale_outcomes = 0
        #: Set by a ``Rollouts`` set this gate serves in: the rollout a flag
        #: belongs to there (``None``: no other), so that no change of this
        #: gate turns on another rollout's flag.
        self.flag_owner: Callable[[str], str | None] | None = None
        # A shared store tells us of other processes' changes.
        self._store.subscribe(self._transitions.adopt_if_newer)
        self._timer: PlanTimer | None = None
        if config.plan is not None and plan_timer:
            self._timer = PlanTimer(self, config.evaluation_interval_seconds)
            self._timer.ensure()
        _GATES.add(self)
        logger.info("%s", self._describe())

    def _describe(self) -> str:
        """One line for the log at start: what this process serves, from where."""
        state = self._state
        plan = self.plan
        if plan is None:
            planned = "no plan"
        else:
            labels = " -> ".join(step.label for step in plan.stages)
            at = "" if state.plan is None else f", at step {state.plan.index + 1}"
            planned = f"plan {labels}{at}"
        return (
            f"rollout {self.name!r} in process {this_process()}: {state.environment}, "
            f"release {state.release}, state in {type(self._store).__name__}, {planned}"
        )

    def _note_config_difference(self, config: PromotionConfig, now: float) -> None:
        """A shared rollout still as its first process seeded it, from another
        config than this process's: one ``config_difference`` event in the
        history (the first such process records it), so the audit trail shows
        that the processes disagree; every process follows the shared state."""
        differences = config_differences(self._initial_state(config, now), self._state)
        if self._state.version != 0 or not differences:
            return
        reason = (
            f"process {this_process()} is configured with another {', '.join(differences)}; "
            "it follows the shared state"
        )

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            if current.version != 0:
                return None  # another process recorded it, or the rollout moved on
            event = PromotionEvent(
                current.environment,
                current.environment,
                event_time(self._wall_clock),
                "config_difference",
                reason=reason,
                actor=GATE_ACTOR,
            )
            return current.evolve(event), event

        try:
            self._transitions.apply(change)
        except PromotionError as exc:  # the store refuses changes now: the log says it
            logger.warning("rollout %r: %s (not recorded: %s)", self.name, reason, exc)

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
        _, wall_clock = clock_readings(options.get("clock"), options.get("wall_clock"))
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

    # -- state ------------------------------------------------------------

    def _adopted(self, state: GateState, new_step: bool) -> None:
        """This process took up ``state``: route by it; a new step's evidence starts now."""
        self._routing = routing_table(state, self.config, self._tracker)
        self._retired = state.retired
        if new_step:
            self._evaluation.step_began(self._clock())
            if self._tracking is not None:
                # What this process holds of the last step (another process
                # may have made the change) is not the new step's.
                self._tracking.step_began()

    def _count_metric(self, variant: str, session: int, metric: str, amount: int) -> None:
        if self._tracking is not None and self._evaluation.counting():
            self._tracking.track(variant, session, metric, amount)

    def _current(self) -> GateState:
        return self._transitions.current()

    @property
    def _state(self) -> GateState:
        """The state this process last saw (no store read)."""
        return self._transitions.state

    @property
    def _unknown_outcomes(self) -> dict[str, GateEvent]:
        """Changes whose outcome a shared store did not report, by transition id."""
        return self._transitions.unknown_outcomes

    @property
    def plan(self) -> RolloutPlan | None:
        """The rollout plan the release follows (``PromotionConfig.plan``)."""
        return self._autopilot.plan

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
        route: str | None = None,
    ) -> None:
        """Count one request's outcome for the session's variant.

        ``duration`` is in seconds (or a ``timedelta``). Pass the
        ``decision`` that ``route_request`` returned for the request (best:
        an outcome routed under an earlier step or release is then dropped,
        not counted against the new one), or its ``variant`` ("canary" or
        "stable"), so the session is not hashed again. ``route`` is the
        request's route template (``/items/{item_id}``, not the path: a
        path per item would spread one endpoint over many slots), when the
        caller knows it: the judge also tests each route slot's errors.
        """
        seconds = _seconds(duration)
        if route is not None and not isinstance(route, str):
            raise ConfigError("route", route, "a route template (str) or None")
        if decision is not None:
            if not isinstance(decision, RoutingDecision):
                raise ConfigError("decision", decision, "a RoutingDecision from route_request")
            if decision.parts:  # a Rollouts set's request decision: this rollout's own
                decision = decision.rollouts.get(self.name, decision)
            if decision.rollout and decision.rollout != self.name:
                raise ConfigError(
                    "decision",
                    f"rollout {decision.rollout!r}'s decision",
                    f"a decision of rollout {self.name!r} (or a request's under its Rollouts set)",
                )
            self.record_outcome(
                decision.variant,
                bool(success),
                seconds,
                decision.step,
                decision.bucket,
                route,
                decision.sample,
            )
            return
        if variant is None:
            routed = self.route_request(session_id)
            self.record_outcome(
                routed.variant,
                bool(success),
                seconds,
                routed.step,
                routed.bucket,
                route,
                routed.sample,
            )
            return
        if variant not in VARIANTS:
            raise ConfigError("variant", variant, "'canary', 'stable' or None")
        group = zlib.crc32(str(session_id).encode("utf-8", "surrogatepass"))
        self.record_outcome(variant, bool(success), seconds, -1, group, route)

    def record_outcome(
        self,
        variant: str,
        success: bool,
        seconds: float,
        step: int = -1,
        cluster: int = 0,
        route: str | None = None,
        session: int = -1,
    ) -> None:
        """``record_request_outcome`` without the argument checks, for callers
        that already hold a valid variant, a bool and a non-negative float
        (the middleware). ``step`` is the decision's step (-1: unknown, the
        outcome counts), ``cluster`` its bucket (it groups the evidence
        by session), ``route`` the route template, when known, and
        ``session`` the decision's ``sample`` key (-1: none)."""
        if step >= 0 and step != self._routing.step:
            self.stale_outcomes += 1  # routed under another step or release
            return
        if self._retired:
            return  # not served: nothing to judge
        self._evaluation.record(variant, success, seconds, cluster, route, session)

    def track(self, session_id: str, metric: str, value: float = 1.0) -> None:
        """Report the business metric ``metric`` for the session ``session_id``
        outside a request (a background job, a payment callback): counted for
        the variant the session is routed to now (``RoutingDecision.track``
        inside a request). ``value``: its amount, 1 by default. A metric the
        config does not define is counted and ignored, with one warning."""
        if not isinstance(session_id, str):
            raise ConfigError("session_id", session_id, "a session id (str)")
        self._tracker(self.route_request(session_id), metric, value)

    def _act(self, state: GateState, health: CanaryHealth) -> None:
        """What a verdict leads to, while a release is in progress: a rollback
        (``auto_rollback_enabled``), else the plan's next step; nothing
        while the rollout is retired."""
        if state.retired:
            return
        if self.config.auto_rollback_enabled and health.verdict == ROLLBACK:
            reason = f"Canary health score {health.health_score:.2f}: {health.recommendation}"
            self._roll_back(state.release, reason, health, automatic=True)
        elif state.plan is not None:
            self._autopilot.carry_out(state, health)

    def health_snapshot(self) -> CanaryHealth:
        """The current ``CanaryHealth`` without acting on it (for gauges and dashboards)."""
        return self._evaluation.health(self._current())[0]

    # -- notifications ------------------------------------------------------

    def add_webhook(self, webhook: Webhook) -> Webhook:
        """Send every event to ``webhook`` (see ``gate_middleware.gate.webhooks``):
        the process that makes an event puts it once into the store's outbox;
        a durable one (SQLite) is shared by every process running the webhook
        and kept across restarts, so a delivery left by a process that exited
        is made by another, or by the next one to start."""
        return self._effects.add_webhook(webhook, self._store)

    def webhook_status(self) -> list[WebhookView]:
        return [webhook.status() for webhook in self._effects.webhooks]

    def get_health_series(self) -> list[HealthSample]:
        """Health samples taken at the gate's evaluations, oldest first (bounded)."""
        return self._evaluation.series()

    def status(self, recent_events: int = 20) -> GateStatus:
        """Everything an operator looks at, computed now without acting on it."""
        state = self._current()
        health, canary, stable = self._evaluation.health(state)
        compliance, enough = self._evaluation.slo_figures(state, health, canary, stable)
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
            store=self.store_status(),
            plan=self.plan_status(),
            webhooks=tuple(self.webhook_status()),
            metrics=self._metric_figures(state),
            undefined_metrics=self._tracker.undefined_counts(),
            release=state.release,
            retired=state.retired,
        )

    def metric_figures(self) -> tuple[MetricView, ...]:
        """Each business metric's figures in the current step (none in production)."""
        return self._metric_figures(self._current())

    def _metric_figures(self, state: GateState) -> tuple[MetricView, ...]:
        if state.environment.name == PRODUCTION:
            return ()
        return self._step_metric_figures()

    def _step_metric_figures(self) -> tuple[MetricView, ...]:
        """The figures of the step's evidence, whatever the state (a rollback's
        webhooks read them as the rollback is made)."""
        if not self.config.metrics:
            return ()
        return metric_views(self.config.metrics, *self._evaluation.evidence())

    def monitor_canary_health(self) -> CanaryHealth:
        """Evaluate now: compute the health and roll back if a check fails."""
        return self._evaluation.evaluate(act=True)[0]

    def check_slo_compliance(self) -> bool:
        """Evaluate now; ``True`` only when the SLO is met on enough evidence
        (``min_requests`` canary outcomes in the step; overall in production)."""
        _, compliance, enough = self._evaluation.evaluate(act=True)
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
        health = self._evaluation.evaluate(act=False)[0]
        if not force:
            self._evaluation.require_promotable(health)

        def change(current: GateState) -> tuple[GateState, PromotionEvent]:
            if current.environment != source or current.release != state.release:
                raise PromotionError(
                    f"cannot promote to {target}: the gate changed to {current.environment} meanwhile"
                )
            event = PromotionEvent(
                source, target, event_time(self._wall_clock), "promote", force, health, actor=actor
            )
            step = current.step + 1
            plan = self._autopilot.plan_after(current, target)
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

        result = self._transitions.apply(change)
        if result is None:  # change() never declines; it raises instead
            return target
        if source.name == CANARY_STAGE and target.name == PRODUCTION:
            logger.warning("Promoted directly from %s to production, skipping staging", source)
        else:
            logger.info("Promoted from %s to %s", source, target)
        return target

    @staticmethod
    def _invalid_path(source: Environment, target: Environment) -> str:
        valid = {
            CANARY_STAGE: "staging or production",
            STAGING: "production",
            PRODUCTION: "none (start the next release with start_canary)",
        }[source.name]
        hint = ""
        if source.name == CANARY_STAGE and target.name == CANARY_STAGE:
            hint = "; use set_traffic_percent to ramp a canary"
        return (
            f"cannot promote from {source} to {target}: "
            f"valid targets from {source.name} are {valid}{hint}"
        )

    def set_traffic_percent(self, traffic_percent: float, *, actor: str = API_ACTOR) -> Environment:
        """Ramp the canary to ``traffic_percent`` % of sessions (canary only)."""
        actor = validate_actor(actor)
        percent = validate_traffic_percent(traffic_percent)
        target = Environment.canary(percent)

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            if current.environment.name != CANARY_STAGE:
                raise PromotionError(
                    f"cannot set traffic in {current.environment}: only a canary has a traffic "
                    "share (start one with start_canary)"
                )
            if current.environment == target:
                return None
            event = PromotionEvent(
                current.environment,
                target,
                event_time(self._wall_clock),
                "set_traffic",
                actor=actor,
            )
            plan = self._autopilot.plan_after(current, target)
            return current.evolve(
                event, environment=target, step=current.step + 1, plan=plan
            ), event

        result = self._transitions.apply(change)
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
        for flag in sorted(flags):
            self._check_flag_is_ours(flag, "feature_flags")
        target = Environment.canary(percent)

        def change(current: GateState) -> tuple[GateState, PromotionEvent]:
            if current.environment.name != PRODUCTION:
                raise PromotionError(
                    f"cannot start a canary: a release is already in {current.environment}; "
                    "promote it or roll it back first"
                )
            already = sorted(flags & current.stable_flags)
            if already:
                # On for everyone already: a release of it would test nothing, and the
                # status would list it twice.
                raise ConfigError(
                    "feature_flags",
                    already,
                    "flags not yet on for everyone (these are stable: disable one first to "
                    "release it again)",
                )
            event = PromotionEvent(
                current.environment,
                target,
                event_time(self._wall_clock),
                "start_canary",
                actor=actor,
            )
            position = None
            if self.plan is not None:
                position = PlanPosition(
                    self.plan.index_for(CANARY_STAGE, percent),
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

        self._transitions.apply(change)
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
        health = self._evaluation.health(state)[0]
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
                reason,
                event_time(self._wall_clock),
                current.environment,
                "all",
                health,
                automatic,
                actor,
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

        result = self._transitions.apply(change)
        if result is None:
            return None
        if automatic:
            logger.error("Triggering automatic rollback: %s", reason)
        else:
            logger.warning("Manual rollback: %s", reason)
        return result[1]

    def enable_feature(self, name: str, *, actor: str = API_ACTOR) -> PromotionEvent | None:
        """Turn a flag on: for canary sessions while a release is in
        progress, for everyone in production. Records a PromotionEvent
        (action "enable_flag"); ``None`` when the flag was on already."""
        validate_flag_name(name, "feature")
        self._check_flag_is_ours(name, "feature")
        actor = validate_actor(actor)

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            if name in current.stable_flags or name in current.release_flags:
                return None
            event = PromotionEvent(
                current.environment,
                current.environment,
                event_time(self._wall_clock),
                "enable_flag",
                reason=f"Feature flag enabled: {name}",
                actor=actor,
            )
            if current.environment.name == PRODUCTION:
                return current.evolve(event, stable_flags=current.stable_flags | {name}), event
            return current.evolve(event, release_flags=current.release_flags | {name}), event

        result = self._transitions.apply(change)
        if result is None:
            return None
        logger.info("Feature flag enabled: %s (by %s)", name, actor)
        return result[1]

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
                event_time(self._wall_clock),
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

        result = self._transitions.apply(change)
        if result is None:  # change() never declines; it raises instead
            raise PromotionError(f"cannot disable {name!r}")
        logger.info("Feature flag disabled: %s (by %s)", name, actor)
        return result[1]

    def _check_flag_is_ours(self, flag: str, field: str) -> None:
        """A ``ConfigError`` when ``flag`` belongs to another rollout of the
        ``Rollouts`` set this gate serves in."""
        owner = self.flag_owner(flag) if self.flag_owner is not None else None
        if owner is not None and owner != self.name:
            raise ConfigError(
                field,
                flag,
                f"a flag of rollout {self.name!r}: {flag!r} belongs to rollout {owner!r} "
                "of the same Rollouts set",
            )

    def retire(
        self, reason: str = "retired by an operator", *, actor: str = API_ACTOR
    ) -> PromotionEvent:
        """Stop serving this rollout, in every process that shares its store
        and across restarts: its flags are off for everyone (a ``Rollouts``
        set answers them off), its outcomes are not recorded and nothing is
        judged, until ``reinstate``. Records a ``retire`` event; a
        ``PromotionError`` when it is retired already."""
        return self._set_retired(True, reason, actor)

    def reinstate(
        self, reason: str = "reinstated by an operator", *, actor: str = API_ACTOR
    ) -> PromotionEvent:
        """Serve a retired rollout again, where it stood (a fresh step, so the
        judge starts on new evidence); a ``PromotionError`` when it is served."""
        return self._set_retired(False, reason, actor)

    def _set_retired(self, retired: bool, reason: str, actor: str) -> PromotionEvent:
        actor = validate_actor(actor)
        validate_reason(reason)
        action = "retire" if retired else "reinstate"

        def change(current: GateState) -> tuple[GateState, PromotionEvent]:
            if current.retired == retired:
                raise PromotionError(
                    f"rollout {self.name!r} is {'retired' if retired else 'served'} already: "
                    f"nothing to {action}"
                )
            event = PromotionEvent(
                current.environment,
                current.environment,
                event_time(self._wall_clock),
                action,
                reason=reason,
                actor=actor,
            )
            position = current.plan
            if not retired and position is not None:
                # The plan's clocks ran while it was retired: its step starts
                # afresh (bake, limits, approval), as its evidence does.
                now = self._wall_clock()
                position = replace(
                    position,
                    entered_at=now,
                    resumed_at=now,
                    held=False,
                    awaiting=False,
                    approved=False,
                )
            state = current.evolve(event, retired=retired, step=current.step + 1, plan=position)
            return state, event

        result = self._transitions.apply(change)
        if result is None:  # change() never declines; it raises instead
            raise PromotionError(f"cannot {action} rollout {self.name!r}")
        logger.info("rollout %r: %s (%s, by %s)", self.name, action, reason, actor)
        return result[1]

    def _record(self, action: str, reason: str, actor: str) -> PromotionEvent:
        """Record an event that changes nothing else (the rollout was
        created at run time, by ``actor``), in its history everywhere."""

        def change(current: GateState) -> tuple[GateState, PromotionEvent]:
            event = PromotionEvent(
                current.environment,
                current.environment,
                event_time(self._wall_clock),
                action,
                reason=reason,
                actor=actor,
            )
            return current.evolve(event), event

        result = self._transitions.apply(change)
        if result is None:  # change() never declines
            raise PromotionError(f"cannot record {action} for rollout {self.name!r}")
        return result[1]

    @property
    def retired(self) -> bool:
        """Whether the rollout is retired (``retire``): not served."""
        return self._retired

    def is_feature_enabled(self, name: str) -> bool:
        """Whether ``name`` is on for anyone (stable, or for canary sessions)."""
        state = self._current()
        return not state.retired and (name in state.stable_flags or name in state.release_flags)

    # -- history and callbacks -------------------------------------------

    def get_rollback_history(self) -> list[RollbackEvent]:
        return [e for e in self._current().history if isinstance(e, RollbackEvent)]

    def get_history(self) -> list[GateEvent]:
        """Every event: starts, traffic changes, promotions and rollbacks."""
        return list(self._current().history)

    def on_rollback(self, callback: Callback) -> Callback:
        """Call ``callback(event)`` after every rollback (usable as a decorator)."""
        self._effects.rollback_callbacks.append(callback)
        return callback

    def on_promotion(self, callback: Callback) -> Callback:
        """Call ``callback(event)`` after every promotion (usable as a decorator)."""
        self._effects.promotion_callbacks.append(callback)
        return callback

    def on_state_change(self, callback: Callback) -> Callback:
        """Call ``callback(previous, state)`` whenever this process takes up a
        newer ``GateState`` (usable as a decorator): every change it makes
        (each rollback, promotion, traffic change, plan step and flag turned
        on or off), once the store holds it, in the thread that made it; and,
        with a shared store (SQLite, Redis), every change another process
        made, as this process adopts it (from the store's follower thread, or
        at its next read of the state). Keep it quick; a raising callback is
        logged, never propagated."""
        self._transitions.state_callbacks.append(callback)
        return callback

    def store_status(self) -> StoreView:
        """The stores' health: "ok", "unreachable", "forbidden" or "corrupt"
        (the worst), and why."""
        if not (self._store.remote or self._windows.remote):
            return {"kind": "memory", "status": "ok"}
        found = [self._store.status(), self._windows.status()]
        problems = [detail for _, detail in found if detail]
        names = {name for name, _ in found}
        worst: StoreCondition = "ok"
        for condition in ("unreachable", "forbidden", "corrupt"):  # the worse last
            if condition in names:
                worst = condition
        return {"kind": "shared", "status": worst, "problems": problems}

    def close(self) -> None:
        """Stop the background work: the plan's timer, the webhooks' senders
        and a shared gate's follower threads."""
        if self._timer is not None:
            self._timer.close()
        self._effects.close()
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
        self._evaluation.after_fork()
        self._windows.after_fork()
        self._effects.after_fork()
        self._transitions.after_fork()
        # Last: its follower starts again (and reads at once), and a newer
        # state it finds is adopted through the windows and effects, fresh
        # by then.
        self._store.after_fork()
        if self._timer is not None:
            self._timer.ensure()  # threads do not survive a fork; started once all is fresh

    # -- the rollout plan (``gate_middleware.gate.autopilot``) ------------------

    def tick(self) -> None:
        """Evaluate now unless another thread is (the plan's timer calls it)."""
        self._evaluation.tick()

    def pause(self, reason: str = "paused by an operator", *, actor: str = API_ACTOR) -> None:
        """Stop the plan where it is (the judge still rolls back on a failing verdict)."""
        self._autopilot.pause(reason, actor=actor)

    def resume(self, *, actor: str = API_ACTOR) -> None:
        """Let the plan go on: after a pause, or through a manual gate (approval)."""
        self._autopilot.resume(actor=actor)

    def abort(self, reason: str, *, actor: str = API_ACTOR) -> RollbackEvent:
        """Roll the release back and end its plan (``retry`` starts it again)."""
        return self._autopilot.abort(reason, actor=actor)

    def retry(self, *, actor: str = API_ACTOR) -> Environment:
        """Start the plan again, from its first step, for the release last rolled back."""
        return self._autopilot.retry(actor=actor)

    def skip_to(self, step: int, *, force: bool = False, actor: str = API_ACTOR) -> Environment:
        """Move the plan on to step number ``step`` now (from 1; the last:
        production); refused unless the verdict is HEALTHY with enough
        evidence, as ``promote`` is; ``force=True`` skips the checks."""
        return self._autopilot.skip_to(step, force=force, actor=actor)

    def promote_now(self, *, force: bool = False, actor: str = API_ACTOR) -> Environment:
        """Skip the rest of the plan: promote to production now."""
        return self._autopilot.promote_now(force=force, actor=actor)

    def plan_status(self) -> plans.PlanProgress | None:
        """The plan as an operator reads it: its steps, the current one, the
        bake's progress and the ETA (Unix seconds), or ``None`` without a plan."""
        return self._autopilot.plan_status()

    def __repr__(self) -> str:
        return f"<PromotionGate {self.name!r} {self._state.environment}>"


PromotionGateManager = PromotionGate

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
