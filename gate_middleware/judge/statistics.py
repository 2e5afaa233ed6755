"""The canary judge: evidence in, verdict out. No clock, no lock, no I/O.

The gate feeds it the evidence of the current step (``Evidence`` for the
canary and for production, the sessions on the production version it is
compared with: the stable sessions beside it, or the holdback) and acts on
the ``Judgement``. Every decision to roll back rests on a test that is valid
at every evaluation, however many there are ("anytime-valid"): the chance
that a release as good as production is ever rolled back by it stays under
``false_rollback_rate`` for the whole step, not per look.

Checks (each a one-sided test, "the canary is worse"; the ``Check`` protocol
below, ``DEFAULT_CHECKS`` the three the gate runs):

``errors`` (``ErrorRateCheck``)
    H0: ``p_canary - p_production <= error_rate_tolerance``. The statistic
    ``z = (p̂_c - p̂_p - tolerance) / se`` where ``se²`` is, for each side,
    the binomial variance at the pooled rate times the side's design effect
    (Kish): the clustered ("sandwich") variance over the 64 session groups
    against the binomial one, less two of its standard deviations of chance,
    never below 1. So a few heavy sessions failing every request do not read
    as thousands of independent failures. Rare counts are skewed to the
    right, so ``z`` is first moved to the normal quantile with the same tail
    (the Cornish–Fisher term ``z - γ(z² - 1)/6``). ``z`` is then turned into
    evidence by a one-sided normal-mixture martingale (Robbins' mixture;
    Howard et al. 2021; Lindon et al. 2022)::

        log M = log 2 - ½·log(1+u) + u·z² / (2(1+u)) + log Φ(z·√(u/(1+u)))

    with ``u = ρ²/se²`` and the mixing scale ``ρ`` the size of the effect
    we most want to see quickly (a doubling: ``ρ`` = the pooled rate).
    The test rejects when ``M >= 1/α`` (Ville's inequality). While fewer
    than ``SMALL_COUNT`` canary failures are expected, a normal tail is no
    guide: an exact test of *which side each failure landed on* (a mixture
    over the ratios 2…20 of the likelihood ratios of the split, a
    supermartingale under H0) must agree, so two unlucky failures among the
    canary's first twenty requests can never roll a release back.

``latency`` (``LatencyCheck``)
    H0: the canary's durations divided by ``latency_tolerance`` (1.5×, the
    guide's rollback line) are no slower than production's:
    ``θ = P(X_c / 1.5 > X_p) + ½·P(=) <= ½`` (Mann–Whitney with a margin,
    as in Kayenta's judge). ``θ̂`` is computed from the two latency
    sketches (1 % buckets, the margin rounded to whole buckets: 1.49×),
    ``se² = (n_c + n_p + 1) / (12·n_c·n_p)`` (its null variance), and the
    same normal mixture with ``ρ = 0.1``. Decisions never rest on a p99.

``slo`` (``SloCheck``)
    the *bad* requests (failed, or slower than the latency objective):
    the same test as ``errors`` on the bad rate, at the same tolerance.
    A canary whose SLO compliance in the window is below the threshold is
    rolled back only when this test says it is also worse than
    production's concurrent compliance.

The false-rollback rate α is split between the checks by their ``share``
(errors 45 %, latency 45 %, slo 10 %): the shares of the checks judged
together must sum to 1, so their union stays within α (``judge`` raises
``ConfigError`` otherwise).

Adding a check (the judged business metrics, say): write a class with the
members of ``Check`` — its ``name`` (its key in ``Judgement.tests`` and in
the health's ``evidence``), its ``share``, the ``label`` a MONITOR reason
names it by, ``test`` (an anytime-valid test: reject only when its evidence
reaches ``settings.rejection_log_for(share)``), and the reason, severity and
figures the verdict's text and score take from it — and pass it to
``judge(..., checks=(...))`` beside the others, their shares split again to
sum to 1 (``ErrorRateCheck(share=0.4)``...). Nothing else changes: the judge
rolls back on the first check (in the tuple's order) that rejects, shows a
MONITOR sign for any check with one, and scores by the strongest evidence of
all of them. ``tests/judge/test_checks.py`` plugs in a fourth check this way.

Without a concurrent comparison (staging or a 100 % canary with no
holdback) the canary is judged against the SLO objective by two burn-rate
windows (the SRE workbook's multi-window rule): it is rolled back when the
bad fraction exceeds ``burn_rate_threshold × (1 - slo_threshold)`` in both
the long and the short window.

Verdicts (``Verdict``):

- ``ROLLBACK``: a check rejected (or both burn windows burn too fast).
- ``INSUFFICIENT_DATA``: otherwise, while either side has fewer than
  ``min_requests`` outcomes in the step.
- ``HEALTHY``: no sign of a regression beyond the MONITOR band: for errors
  ``z`` of ``p̂_c - 1.1·p̂_p - tolerance`` and for latency the Mann–Whitney
  ``z`` of canary/1.1 against production both below 1.645 (a plain 5 %
  one-sided check, not a decision to act), and the SLO met or no worse
  than production's.
- ``MONITOR``: the rest.

The health score keeps the guide's bands: HEALTHY scores 0.9..1.0, MONITOR
and INSUFFICIENT_DATA 0.8..0.9 (never healthy-looking), ROLLBACK below 0.8.
Within a band the score falls as the evidence of a regression grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import mul
from typing import Any, Protocol, TypedDict

from gate_middleware.errors import ConfigError
from gate_middleware.judge.evidence import CLUSTERS, Evidence
from gate_middleware.judge.sketch import GAMMA, quantile


class Verdict(StrEnum):
    """What the judge says of a canary. Each is its own name as a string
    (``Verdict.HEALTHY == "HEALTHY"``), which is how it is published."""

    HEALTHY = "HEALTHY"
    MONITOR = "MONITOR"
    ROLLBACK = "ROLLBACK"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


# The names the verdicts had before the enum, for their importers.
HEALTHY = Verdict.HEALTHY
MONITOR = Verdict.MONITOR
ROLLBACK = Verdict.ROLLBACK
INSUFFICIENT_DATA = Verdict.INSUFFICIENT_DATA

HEALTHY_SCORE = 0.9
ROLLBACK_SCORE = 0.8
ROLLBACK_LINE = 1.5  # a regression this large (the guide's rollback line) scores just under 0.8
SIGN_Z = 1.6448536269514722  # a one-sided 5 % check: "a sign of a regression"
LATENCY_MIXING_SCALE = 0.1  # ρ for the Mann–Whitney test: θ 0.5 → 0.6
MIN_LATENCY_SAMPLES = 10
LATENCY_MARGIN_NOTE = "the rollback line"  # θ is P(canary / tolerance > production)
SMALL_COUNT = 10.0  # below this many expected failures, an exact count check must agree
_SPLIT_RATIOS = (2.0, 3.0, 5.0, 10.0, 20.0)
_LOG_GAMMA = math.log(GAMMA)
_SHARES_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class JudgeSettings:
    """How strictly the judge decides (built from ``SloConfig`` and ``PromotionConfig``)."""

    false_rollback_rate: float = 0.01
    error_rate_tolerance: float = 0.0
    latency_tolerance: float = 1.5
    monitor_tolerance: float = 1.1
    min_requests: int = 100
    slo_threshold: float = 0.95
    burn_rate_threshold: float = 2.0

    def rejection_log_for(self, share: float) -> float:
        """log(1/α_check): where a check with ``share`` of the false-rollback rate rejects."""
        return math.log(1.0 / (self.false_rollback_rate * share))

    def rejection_log(self, test: str) -> float:
        """``rejection_log_for`` the share of one of ``DEFAULT_CHECKS``, by name."""
        return self.rejection_log_for(ALPHA_SHARES[test])


class TestView(TypedDict):
    """A ``TestResult`` as ``to_dict`` shows it (the health's evidence)."""

    estimate: float
    z: float
    log_evidence: float
    rejected: bool
    sign: bool


class BurnRates(TypedDict):
    """The canary's burn rates of its error budget, when judged against the objective."""

    long_burn_rate: float
    short_burn_rate: float


@dataclass(frozen=True)
class TestResult:
    """One test: its statistic, its evidence against H0, and whether it rejected."""

    name: str
    estimate: float  # errors/slo: p̂_c - p̂_p; latency: θ̂
    z: float
    log_evidence: float  # log M; rejects at log(1/α)
    rejected: bool
    sign: bool  # a sign of a regression beyond the MONITOR band

    def to_dict(self) -> TestView:
        return {
            "estimate": self.estimate,
            "z": self.z,
            "log_evidence": self.log_evidence,
            "rejected": self.rejected,
            "sign": self.sign,
        }


@dataclass(frozen=True)
class Judgement:
    """The verdict, its health score and the reason, with each test's figures."""

    verdict: Verdict
    health_score: float
    reason: str
    tests: tuple[TestResult, ...] = ()
    canary_requests: int = 0
    production_requests: int = 0
    comparison: str = "production"  # "production", "holdback" or "slo objective"
    burn_rates: BurnRates | None = None  # judged against the objective

    @property
    def recommendation(self) -> str:
        return f"{self.verdict}: {self.reason}"

    @property
    def baseline_requests(self) -> int:
        """``production_requests`` by its older name (the health's evidence keeps it)."""
        return self.production_requests

    def test(self, name: str) -> TestResult | None:
        for result in self.tests:
            if result.name == name:
                return result
        return None


class Check(Protocol):
    """One thing the judge tests: "is the canary worse than production at it?".

    ``judge`` runs a tuple of checks and knows none of them by name: what
    differs between them is here. How to add one: the module docstring.
    """

    @property
    def name(self) -> str:
        """Its ``TestResult``'s name: the key in ``Judgement.tests`` and the health's evidence."""
        ...

    @property
    def share(self) -> float:
        """Its share of ``false_rollback_rate`` (the checks judged together sum to 1)."""
        ...

    @property
    def label(self) -> str:
        """What a MONITOR reason calls it ("error rate")."""
        ...

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        """The test, rejecting at ``settings.rejection_log_for(self.share)``.

        ``canary_compliance`` is the canary's SLO compliance over the sliding
        window (only the SLO check reads it)."""
        ...

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
        """Why the canary is rolled back, when this check rejected first
        (``comparison``: what production is called, "production" or "holdback")."""
        ...

    def severity(self, canary: Evidence, production: Evidence) -> float:
        """How many times worse than production the canary is (``ROLLBACK_LINE``
        when unknown): a rollback's score falls below 0.8 as it grows."""
        ...

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        """Its figures for a MONITOR or HEALTHY reason ("" for none)."""
        ...


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _log_normal_cdf(x: float) -> float:
    if x > -30.0:
        return math.log(max(normal_cdf(x), 1e-300))
    # Mills ratio for the far tail: log Φ(x) ≈ -x²/2 - log(-x·√(2π))
    return -0.5 * x * x - math.log(-x * math.sqrt(2.0 * math.pi))


def mixture_log_evidence(z: float, u: float) -> float:
    """log of the one-sided normal-mixture martingale at ``z`` with ``u = ρ²·information``.

    ``M = 2·Φ(z·√(u/(1+u))) · exp(u·z² / (2(1+u))) / √(1+u)``: the likelihood
    ratio of a Gaussian drift λ against 0, mixed over λ ~ half-normal(ρ).
    ``M`` is a nonnegative supermartingale under H0 (no drift or a negative
    one), so ``P(sup M >= 1/α) <= α`` (Ville).
    """
    if u <= 0.0 or not math.isfinite(z):
        return 0.0
    shrink = u / (1.0 + u)
    return (
        math.log(2.0)
        - 0.5 * math.log1p(u)
        + 0.5 * shrink * z * z
        + _log_normal_cdf(z * math.sqrt(shrink))
    )


def split_log_evidence(
    canary_failures: int, production_failures: int, canary_share: float
) -> float:
    """log of the mixture (equal weights over ratios r) of the likelihood ratios
    for *which side each failure landed on* (Lindon et al. 2022, §4).

    With a fraction ``s`` of the requests on the canary and failure rates in
    the ratio ``r``, each failure is the canary's with probability
    ``θ_r = r·s / (r·s + 1 - s)``; under H0 (``r <= 1``) at most
    ``θ_1 = s``. Each term ``Π θ_r/θ_1`` (canary) ``× (1-θ_r)/(1-θ_1)``
    (production) is a supermartingale over the failures for every ``r >= 1``
    when the truth is ``r <= 1``, and so is their average. It needs no
    estimate of production's rate, so it stays exact with a handful of
    failures, where a normal approximation does not.
    """
    if not 0.0 < canary_share < 1.0:
        return 0.0
    s = canary_share
    logs = []
    for r in _SPLIT_RATIOS:
        theta = r * s / (r * s + 1.0 - s)
        logs.append(
            canary_failures * math.log(theta / s)
            + production_failures * math.log((1.0 - theta) / (1.0 - s))
        )
    top = max(logs)
    return top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))


