"""How the canary compares with production: ``CanaryHealth``.

The verdict and the health score come from the judge
(``gate_middleware.judge.statistics``), which reads the evidence of the current step;
``CanaryHealth`` adds what an operator reads beside them: each variant's
error rate, p99 and SLO compliance over the sliding window (for display:
no decision rests on a window's p99).

Verdicts and scores (the guide's bands): HEALTHY 0.9..1.0, MONITOR and
INSUFFICIENT_DATA 0.8..0.9, ROLLBACK below 0.8; how each verdict is decided
is written in ``gate_middleware.judge.statistics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

from gate_middleware.judge.statistics import (
    HEALTHY,
    HEALTHY_SCORE,
    INSUFFICIENT_DATA,
    ROLLBACK_SCORE,
    Judgement,
    TestView,
    Verdict,
)

__all__ = [
    "HEALTHY_SCORE",
    "ROLLBACK_SCORE",
    "CanaryHealth",
    "HealthEvidence",
    "assess",
    "no_release",
]


@dataclass(frozen=True)
class WindowStats:
    """What a window holds: counts and the p99 latency in seconds."""

    requests: int = 0
    failures: int = 0
    good: int = 0
    p99_latency: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def slo_compliance(self) -> float:
        """good / all; 1.0 for an empty window (no data is no violation)."""
        return self.good / self.requests if self.requests else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "good": self.good,
            "error_rate": self.error_rate,
            "p99_latency": self.p99_latency,
            "slo_compliance": self.slo_compliance,
        }


class HealthEvidence(TypedDict, total=False):
    """What the verdict rests on: the step's requests on each side and each
    check's figures by its name; the step's evidence of all checks together
    and what the release's earlier steps carried into it (log); the burn rates when judged against the
    objective (empty in production: nothing judged)."""

    canary_requests: int
    baseline_requests: int
    tests: dict[str, TestView]
    step_log_evidence: float
    carried_log_evidence: float
    long_burn_rate: float
    short_burn_rate: float
    long_window_seconds: float
    short_window_seconds: float


@dataclass(frozen=True)
class CanaryHealth:
    """The canary against production, with the guide's fields (latencies in seconds).

    The rates, p99s and compliances are the sliding windows'; the verdict
    (``recommendation``), ``health_score`` and ``sufficient_data`` are the
    judge's, from the evidence of the current step (``evidence``: the
    requests on each side and each test's figures). ``comparison`` says
    what the canary was judged against: ``"production"``, ``"holdback"``
    or ``"slo objective"``. ``verdict`` is the judge's ``Verdict``
    (``recommendation`` begins with it).
    """

    traffic_percent: float
    canary_requests: int
    production_requests: int
    canary_error_rate: float
    production_error_rate: float
    canary_p99_latency: float
    production_p99_latency: float
    health_score: float
    recommendation: str
    canary_slo_compliance: float = 1.0
    production_slo_compliance: float = 1.0
    sufficient_data: bool = False
    comparison: str = "production"
    evidence: HealthEvidence = field(default_factory=lambda: HealthEvidence(), compare=False)
    # Declared ``str`` so that a ``CanaryHealth`` can be built without it:
    # always a ``Verdict`` once built (see ``__post_init__``).
    verdict: str = ""

    def __post_init__(self) -> None:
        if self.verdict:
            verdict = Verdict(self.verdict)
        else:
            # Built by hand without one (the judge and the codec always pass
            # it): the recommendation reads "<verdict>: <reason>".
            verdict = Verdict(self.recommendation.partition(":")[0])
        object.__setattr__(self, "verdict", verdict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "traffic_percent": self.traffic_percent,
            "canary_requests": self.canary_requests,
            "production_requests": self.production_requests,
            "canary_error_rate": self.canary_error_rate,
            "production_error_rate": self.production_error_rate,
            "canary_p99_latency": self.canary_p99_latency,
            "production_p99_latency": self.production_p99_latency,
            "canary_slo_compliance": self.canary_slo_compliance,
            "production_slo_compliance": self.production_slo_compliance,
            "health_score": self.health_score,
            "recommendation": self.recommendation,
            "verdict": str(self.verdict),
            "sufficient_data": self.sufficient_data,
            "comparison": self.comparison,
            "evidence": self.evidence,
        }


def _windows(canary: WindowStats, production: WindowStats) -> dict[str, Any]:
    """The window fields of ``CanaryHealth`` (for display)."""
    return {
        "canary_requests": canary.requests,
        "production_requests": production.requests,
        "canary_error_rate": canary.error_rate,
        "production_error_rate": production.error_rate,
        "canary_p99_latency": canary.p99_latency,
        "production_p99_latency": production.p99_latency,
        "canary_slo_compliance": canary.slo_compliance,
        "production_slo_compliance": production.slo_compliance,
    }


def assess(
    traffic_percent: float,
    canary: WindowStats,
    production: WindowStats,
    judgement: Judgement,
) -> CanaryHealth:
    """The ``CanaryHealth`` of a release: the windows for display, the judgement for the verdict."""
    evidence: HealthEvidence = {
        "canary_requests": judgement.canary_requests,
        "baseline_requests": judgement.production_requests,  # its published name
        "tests": {test.name: test.to_dict() for test in judgement.tests},
        "step_log_evidence": judgement.step_log_evidence,
        "carried_log_evidence": judgement.carried_log_evidence,
    }
    if judgement.burn_rates is not None:
        evidence["long_burn_rate"] = judgement.burn_rates["long_burn_rate"]
        evidence["short_burn_rate"] = judgement.burn_rates["short_burn_rate"]
        evidence["long_window_seconds"] = judgement.burn_rates["long_window_seconds"]
        evidence["short_window_seconds"] = judgement.burn_rates["short_window_seconds"]
    return CanaryHealth(
        traffic_percent=traffic_percent,
        health_score=judgement.health_score,
        recommendation=judgement.recommendation,
        sufficient_data=judgement.verdict != INSUFFICIENT_DATA,
        comparison=judgement.comparison,
        evidence=evidence,
        verdict=judgement.verdict,
        **_windows(canary, production),
    )


def no_release(canary: WindowStats, production: WindowStats) -> CanaryHealth:
    """Production, with no release to judge: both windows reported, nothing judged."""
    return CanaryHealth(
        traffic_percent=0.0,
        health_score=1.0,
        recommendation="HEALTHY: no release in progress; production serves every session",
        sufficient_data=True,
        comparison="none",
        verdict=HEALTHY,
        **_windows(canary, production),
    )
