"""``track()``: business metrics reported by the app, counted for the session's variant.

``request.state.gate.track("checkout_completed")`` (``request.gate``,
``g.gate``, ``PromotionGate.track(session_id, ...)``, the OpenFeature
provider's ``track``) reaches ``MetricTracker``: the amount is counted for
the session (its sample key) in the variant it was routed to, in the step it
was routed in, in the window store's sample of sessions
(``gate_middleware.judge.sample``) that every store merges across
processes. A metric the rollout does not define is counted here and
ignored, with one warning per name.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence

from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.domain.state import MetricView
from gate_middleware.errors import ConfigError
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.guardrails import MetricCheck
from gate_middleware.judge.sample import MAX_AMOUNT, SCALE

logger = logging.getLogger("gate_middleware")

UNDEFINED_NAMES = 100  # undefined metrics counted by name; the rest under one count


class MetricTracker:
    """Where a gate's decisions send their ``track`` reports."""

    def __init__(
        self,
        rollout: str,
        metrics: Sequence[MetricDefinition],
        count: Callable[[str, int, str, int], None],
        step: Callable[[], int],
    ) -> None:
        self._rollout = rollout
        self._defined = frozenset(metric.name for metric in metrics)
        self._count = count  # (variant, sample key, metric, millionths)
        self._step = step
        self._lock = threading.Lock()
        self.undefined: dict[str, int] = {}  # reports of metrics with no definition, by name
        self.undefined_other = 0  # past UNDEFINED_NAMES names

    def undefined_counts(self) -> dict[str, int]:
        """The reports of undefined metrics, by name (``"(other)"``: past
        ``UNDEFINED_NAMES`` names)."""
        with self._lock:
            counts = dict(self.undefined)
            if self.undefined_other:
                counts["(other)"] = self.undefined_other
        return counts

    @property
    def sampling(self) -> bool:
        """Whether routing must give each decision its sample key."""
        return bool(self._defined)

    def __call__(self, decision: RoutingDecision, metric: str, value: float = 1.0) -> None:
        amount = _amount(metric, value)
        if metric not in self._defined:
            self._undefined(metric)
            return
        if decision.sample < 0:
            return  # not routed by hashing (fail-open, a QA override): no session to count
        if decision.step != self._step():
            return  # routed under an earlier step: not this step's evidence
        self._count(decision.variant, decision.sample, metric, amount)

    def _undefined(self, metric: str) -> None:
        with self._lock:
            if metric in self.undefined:
                self.undefined[metric] += 1
                return
            if len(self.undefined) >= UNDEFINED_NAMES:
                self.undefined_other += 1
                return
            self.undefined[metric] = 1
        logger.warning(
            "rollout %r: track(%r) names no metric of its config (metrics=%s): counted and "
            "ignored; define it in PromotionConfig.metrics to judge it",
            self._rollout,
            metric,
            sorted(self._defined),
        )


def _amount(metric: object, value: object) -> int:
    """``value`` in millionths, or ``ConfigError`` naming what is wrong."""
    if not isinstance(metric, str) or not metric:
        raise ConfigError("metric", metric, "a metric's name (a non-empty str)")
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or abs(value) > MAX_AMOUNT
    ):
        raise ConfigError(
            f"track({metric!r}) value", value, f"a finite number of at most {MAX_AMOUNT:g} in size"
        )
    return round(value * SCALE)


def metric_check(metric: MetricDefinition) -> MetricCheck:
    """The judge's check of ``metric`` (its share set by ``with_metric_checks``)."""
    return MetricCheck(
        metric.name,
        share=1.0,
        conversion=metric.conversion,
        decrease=metric.bad == "decrease",
        tolerance=metric.tolerance,
    )


def metric_checks(metrics: Sequence[MetricDefinition]) -> list[MetricCheck]:
    """The judge's checks: one for each guardrail metric."""
    return [metric_check(metric) for metric in metrics if metric.guardrail]


def metric_views(
    metrics: Sequence[MetricDefinition], canary: Evidence, production: Evidence
) -> tuple[MetricView, ...]:
    """Each metric's figures in the current step (guardrails and reported ones)."""
    views: list[MetricView] = []
    for metric in metrics:
        comparison = metric_check(metric).compare(canary, production)
        low, high = comparison.difference_interval()
        views.append(
            {
                "name": metric.name,
                "kind": metric.kind,
                "bad": metric.bad,
                "tolerance": metric.tolerance,
                "guardrail": metric.guardrail,
                "canary": {
                    "sessions": comparison.canary.sessions,
                    "mean": comparison.canary.mean,
                },
                "production": {
                    "sessions": comparison.production.sessions,
                    "mean": comparison.production.mean,
                },
                "relative_change": comparison.relative_change,
                "difference_interval": [low, high],
            }
        )
    return tuple(views)


__all__ = ["MetricTracker", "metric_check", "metric_checks", "metric_views"]