def _clustered_variance(
    requests: int, counts: Sequence[int], groups: Sequence[int], rate: float
) -> float:
    """Σ_k (x_k - rate·n_k)² / n², with the small-sample factor K/(K-1).

    Expanded as Σx² - 2·rate·Σx·n + rate²·Σn², three sums the interpreter
    runs in C.
    """
    if requests <= 0:
        return 0.0
    total: float = max(
        0.0,
        sum(map(mul, counts, counts))
        - 2.0 * rate * sum(map(mul, counts, groups))
        + rate * rate * sum(map(mul, groups, groups)),
    )
    used = len(groups) - groups.count(0)
    if used < 2:
        return total / (requests * requests)
    return total * used / (used - 1) / (requests * requests)


def _design_effect(requests: int, count: int, counts: Any, evidence: Evidence) -> float:
    """How much the session groups inflate a side's variance (at least 1).

    The clustered variance at the side's own rate over the binomial one
    (Kish's design effect): near 1 when failures are spread over sessions,
    large when a few sessions hold most of them.
    """
    rate = count / requests
    if rate <= 0.0 or rate >= 1.0:
        return 1.0
    clustered = _clustered_variance(requests, counts, evidence.cluster_requests, rate)
    groups = CLUSTERS - evidence.cluster_requests.count(0)
    if groups < 2:
        return 1.0
    # Under independence the ratio is about χ²(groups-1)/(groups-1): take
    # away two of its standard deviations, so chance spread alone is not
    # read as clustering (heavy sessions give ratios of 10 and more).
    noise = 2.0 * math.sqrt(2.0 / (groups - 1))
    return max(1.0, clustered / (rate * (1.0 - rate) / requests) - noise)


