"""How the canary compares with production: ``CanaryHealth`` and the health score.

The score compares the canary's window with production's (in staging, with
the production baseline captured when the canary was promoted)::

    error_ratio   = max(canary_error_rate, F_e) / max(production_error_rate, F_e)
    latency_ratio = max(canary_p99, F_l) / max(production_p99, F_l)
    r = max(error_ratio, latency_ratio)

    score = 1.0                        if r <= 1.0
            1.0 - (r - 1.0)            if 1.0 < r <= 1.1   (down to 0.9)
            0.9 - 0.25 * (r - 1.1)     if 1.1 < r <= 1.5   (down to 0.8)
            0.8 * 1.5 / r              if r > 1.5          (below 0.8)

``F_l`` is ``SloConfig.latency_floor_seconds``; ``F_e`` is
``SloConfig.error_rate_floor``, raised to ``3 / n`` when the smaller side has
only ``n`` requests in the window (the rule of three: fewer than three
failures in ``n`` requests is no evidence of a rate above ``3 / n``). So the guide's thresholds hold: a canary whose
error rate or p99 is more than 1.5× production's scores below 0.8
(ROLLBACK), within 1.1× scores at least 0.9 (HEALTHY), and in between
0.8..0.9 (MONITOR). Until both sides have ``min_requests`` outcomes in the
window the recommendation is INSUFFICIENT_DATA, whatever the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gate_middleware.config import SloConfig
from gate_middleware.window import WindowStats

HEALTHY_SCORE = 0.9
ROLLBACK_SCORE = 0.8


@dataclass(frozen=True)
class CanaryHealth:
    """The canary against production, with the guide's fields (latencies in seconds)."""

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

    @property
    def verdict(self) -> str:
        """The recommendation's first word: HEALTHY, MONITOR, ROLLBACK or INSUFFICIENT_DATA."""
        return self.recommendation.split(":", 1)[0]

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
            "verdict": self.verdict,
            "sufficient_data": self.sufficient_data,
        }


def worst_ratio(canary: WindowStats, production: WindowStats, slo: SloConfig) -> tuple[float, str]:
    """The larger of the error and latency ratios, and which one it is."""
    # Fewer than 3 failures in n requests is no evidence of a rate above 3/n
    # (the rule of three), so thin windows cannot fail on one unlucky error.
    fewest = min(canary.requests, production.requests)
    floor_e = max(slo.error_rate_floor, 3.0 / fewest) if fewest else slo.error_rate_floor
    floor_l = slo.latency_floor_seconds
    error_ratio = max(canary.error_rate, floor_e) / max(production.error_rate, floor_e)
    latency_ratio = max(canary.p99_latency, floor_l) / max(production.p99_latency, floor_l)
    if error_ratio >= latency_ratio:
        return error_ratio, "error rate"
    return latency_ratio, "p99 latency"


def score_from_ratio(ratio: float) -> float:
    """The documented piecewise score for the worst canary/production ratio."""
    if ratio <= 1.0:
        return 1.0
    if ratio <= 1.1:
        return max(HEALTHY_SCORE, 1.0 - (ratio - 1.0))
    if ratio <= 1.5:
        return min(HEALTHY_SCORE, max(ROLLBACK_SCORE, 0.9 - 0.25 * (ratio - 1.1)))
    return min(ROLLBACK_SCORE * 1.5 / ratio, ROLLBACK_SCORE - 1e-9)


def assess(
    traffic_percent: float,
    canary: WindowStats,
    production: WindowStats,
    slo: SloConfig,
    min_requests: int,
    *,
    release: bool = True,
) -> CanaryHealth:
    """Build the ``CanaryHealth`` for two windows (``release=False``: in
    production, with no release to judge)."""
    ratio, what = worst_ratio(canary, production, slo)
    score = score_from_ratio(ratio) if release and canary.requests and production.requests else 1.0
    sufficient = production.requests >= min_requests and (
        not release or canary.requests >= min_requests
    )
    if not release:
        recommendation = "HEALTHY: no release in progress; production serves every session"
    elif not sufficient:
        recommendation = (
            f"INSUFFICIENT_DATA: {canary.requests} canary and {production.requests} production "
            f"outcomes in the window, {min_requests} of each needed"
        )
    elif score >= HEALTHY_SCORE:
        recommendation = f"HEALTHY: canary within 1.1x of production (worst: {what} {ratio:.2f}x)"
    elif score >= ROLLBACK_SCORE:
        recommendation = (
            f"MONITOR: canary {what} is {ratio:.2f}x production's; wait before increasing traffic"
        )
    else:
        recommendation = f"ROLLBACK: canary {what} is {ratio:.2f}x production's (over 1.5x)"
    return CanaryHealth(
        traffic_percent=traffic_percent,
        canary_requests=canary.requests,
        production_requests=production.requests,
        canary_error_rate=canary.error_rate,
        production_error_rate=production.error_rate,
        canary_p99_latency=canary.p99_latency,
        production_p99_latency=production.p99_latency,
        health_score=score,
        recommendation=recommendation,
        canary_slo_compliance=canary.slo_compliance,
        production_slo_compliance=production.slo_compliance,
        sufficient_data=sufficient,
    )
