"""When and how the gate judges its release: ``Evaluation``.

Outcomes go into the window store; at most once every
``evaluation_interval_seconds`` of the injected clock (no background thread
needed) the evidence of the current *step* goes to the judge
(``gate_middleware.judge.statistics``): against the concurrent production
sessions when there are any, else against the SLO's burn rate. What the
verdict leads to (a rollback, the plan's next step) is the gate's ``act``,
called with the state and the health.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from gate_middleware.background import run_once
from gate_middleware.domain.config import PromotionConfig, SloConfig, judge_settings
from gate_middleware.domain.environment import CANARY_STAGE, PRODUCTION, STAGING, Environment
from gate_middleware.domain.routing import CANARY, STABLE
from gate_middleware.domain.state import MAX_SAMPLES, GateState, HealthSample
from gate_middleware.errors import PromotionError
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.statistics import (
    DEFAULT_CHECKS,
    HEALTHY,
    HEALTHY_SCORE,
    INSUFFICIENT_DATA,
    MONITOR,
    BurnWindow,
    Check,
    JudgeSettings,
    burn_window_minimum,
    judge,
    judge_against_objective,
    validate_checks,
)
from gate_middleware.judge.verdict import CanaryHealth, WindowStats, assess, no_release
from gate_middleware.stores import WindowStore

logger = logging.getLogger("gate_middleware")

Act = Callable[[GateState, CanaryHealth], None]


class Evaluation:
    """The gate's judging: the schedule, the burn-rate windows, the health,
    the SLO's compliance and the series of samples kept for charts."""

    def __init__(
        self,
        config: PromotionConfig,
        slo: SloConfig,
        windows: WindowStore,
        current: Callable[[], GateState],
        act: Act,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        remote: bool,
        checks: Sequence[Check] = DEFAULT_CHECKS,
    ) -> None:
        self._config = config
        self._settings = judge_settings(config, slo)
        self._checks = tuple(checks)
        validate_checks(self._checks)  # ConfigError unless their shares sum to 1
        self._objective = slo.latency_objective_seconds
        self._windows = windows
        self._current = current
        self._act = act
        self._clock = clock
        self._wall_clock = wall_clock
        self._remote = remote
        self._lock = threading.Lock()  # held by the one evaluation running
        self._burn_lock = threading.Lock()
        now = clock()
        self._last = now
        self._next = now + config.evaluation_interval_seconds
        samples = math.ceil(config.rollback_window_seconds / config.evaluation_interval_seconds)
        self._series: deque[HealthSample] = deque(maxlen=min(max(samples, 60), MAX_SAMPLES))
        self._last_sample = -math.inf
        self.step_began(now)

    # -- recording and the schedule ------------------------------------------

    def step_began(self, now: float) -> None:
        """A new step: its evidence counts after the warm-up; the burn windows restart."""
        self._evidence_from = now + self._config.initial_delay_seconds
        with self._burn_lock:
            self._burn: deque[tuple[float, int, int]] = deque([(now, 0, 0)])

    def record(
        self,
        variant: str,
        success: bool,
        seconds: float,
        cluster: int,
        route: str | None = None,
        session: int = -1,
    ) -> None:
        """Count one outcome of the current step; evaluate if one is due.
        ``session``: the session's sample key (-1: the rollout judges no
        business metric)."""
        now = self._clock()
        good = success and seconds <= self._objective
        counted = now >= self._evidence_from
        if session >= 0:
            self._windows.record(
                variant, success, good, seconds, now, cluster, counted, route=route, session=session
            )
        else:  # a store written before business metrics takes no session
            self._windows.record(
                variant, success, good, seconds, now, cluster, counted, route=route
            )
        if now >= self._next or now < self._last:
            self._on_schedule(now)

    def counting(self) -> bool:
        """Whether the step's evidence counts now (not during its warm-up):
        business metrics are counted when outcomes are."""
        return self._clock() >= self._evidence_from

    def _on_schedule(self, now: float) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is evaluating right now
        # A clock that stepped back (now < the last evaluation) must not
        # suspend evaluation until it catches up again.
        if self._last <= now < self._next:
            self._lock.release()
            return
        self._rearm(now)
        if self._remote:
            # A rollback through a shared store is network I/O: never on the
            # request's thread (an ASGI worker's event loop). The thread
            # releases the lock.
            try:
                run_once("gate-evaluate", self._in_background)
            except BaseException:
                self._lock.release()
                raise
            return
        try:
            self.evaluate(act=True)
        finally:
            self._lock.release()

    def _rearm(self, now: float) -> None:
        self._last = now
        self._next = now + self._config.evaluation_interval_seconds

    def _in_background(self) -> None:
        try:
            self.evaluate(act=True)
        except PromotionError as exc:  # the store logged the outage already
            logger.warning("Automatic evaluation could not change the shared state: %s", exc)
        except Exception:
            logger.exception("Automatic evaluation failed; the gate carries on")
        finally:
            self._lock.release()

    def tick(self) -> None:
        """Evaluate now unless another thread is (the plan's timer calls it)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._rearm(self._clock())
            self.evaluate(act=True)
        except PromotionError as exc:  # a shared store that is down: logged there
            logger.warning("The plan could not change the shared state: %s", exc)
        finally:
            self._lock.release()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._burn_lock = threading.Lock()

    # -- judging --------------------------------------------------------------

    def evaluate(self, act: bool) -> tuple[CanaryHealth, float, bool]:
        """(health, SLO compliance, enough evidence) now; with ``act``, keep
        a sample and let the gate act on the verdict."""
        state = self._current()
        health, canary, stable = self.health(state)
        compliance, enough = self.slo_figures(state, health, canary, stable)
        if act:
            self._sample(state, health, compliance)
        in_release = state.environment.name != PRODUCTION
        if in_release and health.verdict == MONITOR:
            logger.warning(
                "Canary health score %.2f: %s", health.health_score, health.recommendation
            )
        if act and in_release:
            self._act(state, health)
        return health, compliance, enough

    def _concurrent(self, environment: Environment) -> bool:
        """Whether stable sessions run beside the canary to compare it with."""
        if self._config.holdback_percent > 0:
            return True
        return environment.name == CANARY_STAGE and environment.traffic_percent < 100.0

    def burn_windows(self, canary: Evidence, now: float) -> tuple[BurnWindow, BurnWindow]:
        """The canary's long and short burn windows.

        The long window is ``rollback_window_seconds``, the short one a
        twelfth of it (the SRE workbook's 1 h / 5 min pair, scaled); each
        reaches further back in the step while it holds fewer than
        ``burn_window_minimum`` requests, so a quiet release's windows hold
        enough to warn. Both are differences of the step's evidence between
        evaluations (a moment is kept when the count changed, so the deque
        stays short however quiet the step).
        """
        long_seconds = self._config.rollback_window_seconds
        short_seconds = long_seconds / 12
        minimum = burn_window_minimum(self._config.min_requests)
        with self._burn_lock:  # status, gauges and evaluations may read at once
            burn = self._burn
            last = burn[-1]
            if now < last[0] or (
                now - last[0] >= self._config.evaluation_interval_seconds / 2
                and canary.requests != last[1]
            ):
                burn.append((now, canary.requests, canary.bad))
            while (
                len(burn) > 2
                and burn[1][0] <= now - long_seconds
                and canary.requests - burn[1][1] >= minimum
            ):
                burn.popleft()
            moments = list(burn)

        def since(seconds: float) -> BurnWindow:
            start = moments[0]
            for moment in moments:
                if moment[0] > now - seconds or canary.requests - moment[1] < minimum:
                    break
                start = moment
            return BurnWindow(canary.requests - start[1], canary.bad - start[2], now - start[0])

        return since(long_seconds), since(short_seconds)

    def settings(self, state: GateState) -> JudgeSettings:
        """The judge's settings for ``state``'s step: its lines moved by what
        the release's earlier steps carry (``GateState.carried``)."""
        return replace(self._settings, carried_log_evidence=state.carried_log_evidence)

    def step_evidence(self, state: GateState) -> float:
        """The evidence of ``state``'s step so far, all checks together (log):
        what it carries into the release's next step."""
        if state.environment.name == PRODUCTION:
            return 0.0
        health = self.health(state)[0]
        return health.evidence.get("step_log_evidence", 0.0)

    def health(self, state: GateState) -> tuple[CanaryHealth, WindowStats, WindowStats]:
        """The release's ``CanaryHealth``, with the canary's and the stable side's windows."""
        now = self._clock()
        canary = self._windows.stats(CANARY, now)
        stable = self._windows.stats(STABLE, now)
        environment = state.environment
        if environment.name == PRODUCTION:
            return self._delivered(no_release(canary, stable)), canary, stable
        canary_evidence = self._windows.evidence(CANARY)
        settings = self.settings(state)
        if self._concurrent(environment):
            holdback = self._config.holdback_percent > 0 and (
                environment.name == STAGING
                or environment.traffic_percent >= 100.0 - self._config.holdback_percent
            )
            judgement = judge(
                canary_evidence,
                self._windows.evidence(STABLE),
                settings,
                canary_window_compliance=canary.slo_compliance if canary.requests else None,
                comparison="holdback" if holdback else "production",
                checks=self._checks,
            )
        else:
            long_window, short_window = self.burn_windows(canary_evidence, now)
            judgement = judge_against_objective(
                canary_evidence, long_window, short_window, settings
            )
        health = assess(environment.traffic_percent, canary, stable, judgement)
        return self._delivered(health), canary, stable

    def _delivered(self, health: CanaryHealth) -> CanaryHealth:
        """``health``, unless it reads HEALTHY while the window store may not
        be delivering outcomes (``unreachable`` or ``forbidden``: the windows
        then hold this process's outcomes, or none, not the rollout's):
        INSUFFICIENT_DATA then, saying why."""
        if health.verdict != HEALTHY:
            return health
        condition, detail = self._windows.status()
        if condition not in ("unreachable", "forbidden"):
            return health
        return replace(
            health,
            verdict=INSUFFICIENT_DATA,
            recommendation=(
                f"INSUFFICIENT_DATA: the window store is {condition}, so outcomes may not be "
                f"shared ({detail}); {health.recommendation.partition(': ')[2]}"
            ),
            health_score=min(health.health_score, HEALTHY_SCORE - 0.01),  # INSUFFICIENT_DATA's band
            sufficient_data=False,
        )

    def evidence(self) -> tuple[Evidence, Evidence]:
        """The step's evidence of the canary and of the stable side."""
        return self._windows.evidence(CANARY), self._windows.evidence(STABLE)

    def slo_figures(
        self, state: GateState, health: CanaryHealth, canary: WindowStats, stable: WindowStats
    ) -> tuple[float, bool]:
        """(compliance, enough evidence): the canary's window while a release
        is in progress, overall in production."""
        if state.environment.name == PRODUCTION:
            requests = canary.requests + stable.requests
            good = canary.good + stable.good
            compliance = good / requests if requests else 0.0
            return compliance, requests >= self._config.min_requests
        compliance = canary.good / canary.requests if canary.requests else 0.0
        return compliance, health.sufficient_data

    def require_promotable(self, health: CanaryHealth) -> None:
        """Raise ``PromotionError`` unless the release may move on, decided on
        the evidence the verdict rests on (the step's, not the rollback
        window's): enough of it, the verdict HEALTHY, and the step's SLO
        compliance at the threshold (the canary's good requests of the step)."""
        if not health.sufficient_data:
            raise PromotionError(
                f"Promotion refused: not enough data yet ({health.recommendation})"
            )
        evidence = self._windows.evidence(CANARY)
        compliance = 1.0 - evidence.bad / evidence.requests if evidence.requests else 0.0
        if compliance < self._config.slo_threshold:
            raise PromotionError(
                f"Promotion refused: SLO compliance below threshold: {compliance:.4f} < "
                f"{self._config.slo_threshold} over the step's {evidence.requests} canary "
                "requests"
            )
        if health.verdict != HEALTHY:
            raise PromotionError(
                f"Promotion refused: health score {health.health_score:.2f}, "
                f"verdict {health.recommendation}"
            )

    # -- the series -------------------------------------------------------------

    def _sample(self, state: GateState, health: CanaryHealth, compliance: float) -> None:
        """Keep one health sample per evaluation interval (for charts)."""
        now = self._clock()
        if 0.0 <= now - self._last_sample < self._config.evaluation_interval_seconds / 2:
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

    def series(self) -> list[HealthSample]:
        return list(self._series)