def _skew_corrected(z: float, rate: float, n_c: int, n_p: int) -> float:
    """``z`` moved to the normal quantile with the same tail (Cornish–Fisher).

    Failure counts are skewed to the right (a Poisson count of mean μ has
    skewness 1/√μ), so a normal tail understates how often a few extra
    canary failures happen by chance. The difference of the two rates has
    third cumulant ``rate·(1/n_c² - 1/n_p²)`` against a variance of
    ``rate·(1/n_c + 1/n_p)``; the first Cornish–Fisher term
    ``z - γ·(z² - 1)/6`` gives the corrected quantile.
    """
    if z <= 1.0 or rate <= 0.0:
        return z
    variance = rate * (1.0 / n_c + 1.0 / n_p)
    skewness: float = rate * (1.0 / (n_c * n_c) - 1.0 / (n_p * n_p)) / math.pow(variance, 1.5)
    if skewness <= 0.0:
        return z
    # The expansion turns back down past z = 3/γ; hold it flat from there.
    z = min(z, 3.0 / skewness)
    return z - skewness * (z * z - 1.0) / 6.0


def proportion_test(
    name: str,
    canary: Evidence,
    production: Evidence,
    *,
    bad: bool,
    tolerance: float,
    monitor_ratio: float,
    share: float,
    settings: JudgeSettings,
) -> TestResult:
    """Is the canary's failure rate (``bad``: its bad rate) above production's + ``tolerance``?"""
    n_c, n_p = canary.requests, production.requests
    x_c = canary.bad if bad else canary.failures
    x_p = production.bad if bad else production.failures
    if n_c == 0 or n_p == 0:
        return TestResult(name, 0.0, 0.0, 0.0, False, False)
    p_c, p_p = x_c / n_c, x_p / n_p
    pooled = (x_c + x_p) / (n_c + n_p)
    c_counts = canary.cluster_bad if bad else canary.cluster_failures
    p_counts = production.cluster_bad if bad else production.cluster_failures
    var_c = pooled * (1.0 - pooled) / n_c * _design_effect(n_c, x_c, c_counts, canary)
    var_p = pooled * (1.0 - pooled) / n_p * _design_effect(n_p, x_p, p_counts, production)
    variance = var_c + var_p
    difference = p_c - p_p
    if variance <= 0.0:
        # No failure on either side: nothing to weigh.
        return TestResult(name, difference, 0.0, 0.0, False, False)
    se = math.sqrt(variance)
    z = (difference - tolerance) / se
    u = pooled * pooled / variance
    expected = n_c * (p_p + tolerance)
    small = expected < SMALL_COUNT
    log_m = mixture_log_evidence(z if small else _skew_corrected(z, pooled, n_c, n_p), u)
    threshold = settings.rejection_log_for(share)
    rejected = False
    if log_m >= threshold:
        rejected = True
        if small:
            # Too few failures expected for the normal approximation: the
            # exact evidence of where the failures landed must agree. A
            # tolerance moves the null's share as a ratio at production's rate.
            ratio = 1.0 + (tolerance / p_p if p_p > 0 else 0.0)
            canary_share = ratio * n_c / (ratio * n_c + n_p)
            exact = split_log_evidence(x_c, x_p, canary_share)
            rejected = exact >= threshold
            log_m = min(log_m, exact)
    sign_z = (p_c - monitor_ratio * p_p - tolerance) / se
    return TestResult(name, difference, z, log_m, rejected, rejected or sign_z > SIGN_Z)


