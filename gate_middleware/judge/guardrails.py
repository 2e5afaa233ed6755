"""The business metrics' check: is the canary worse than production at what the app tracks?

One ``MetricCheck`` per metric the rollout defines
(``gate_middleware.domain.metrics``), judged on each side's sample of
sessions (``gate_middleware.judge.sample``): session *i* has the value
``x_i`` — 1 or 0 for a conversion (did it report the metric at least once),
else its total. The sessions are a uniform sample of the step's sessions on
that side, so they are independent units, and a heavy user is one of them.

The test (for ``bad="decrease"``, tolerance τ): H0 is μ_c ≥ μ_p − τ·|μ_p|
(the line moves away from production's mean by τ of its size, whatever its
sign). With the sample means and the *pooled* variance s² of all the
sessions of both sides together (what H0 says when the canary changes
nothing: one population),

    D = (μ̂_p − τ·|μ̂_p|) − μ̂_c,    se² = s²·(1/n_c + (1 − τ·sign μ̂_p)²/n_p),    z = D / se,

and the evidence is the one-sided normal-mixture martingale at ``z``
(``mixture_log_evidence``) with ``u = (ρ·m)²/se²``, ρ = ``MIXING_SCALE``
(half the larger |mean| ``m``). By the central limit theorem applied
uniformly in time (the asymptotic confidence sequences of Waudby-Smith,
Arbour, Sinha, Kennedy and Ramdas, *Time-uniform central limit theory and
asymptotic confidence sequences*, 2024), this is an asymptotic test
supermartingale under H0 however often it is looked at, so it shares the
release's false-rollback budget like the built-in checks
(``with_metric_checks``). ``bad="increase"`` mirrors it:
D = μ̂_c − (μ̂_p + τ·|μ̂_p|).

Why pooled: each side's own variance moves with its own mean. A canary that
by chance converted 0 of 400 sessions would carry almost no variance and
look certain (a 1 % check rejected 2.3 % of such nulls), and for a skewed
value (most sessions buy nothing, a few much) a canary that drew few large
values would look both worse and surer than it is. Pooled, the variance
comes mostly from production's larger sample; when the canary does differ,
the pooled variance grows with the difference, which costs some power but
never validity, and two sides that are each constant but differ (every
production session reports once, no canary session does) still give a
variance. The mixture's scale ρ = 0.5 needs the least ``z`` to reject
(3.9–4.1 at the metrics' share of a 1 % rate) across the information a step
gathers, ``(m/se)²`` from 10 to 300, where ρ = 0.1 would need 6.7 at 33
(``benchmarks/judge_sim.py`` measures the power). A check acts only once each
side's sample holds ``min_requests`` sessions and ``SMALL_COUNT`` sessions
between them have reported the metric, and until then a HEALTHY verdict
waits for it (``waiting_for``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, is_dataclass, replace

from gate_middleware.errors import ConfigError
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.sample import SessionSummary
from gate_middleware.judge.statistics import (
    ROLLBACK_LINE,
    SIGN_Z,
    SMALL_COUNT,
    Check,
    JudgeSettings,
    TestResult,
    mixture_log_evidence,
)

MIXING_SCALE = 0.5  # ρ, relative to the metric's mean (the module docstring)
METRICS_SHARE = 0.2  # of the false-rollback rate, split equally between the guardrails
Z_95 = 1.959963984540054  # a 95 % interval's half-width in standard errors


def pooled_variance(canary: SessionSummary, production: SessionSummary) -> float:
    """The variance of all the sessions of both sides taken together, from
    each side's mean and (unbiased) variance."""
    n_c, n_p = canary.sessions, production.sessions
    total = n_c + n_p
    if total < 2:
        return 0.0
    within = (n_c - 1) * canary.variance if n_c else 0.0
    within += (n_p - 1) * production.variance if n_p else 0.0
    between = n_c * n_p / total * (canary.mean - production.mean) ** 2
    return (within + between) / (total - 1)


@dataclass(frozen=True)
class MetricComparison:
    """The two sides' summaries of one metric, and the difference that matters."""

    canary: SessionSummary
    production: SessionSummary
    tolerance: float  # relative to production's |mean|
    decrease: bool

    @property
    def line(self) -> float:
        """The canary's mean at the tolerated limit: production's moved by τ·|μ_p| the bad way."""
        mean = self.production.mean
        step = self.tolerance * abs(mean)
        return mean - step if self.decrease else mean + step

    @property
    def regression(self) -> float:
        """D: how far the canary is past the tolerated line (positive: worse)."""
        return self.line - self.canary.mean if self.decrease else self.canary.mean - self.line

    @property
    def standard_error(self) -> float:
        """se of D under H0: the pooled variance (the module docstring)."""
        c, p = self.canary, self.production
        if c.sessions < 2 or p.sessions < 2:
            return 0.0
        sign = math.copysign(1.0, p.mean) if p.mean else 0.0
        slope = 1.0 - self.tolerance * sign if self.decrease else 1.0 + self.tolerance * sign
        return math.sqrt(pooled_variance(c, p) * (1.0 / c.sessions + slope**2 / p.sessions))

    @property
    def relative_change(self) -> float:
        """The canary's mean over production's, less 1 (0 when production's is 0)."""
        base = self.production.mean
        return self.canary.mean / base - 1.0 if base else 0.0

    def difference_interval(self) -> tuple[float, float]:
        """A 95 % interval (one look, not anytime) of the canary's mean less production's."""
        c, p = self.canary, self.production
        difference = c.mean - p.mean
        if c.sessions < 2 or p.sessions < 2:
            return (difference, difference)
        half = Z_95 * math.sqrt(c.variance / c.sessions + p.variance / p.sessions)
        return (difference - half, difference + half)