def _shift_buckets(ratio: float) -> int:
    return round(math.log(ratio) / _LOG_GAMMA)


def _win_weights(production: Evidence) -> list[int]:
    """For each production bucket lo+j: 2 × (durations in buckets below it) +
    (durations in it), i.e. twice what a canary duration there wins (ties
    count half), in integers.

    A plain loop over a list: compiled, it runs at machine-integer speed
    (2–3× ``accumulate`` and ``map``); interpreted, about as fast."""
    weights: list[int] = []
    below = 0
    for count in production.latency[production.lowest : production.highest + 1].tolist():
        weights.append(below + below + count)
        below += count
    return weights


def mann_whitney_theta(
    canary: Evidence,
    production: Evidence,
    ratio: float,
    weights: list[int] | None = None,
) -> float:
    """θ̂ = P(X_c / ratio > X_p) + ½·P(X_c / ratio = X_p), from the two sketches.

    Dividing by ``ratio`` moves a duration down ``log(ratio)/log(γ)``
    buckets (rounded), so the margin is exact to the sketch's 1 %.
    ``weights`` is ``_win_weights(production)``, when the caller has it.
    """
    n_c, n_p = canary.requests, production.requests
    if n_c == 0 or n_p == 0:
        return 0.5
    if weights is None:
        weights = _win_weights(production)
    shift = _shift_buckets(ratio)
    lo_p, hi_p = production.lowest, production.highest
    counts = canary.latency
    # Canary bucket i meets production bucket i - shift: below lo_p it wins
    # nothing, above hi_p it wins every production duration.
    first = max(canary.lowest, lo_p + shift)
    last = min(canary.highest, hi_p + shift)
    twice = 0
    if first <= last:
        offset = first - shift - lo_p
        for count in counts[first : last + 1].tolist():
            twice += count * weights[offset]
            offset += 1
    above = max(first, last + 1, hi_p + shift + 1)
    if above <= canary.highest:
        twice += 2 * n_p * sum(counts[above : canary.highest + 1])
    return twice / (2 * n_c * n_p)


def latency_test(
    name: str, canary: Evidence, production: Evidence, *, share: float, settings: JudgeSettings
) -> TestResult:
    """Is the canary slower than ``latency_tolerance`` × production (Mann–Whitney)?"""
    n_c, n_p = canary.requests, production.requests
    if n_c < MIN_LATENCY_SAMPLES or n_p < MIN_LATENCY_SAMPLES:
        return TestResult(name, 0.5, 0.0, 0.0, False, False)
    se = math.sqrt((n_c + n_p + 1) / (12.0 * n_c * n_p))
    weights = _win_weights(production)
    theta = mann_whitney_theta(canary, production, settings.latency_tolerance, weights)
    z = (theta - 0.5) / se
    u = (LATENCY_MIXING_SCALE / se) ** 2
    log_m = mixture_log_evidence(z, u)
    rejected = log_m >= settings.rejection_log_for(share)
    sign_theta = mann_whitney_theta(canary, production, settings.monitor_tolerance, weights)
    sign = rejected or (sign_theta - 0.5) / se > SIGN_Z
    return TestResult(name, theta, z, log_m, rejected, sign)


def _p99(evidence: Evidence) -> float:
    """The evidence's p99 duration (for reasons and the score; no test rests on it)."""
    return quantile(evidence.latency, evidence.requests, 0.99, max(evidence.highest, 0))