@dataclass(frozen=True)
class MetricCheck:
    """``metric:NAME``: is the canary's per-session ``metric`` worse than
    production's beyond ``tolerance`` (relative)? (the module docstring)"""

    metric: str
    share: float
    conversion: bool = True
    decrease: bool = True
    tolerance: float = 0.0

    @property
    def name(self) -> str:
        return f"metric:{self.metric}"

    @property
    def label(self) -> str:
        return self.metric

    def compare(self, canary: Evidence, production: Evidence) -> MetricComparison:
        return MetricComparison(
            canary.sample.summary(self.metric, self.conversion),
            production.sample.summary(self.metric, self.conversion),
            self.tolerance,
            self.decrease,
        )

    def _ready(self, comparison: MetricComparison, settings: JudgeSettings) -> bool:
        c, p = comparison.canary, comparison.production
        if min(c.sessions, p.sessions) < settings.min_requests:
            return False
        return c.reporting + p.reporting >= SMALL_COUNT

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        comparison = self.compare(canary, production)
        estimate = comparison.relative_change
        se = comparison.standard_error
        if not self._ready(comparison, settings) or se <= 0.0:
            return TestResult(self.name, estimate, 0.0, 0.0, False, False, acted=False)
        z = comparison.regression / se
        scale = MIXING_SCALE * max(abs(comparison.production.mean), abs(comparison.canary.mean))
        log_m = mixture_log_evidence(z, (scale / se) ** 2)
        rejected = log_m >= settings.rejection_log_for(self.share)
        return TestResult(self.name, estimate, z, log_m, rejected, rejected or z > SIGN_Z)

    def waiting_for(self, canary: Evidence, production: Evidence, settings: JudgeSettings) -> str:
        comparison = self.compare(canary, production)
        if self._ready(comparison, settings):
            return ""
        c, p = comparison.canary, comparison.production
        text = (
            f"metric {self.metric}: {c.sessions} canary and {p.sessions} production "
            f"sessions sampled, {settings.min_requests} of each needed"
        )
        reported = "converting" if self.conversion else "reporting it"
        return text + (
            f" and {SMALL_COUNT:g} sessions {reported} between them "
            f"({c.reporting + p.reporting} so far)"
        )

    def rollback_reason(
        self,
        result: TestResult,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
        comparison: str,
    ) -> str:
        figures = self.compare(canary, production)
        low, high = figures.difference_interval()
        direction = "below" if self.decrease else "above"
        per = "sessions converting" if self.conversion else "per session"
        return (
            f"metric {self.metric} ({per}) on the canary {figures.canary.mean:.4g} is {direction} "
            f"{comparison}'s {figures.production.mean:.4g} by more than the tolerated "
            f"{self.tolerance:.0%} ({figures.relative_change:+.1%}; difference 95 % interval "
            f"{low:.4g} to {high:.4g}; {figures.canary.sessions} and "
            f"{figures.production.sessions} sessions; log-evidence {result.log_evidence:.1f} "
            f"≥ {settings.rejection_log_for(self.share):.1f})"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        """How many times worse: production's mean over the canary's (a decrease), or
        the reverse, with a little added to each (no ∞)."""
        figures = self.compare(canary, production)
        small = 1e-9 + 1e-3 * max(abs(figures.canary.mean), abs(figures.production.mean))
        worse, better = (
            (figures.production.mean, figures.canary.mean)
            if self.decrease
            else (figures.canary.mean, figures.production.mean)
        )
        if better + small <= 0.0:
            return ROLLBACK_LINE
        return max(1.0, (worse + small) / (better + small))

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        if not result.acted:
            return ""
        return f"{self.metric} {result.estimate:+.1%}"


def with_metric_checks(
    checks: Sequence[Check], metrics: Sequence[MetricCheck]
) -> tuple[Check, ...]:
    """``checks`` with each share scaled by 1 − ``METRICS_SHARE``, and
    ``metrics`` (their ``share`` replaced) splitting ``METRICS_SHARE``
    equally: together they still sum to 1. ``checks`` as they are when
    there is no metric to judge."""
    if not metrics:
        return tuple(checks)
    scaled: list[Check] = []
    for check in checks:
        if not is_dataclass(check) or isinstance(check, type):
            raise ConfigError(
                "checks", check, "dataclasses with a share field, to make room for the metrics"
            )
        scaled.append(replace(check, share=check.share * (1.0 - METRICS_SHARE)))
    each = METRICS_SHARE / len(metrics)
    return (*scaled, *(replace(metric, share=each) for metric in metrics))


__all__ = [
    "METRICS_SHARE",
    "MIXING_SCALE",
    "MetricCheck",
    "MetricComparison",
    "pooled_variance",
    "with_metric_checks",
]