@dataclass(frozen=True)
class ErrorRateCheck:
    """``errors``: is the canary's failure rate above production's (+ the tolerance)?"""

    name: str = "errors"
    share: float = 0.45
    label: str = "error rate"

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        return proportion_test(
            self.name,
            canary,
            production,
            bad=False,
            tolerance=settings.error_rate_tolerance,
            monitor_ratio=settings.monitor_tolerance,
            share=self.share,
            settings=settings,
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
        return (
            f"canary error rate {canary.error_rate:.4f} is above {comparison}'s "
            f"{production.error_rate:.4f} (z {result.z:.2f}; log-evidence "
            f"{result.log_evidence:.1f} ≥ {settings.rejection_log_for(self.share):.1f})"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        """The canary's failure rate over production's (half a failure added to each: no ∞)."""
        return ((canary.failures + 0.5) / (canary.requests + 1)) / (
            (production.failures + 0.5) / (production.requests + 1)
        )

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        return f"error rate {canary.error_rate:.4f} vs {production.error_rate:.4f}"


@dataclass(frozen=True)
class LatencyCheck:
    """``latency``: is the canary slower than ``latency_tolerance`` × production?"""

    name: str = "latency"
    share: float = 0.45
    label: str = "latency"

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        return latency_test(self.name, canary, production, share=self.share, settings=settings)

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
        return (
            f"canary latency is more than {settings.latency_tolerance:g}x {comparison}'s "
            f"(Mann-Whitney θ {result.estimate:.3f}, z {result.z:.2f}; p99 "
            f"{_p99(canary) * 1000:.1f} ms vs {_p99(production) * 1000:.1f} ms)"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        """The canary's p99 over production's."""
        p99_production = _p99(production)
        return _p99(canary) / p99_production if p99_production > 0 else 1.0

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        return f"latency θ {result.estimate:.3f} at {LATENCY_MARGIN_NOTE}"


@dataclass(frozen=True)
class SloCheck:
    """``slo``: while the canary misses the SLO, is its bad rate above production's?"""

    name: str = "slo"
    share: float = 0.10
    label: str = "SLO"

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        if canary_compliance < settings.slo_threshold:
            return proportion_test(
                self.name,
                canary,
                production,
                bad=True,
                tolerance=settings.error_rate_tolerance,
                monitor_ratio=settings.monitor_tolerance,
                share=self.share,
                settings=settings,
            )
        # The SLO is met: the test cannot act, so its work is skipped.
        return TestResult(self.name, canary.bad_rate - production.bad_rate, 0.0, 0.0, False, False)

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
        return (
            f"canary SLO compliance {canary_compliance:.4f} < {settings.slo_threshold} and "
            f"worse than {comparison}'s {1 - production.bad_rate:.4f} (z {result.z:.2f})"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        return ROLLBACK_LINE

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        return ""


# The checks the gate runs, in the order a rollback names the first that rejected.
DEFAULT_CHECKS: tuple[Check, ...] = (ErrorRateCheck(), LatencyCheck(), SloCheck())
# How the false-rollback rate is split between them (their union stays within it).
ALPHA_SHARES = {check.name: check.share for check in DEFAULT_CHECKS}


def validate_checks(checks: Sequence[Check]) -> None:
    """Raise ``ConfigError`` unless ``checks`` have distinct names and shares
    in (0, 1] that sum to 1 (so together they stay within the false-rollback rate)."""
    shares = {check.name: check.share for check in checks}
    if len(shares) != len(checks):
        names = [check.name for check in checks]
        raise ConfigError("checks", names, "checks with distinct names")
    total = math.fsum(shares.values())
    if (
        not shares
        or not all(0.0 < share <= 1.0 for share in shares.values())
        or abs(total - 1.0) > _SHARES_SUM_TOLERANCE
    ):
        raise ConfigError(
            "checks", shares, "shares of the false-rollback rate in (0, 1] that sum to 1"
        )


def _strength(judged: Sequence[tuple[Check, TestResult]], settings: JudgeSettings) -> float:
    """0 (no evidence of a regression) .. 1 (enough to roll back)."""
    top = max(
        (result.log_evidence / settings.rejection_log_for(check.share) for check, result in judged),
        default=0.0,
    )
    return min(1.0, max(0.0, top))


def _score(verdict: Verdict, strength: float, ratio: float = ROLLBACK_LINE) -> float:
    """The guide's bands: HEALTHY 0.9..1, MONITOR and INSUFFICIENT_DATA 0.8..0.89, ROLLBACK < 0.8."""
    if verdict == ROLLBACK:
        return min(
            ROLLBACK_SCORE - 0.01, ROLLBACK_SCORE * ROLLBACK_LINE / max(ratio, ROLLBACK_LINE)
        )
    if verdict == HEALTHY:
        return HEALTHY_SCORE + (1.0 - HEALTHY_SCORE) * (1.0 - strength)
    return 0.89 - 0.09 * strength


def _figures(
    judged: Sequence[tuple[Check, TestResult]], canary: Evidence, production: Evidence
) -> str:
    """Every check's figures, for a MONITOR or HEALTHY reason."""
    figures = (check.figures(result, canary, production) for check, result in judged)
    return ", ".join(text for text in figures if text)


def judge(
    canary: Evidence,
    production: Evidence,
    settings: JudgeSettings,
    *,
    canary_window_compliance: float | None = None,
    comparison: str = "production",
    checks: tuple[Check, ...] = DEFAULT_CHECKS,
) -> Judgement:
    """Judge the canary against concurrent production sessions by ``checks``.

    ``comparison`` names those sessions in the reason: "production" (the
    stable sessions beside the canary) or "holdback". The checks' shares of
    the false-rollback rate must sum to 1 (``validate_checks``).
    """
    validate_checks(checks)
    compliance = (
        canary_window_compliance if canary_window_compliance is not None else 1 - canary.bad_rate
    )
    judged = [
        (check, check.test(canary, production, settings, canary_compliance=compliance))
        for check in checks
    ]
    strength = _strength(judged, settings)
    ratio = ROLLBACK_LINE
    rejected = [(check, result) for check, result in judged if result.rejected]
    signs = [check.label for check, result in judged if result.sign]
    if rejected:
        check, result = rejected[0]  # the first in the checks' order names the reason
        verdict = ROLLBACK
        reason = check.rollback_reason(
            result,
            canary,
            production,
            settings,
            canary_compliance=compliance,
            comparison=comparison,
        )
        ratio = check.severity(canary, production)
    elif canary.requests < settings.min_requests or production.requests < settings.min_requests:
        verdict = INSUFFICIENT_DATA
        reason = (
            f"{canary.requests} canary and {production.requests} {comparison} outcomes in this "
            f"step, {settings.min_requests} of each needed"
        )
    elif signs:
        verdict = MONITOR
        reason = (
            f"a sign of a canary regression above {settings.monitor_tolerance:g}x {comparison}'s "
            f"({' and '.join(signs)}: {_figures(judged, canary, production)}), not yet enough "
            "to roll back; wait before increasing traffic"
        )
    else:
        verdict = HEALTHY
        reason = (
            f"no sign of a regression above {settings.monitor_tolerance:g}x {comparison}'s "
            f"in {canary.requests} canary requests ({_figures(judged, canary, production)})"
        )
    return Judgement(
        verdict,
        _score(verdict, strength, ratio),
        reason,
        tuple(result for _, result in judged),
        canary_requests=canary.requests,
        production_requests=production.requests,
        comparison=comparison,
    )


def judge_against_objective(
    canary: Evidence,
    long_window: tuple[int, int],
    short_window: tuple[int, int],
    settings: JudgeSettings,
) -> Judgement:
    """Judge a canary with no concurrent production sessions by two burn-rate windows.

    ``long_window`` and ``short_window`` are (requests, bad) over the last
    rollback window and the last twelfth of it. Burn rate = bad fraction /
    (1 - slo_threshold); both windows above ``burn_rate_threshold`` rolls
    back; HEALTHY needs ``min_requests`` in the step and both windows
    within the budget (burn rate ≤ 1).
    """
    budget = max(1.0 - settings.slo_threshold, 1e-9)
    minimum = max(1, settings.min_requests // 10)

    def burn(window: tuple[int, int]) -> float:
        requests, bad = window
        return (bad / requests) / budget if requests else 0.0

    long_burn, short_burn = burn(long_window), burn(short_window)
    enough_windows = long_window[0] >= minimum and short_window[0] >= minimum
    burn_rates: BurnRates = {"long_burn_rate": long_burn, "short_burn_rate": short_burn}
    strength = min(1.0, min(long_burn, short_burn) / settings.burn_rate_threshold)
    if enough_windows and min(long_burn, short_burn) > settings.burn_rate_threshold:
        verdict = ROLLBACK
        reason = (
            f"canary burns its error budget at {long_burn:.1f}x (long window) and "
            f"{short_burn:.1f}x (short window), over {settings.burn_rate_threshold:g}x "
            f"(SLO {settings.slo_threshold})"
        )
        score = min(ROLLBACK_SCORE - 0.01, ROLLBACK_SCORE / max(1.0, long_burn / 2.0))
    elif canary.requests < settings.min_requests:
        verdict = INSUFFICIENT_DATA
        reason = (
            f"{canary.requests} outcomes in this step and no concurrent baseline; "
            f"{settings.min_requests} needed to judge against the SLO objective"
        )
        score = _score(verdict, strength, 1.0)
    elif long_burn > 1.0 or short_burn > 1.0:
        verdict = MONITOR
        reason = (
            f"canary burns its error budget at {long_burn:.1f}x (long) / {short_burn:.1f}x (short)"
        )
        score = _score(verdict, strength, 1.0)
    else:
        verdict = HEALTHY
        reason = (
            f"within the SLO objective (burn rate {long_burn:.2f}x long, {short_burn:.2f}x short)"
        )
        score = _score(verdict, strength, 1.0)
    return Judgement(
        verdict,
        score,
        reason,
        (),
        canary_requests=canary.requests,
        production_requests=0,
        comparison="slo objective",
        burn_rates=burn_rates,
    )


__all__ = [
    "DEFAULT_CHECKS",
    "HEALTHY",
    "INSUFFICIENT_DATA",
    "MONITOR",
    "ROLLBACK",
    "Check",
    "ErrorRateCheck",
    "JudgeSettings",
    "Judgement",
    "LatencyCheck",
    "SloCheck",
    "TestResult",
    "Verdict",
    "judge",
    "judge_against_objective",
    "mann_whitney_theta",
    "mixture_log_evidence",
    "split_log_evidence",
    "validate_checks",
]
