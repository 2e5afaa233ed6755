"""The canary judge: evidence in, verdict out. No clock, no lock, no I/O.

The gate feeds it the evidence of the current step (``Evidence`` for the
canary and for production, the sessions on the production version it is
compared with: the stable sessions beside it, or the holdback) and acts on
the ``Judgement``. Every decision to roll back rests on a test that is valid
at every evaluation, however many there are ("anytime-valid"): the chance
that a release as good as production is ever rolled back by it stays under
``false_rollback_rate`` for the step, not per look, and, with what the
release's earlier steps carry (``carry``, below), for its whole life.

Checks (each a one-sided test, "the canary is worse"; the ``Check`` protocol
below, ``DEFAULT_CHECKS`` the five the gate runs):

``errors`` (``ErrorRateCheck``)
    H0: ``p_canary - p_production <= error_rate_tolerance``. The statistic
    ``z = (p̂_c - p̂_p - tolerance) / se`` where ``se²`` is, for each side,
    the binomial variance at the pooled rate (H0's) plus what the 64 session
    groups add beyond the binomial at the side's own rate (the clustered,
    "sandwich", variance less the binomial one, when positive:
    ``side_variance``). So a few heavy sessions failing every request do not
    read as thousands of independent failures, on either side. Rare counts are skewed to the
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
    sketches (buckets accurate to 1 %, the margin rounded up to whole buckets: 1.52×,
    so a canary exactly at the line is within it),
    ``se² = (n_c + n_p + 1) / (12·n_c·n_p)`` (its null variance with
    independent requests) plus what the session groups add on each side
    (``grouped_excess``: each request's win against the other side, summed
    per group from the groups' coarse latency histograms, the clustered
    variance less the independent one), and the same normal mixture with
    ``ρ = 0.1``. Decisions never rest on a p99.

``slo`` (``SloCheck``)
    the *bad* requests (failed, or slower than the latency objective):
    the same test as ``errors`` on the bad rate, at the same tolerance.
    A canary whose SLO compliance in the window is below the threshold is
    rolled back only when this test says it is also worse than
    production's concurrent compliance.

``objective`` (``ObjectiveCheck``)
    while production has fewer than ``min_requests`` outcomes in the step
    (a thin baseline: a 99.9 % canary, a quiet night), the canary's bad rate
    against the objective's line (``burn_rate_threshold`` × the error
    budget), by a mixture of likelihood ratios over the step's requests
    (``objective_log_evidence``); with a baseline it does not act.

``routes`` (``RouteErrorCheck``)
    the ``errors`` test on each route slot's own requests (the route
    templates' outcomes, counted in ``ROUTE_SLOTS`` fixed slots:
    ``gate_middleware.judge.evidence``), its evidence the slots' average,
    so a regression on one endpoint is judged at that endpoint's rate; a
    rollback names the route the canary failed on most in the slot.

The false-rollback rate α is split between the checks by their ``share``
(errors 40 %, latency 40 %, slo 5 %, objective 5 %, routes 10 %): the shares of the checks judged
together must sum to 1, so their union stays within α (``judge`` raises
``ConfigError`` otherwise).

Adding a check (the judged business metrics, say): write a class with the
members of ``Check`` — its ``name`` (its key in ``Judgement.tests`` and in
the health's ``evidence``), its ``share``, the ``label`` a MONITOR reason
names it by, ``test`` (an anytime-valid test: reject only when its evidence
reaches ``settings.rejection_log_for(share)``), and the reason, severity and
figures the verdict's text and score take from it — and pass it to
``judge(..., checks=(...))`` beside the others, their shares split again to
sum to 1 (``ErrorRateCheck(share=0.35)``...). Nothing else changes: the judge
rolls back on the first check (in the tuple's order) that rejects, shows a
MONITOR sign for any check with one, and scores by the strongest evidence of
all of them. ``tests/judge/test_checks.py`` plugs in a sixth check this way.

Without a concurrent comparison (staging or a 100 % canary with no
holdback) the canary is judged against the SLO objective
(``judge_against_objective``) by the same anytime-valid test as
``objective``, with the whole of α: rolled back when the step's bad
requests are evidence that its bad rate is above
``burn_rate_threshold × (1 - slo_threshold)``. The two burn-rate windows
(the SRE workbook's multi-window rule) only warn (MONITOR).

Verdicts (``Verdict``):

- ``ROLLBACK``: a check rejected (or, with no baseline, the objective test).
- ``INSUFFICIENT_DATA``: otherwise, while either side has fewer than
  ``min_requests`` outcomes in the step.
- ``HEALTHY``: no sign of a regression beyond the MONITOR band: for errors
  ``z`` of ``p̂_c - 1.1·p̂_p - tolerance`` and for latency the Mann–Whitney
  ``z`` of canary/1.1 against production both below 1.645 (a plain 5 %
  one-sided check, not a decision to act; while fewer than ``SMALL_COUNT``
  canary failures are expected, the exact binomial check of the failures'
  split at 1.1× must agree, so one failure among the canary's first
  requests is no sign), and the SLO met or no worse than production's.
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
from typing import Protocol, TypedDict

from gate_middleware.errors import ConfigError
from gate_middleware.judge.evidence import CLUSTERS, COARSE, COARSE_SHIFT, ROUTE_SLOTS, Evidence
from gate_middleware.judge.sketch import GAMMA, MIN_SECONDS, bucket_index, quantile
from gate_middleware.types import mypyc_attr


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
SIGN_LEVEL = 0.05  # the same check, exact, for a handful of failures
LATENCY_MIXING_SCALE = 0.1  # ρ for the Mann–Whitney test: θ 0.5 → 0.6
MIN_LATENCY_SAMPLES = 10
LATENCY_MARGIN_NOTE = "the rollback line"  # θ is P(canary / tolerance > production)
SMALL_COUNT = 10.0  # below this many expected failures, an exact count check must agree
_SPLIT_RATIOS = (2.0, 3.0, 5.0, 10.0, 20.0)
_OBJECTIVE_ODDS_RATIOS = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)
_LOG_GAMMA = math.log(GAMMA)
_LOG_MIN_SECONDS = math.log(MIN_SECONDS)
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
    latency_objective_seconds: float | None = None  # the SLO check's line, when known
    # log S: what the release's earlier steps carry into this one (``carry``);
    # 0 judges one step on its own.
    carried_log_evidence: float = 0.0

    def rejection_log_for(self, share: float) -> float:
        """Where a check with ``share`` of the false-rollback rate rejects:
        log(1/α_check), less what the release's earlier steps carry."""
        return math.log(1.0 / (self.false_rollback_rate * share)) - self.carried_log_evidence

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
    """The canary's burn rates of its error budget, when judged against the
    objective, and the spans (seconds) they were measured over."""

    long_burn_rate: float
    short_burn_rate: float
    long_window_seconds: float
    short_window_seconds: float


@dataclass(frozen=True)
class BurnWindow:
    """The canary's requests and bad requests over the last ``seconds``."""

    requests: int
    bad: int
    seconds: float


def burn_window_minimum(min_requests: int) -> int:
    """The requests a burn window must hold to warn (a tenth of ``min_requests``):
    a quiet release's windows reach back until they hold it."""
    return max(1, min_requests // 10)


@dataclass(frozen=True)
class TestResult:
    """One test: its statistic, its evidence against H0, and whether it rejected."""

    name: str
    estimate: float  # errors/slo: p̂_c - p̂_p; latency: θ̂
    z: float
    log_evidence: float  # log M; rejects at log(1/α)
    rejected: bool
    sign: bool  # a sign of a regression beyond the MONITOR band
    # False when the check did not act in this evaluation (its work skipped:
    # the SLO met, a baseline present): its evidence is then not known, and
    # the step carries none of it into the next (``carry``).
    acted: bool = True

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
    # log Σ share·M of this step's checks: what the step carries into the next (``carry``)
    step_log_evidence: float = 0.0
    carried_log_evidence: float = 0.0  # what the earlier steps carried into this one

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

    def waiting_for(self, canary: Evidence, production: Evidence, settings: JudgeSettings) -> str:
        """What it still needs before the verdict may be HEALTHY ("" for nothing:
        ``Ready``): a business metric waits for enough sampled sessions."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)
class Ready:
    """A check that needs nothing beyond the requests every check needs (an
    app's own check may subclass it, in the compiled build too)."""

    def waiting_for(self, canary: Evidence, production: Evidence, settings: JudgeSettings) -> str:
        return ""


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
    canary_failures: float, production_failures: float, canary_share: float
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


def binomial_upper_tail(k: int, n: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(n, q): how often ``k`` or more of ``n``
    failures land on a side holding ``q`` of them."""
    if k <= 0:
        return 1.0
    if k > n or q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    odds = q / (1.0 - q)

    def term(x: int) -> float:
        return math.exp(
            math.lgamma(n + 1)
            - math.lgamma(x + 1)
            - math.lgamma(n - x + 1)
            + x * math.log(q)
            + (n - x) * math.log1p(-q)
        )

    if k <= n * q:
        # Most of the mass lies at or above k: 1 less the k terms below it.
        below = 0.0
        current = term(0)
        for x in range(k):
            below += current
            current *= (n - x) / (x + 1) * odds
        return max(0.0, min(1.0, 1.0 - below))
    # Above the mean the terms fall at least geometrically: stop when they vanish.
    total = 0.0
    current = term(k)
    for x in range(k, n + 1):
        total += current
        if current <= total * 1e-16:
            break
        current *= (n - x) / (x + 1) * odds
    return min(1.0, total)


def objective_log_evidence(bad: float, requests: int, line: float) -> float:
    """log of the evidence that the bad rate is above ``line``, anytime-valid.

    The mixture (equal weights) over odds ratios r of the likelihood ratios
    of a bad rate ``p_r`` (``line``'s odds times r) against ``line``, over
    the step's requests::

        M = mean_r  (p_r / line)^bad · ((1 - p_r) / (1 - line))^(requests - bad)

    Each term is a supermartingale for every true rate at or below ``line``
    (``p_r > line``), and so is their mean: ``P(sup M >= 1/α) <= α`` (Ville).
    It needs no baseline, and a few requests that all fail are evidence.
    """
    if requests <= 0 or not 0.0 < line < 1.0:
        return 0.0
    odds = line / (1.0 - line)
    logs = []
    for ratio in _OBJECTIVE_ODDS_RATIOS:
        p = ratio * odds / (1.0 + ratio * odds)
        logs.append(
            bad * math.log(p / line) + (requests - bad) * math.log((1.0 - p) / (1.0 - line))
        )
    top = max(logs)
    return top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))


def objective_line(settings: JudgeSettings) -> float:
    """The bad rate the objective tests hold a canary to: ``burn_rate_threshold``
    times the error budget (``1 - slo_threshold``), below 1."""
    return min(settings.burn_rate_threshold * (1.0 - settings.slo_threshold), 0.999)


def clustered_variance(
    requests: int, counts: Sequence[float], groups: Sequence[int], rate: float
) -> float:
    """The jackknife variance of a side's rate over its session groups.

    ``(K-1)/K · Σ_k (e_k / (1 - h_k))² / n²`` with ``e_k = x_k - rate·n_k``
    (group k's failures against its share of the rate), ``h_k = n_k / n``
    (its share of the side) and K the groups used: the clustered
    ("sandwich") variance with each group's deviation divided by ``1 - h_k``,
    because a group holding much of a side pulls the side's rate towards
    itself and hides its own deviation (MacKinnon and White 1985; CR3 in
    Cameron and Miller 2015). With one heavy session holding half of a
    side, the plain sandwich reports a quarter of the variance.
    """
    if requests <= 0:
        return 0.0
    total = 0.0
    used = 0
    for count, size in zip(counts, groups, strict=True):
        if not size:
            continue
        used += 1
        deviation = (count - rate * size) / max(1.0 - size / requests, 1e-9)
        total += deviation * deviation
    if used < 2:
        return 0.0
    return total * (used - 1) / used / (requests * requests)


def side_variance(
    requests: int, count: float, counts: Sequence[float], evidence: Evidence, pooled: float
) -> float:
    """The variance of one side's rate under H0, robust to sessions that fail together.

    The binomial variance at the pooled rate (what H0 says, sessions
    independent) plus what the session groups add beyond it, measured at
    the side's own rate: the clustered ("sandwich") variance over the groups
    less the binomial one, when positive::

        pooled·(1 - pooled)/n + max(0, V_cl(p̂) - p̂·(1 - p̂)/n)

    Near the binomial at the pooled rate when failures are spread over
    sessions; near the clustered variance when a few sessions hold most of
    them, at the side's own rate, so heavy sessions on the canary widen the
    canary's variance as much as they raise its rate. No fixed discount: the
    excess is kept whole (its noise only ever adds variance).
    """
    null = pooled * (1.0 - pooled) / requests
    rate = count / requests
    if rate <= 0.0 or rate >= 1.0:
        return null
    clustered = clustered_variance(requests, counts, evidence.cluster_requests, rate)
    return null + max(0.0, clustered - rate * (1.0 - rate) / requests)


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
    canary_bad: tuple[float, Sequence[float]] | None = None,
) -> TestResult:
    """Is the canary's failure rate (``bad``: its bad rate) above production's + ``tolerance``?

    ``canary_bad``: the canary's bad count and its groups' counts, when they
    are not the evidence's own (``slow_within_the_line``).
    """
    n_c, n_p = canary.requests, production.requests
    x_c: float = float(canary.bad if bad else canary.failures)
    x_p = production.bad if bad else production.failures
    if n_c == 0 or n_p == 0:
        return TestResult(name, 0.0, 0.0, 0.0, False, False)
    p_c, p_p = x_c / n_c, x_p / n_p
    pooled = (x_c + x_p) / (n_c + n_p)
    c_counts: Sequence[float] = canary.cluster_bad if bad else canary.cluster_failures
    if canary_bad is not None:
        x_c, c_counts = canary_bad
        p_c = x_c / n_c
        pooled = (x_c + x_p) / (n_c + n_p)
    p_counts = production.cluster_bad if bad else production.cluster_failures
    var_c = side_variance(n_c, x_c, c_counts, canary, pooled)
    var_p = side_variance(n_p, x_p, p_counts, production, pooled)
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
    if small:
        # Too few failures expected for the normal approximation: the exact
        # evidence of where the failures landed must agree (the smaller of
        # the two is the step's evidence). A tolerance moves the null's share
        # as a ratio at production's rate.
        ratio = 1.0 + (tolerance / p_p if p_p > 0 else 0.0)
        canary_share = ratio * n_c / (ratio * n_c + n_p)
        log_m = min(log_m, split_log_evidence(x_c, x_p, canary_share))
    rejected = log_m >= settings.rejection_log_for(share)
    sign_z = (p_c - monitor_ratio * p_p - tolerance) / se
    sign = rejected or sign_z > SIGN_Z
    if sign and small and not rejected:
        # A handful of failures: one canary failure among twenty requests
        # beside none in production reads as z 3 at the pooled rate. The
        # sign is then the exact one: are this many of the failures on the
        # canary unlikely (5 %) were its rate monitor_ratio × production's?
        ratio = monitor_ratio + (tolerance / p_p if p_p > 0 else 0.0)
        monitored_share = ratio * n_c / (ratio * n_c + n_p)
        failures = math.floor(x_c + x_p + 0.5)
        canary_failures = math.floor(x_c + 0.5)
        sign = binomial_upper_tail(canary_failures, failures, monitored_share) < SIGN_LEVEL
    return TestResult(name, difference, z, log_m, rejected, sign)


def _shift_buckets(ratio: float) -> int:
    """Whole sketch buckets that move a duration down by at least ``ratio``
    (rounded up: a canary exactly at the line is within it)."""
    return math.ceil(math.log(ratio) / _LOG_GAMMA - 1e-9)


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


def canary_wins(
    canary: Evidence, production: Evidence, shift: int, weights: list[int]
) -> list[float]:
    """For each sketch bucket of the canary (from ``canary.lowest``): the share
    of production's durations that a canary duration there beats once moved
    down ``shift`` buckets (the margin), ties counting half. Their mean over
    the canary's durations is ``θ̂``."""
    n_p, lo_p, hi_p = production.requests, production.lowest, production.highest
    wins: list[float] = []
    for index in range(canary.lowest, canary.highest + 1):
        moved = index - shift
        if moved < lo_p:
            wins.append(0.0)
        elif moved > hi_p:
            wins.append(1.0)
        else:
            wins.append(weights[moved - lo_p] / (2 * n_p))
    return wins


def production_wins(canary: Evidence, production: Evidence, shift: int) -> list[float]:
    """For each sketch bucket of production (from ``production.lowest``): the
    share of the canary's durations, moved down ``shift`` buckets, above a
    production duration there, ties counting half. Their mean over
    production's durations is ``θ̂`` too."""
    n_c, lo_c, hi_c = canary.requests, canary.lowest, canary.highest
    counts = canary.latency
    above = [0] * (hi_c - lo_c + 2)  # above[k]: canary durations in buckets >= lo_c + k
    for k in range(hi_c - lo_c, -1, -1):
        above[k] = above[k + 1] + counts[lo_c + k]

    def at_or_above(index: int) -> int:
        if index <= lo_c:
            return n_c
        return above[index - lo_c] if index <= hi_c else 0

    wins: list[float] = []
    for index in range(production.lowest, production.highest + 1):
        moved = index + shift  # the canary bucket that lands on this one
        tie = counts[moved] if lo_c <= moved <= hi_c else 0
        wins.append((2 * at_or_above(moved + 1) + tie) / (2 * n_c))
    return wins


def grouped_excess(side: Evidence, wins: Sequence[float], theta: float) -> float:
    """What the session groups add to the variance of a side's mean win
    beyond independent requests (0 when they add nothing).

    ``wins`` are the side's per-bucket wins (``canary_wins`` or
    ``production_wins``). Each group's sum of wins is read from its coarse
    histogram, every duration in a coarse bucket taking that bucket's mean
    win ``m_b``; with ``S_k`` a group's sum and ``n_k`` its requests::

        (K-1)/K·Σ_k ((S_k - θ̂·n_k) / (1 - n_k/n))² / n²  -  Σ_b c_b·(m_b - θ̂)² / n²

    the groups' jackknife variance (as ``clustered_variance``) less the one the same coarse wins
    give when every request is its own unit; when positive. Within-bucket
    differences are left out of both terms alike.
    """
    n = side.requests
    if n <= 0 or not side.latency_grouped:
        return 0.0
    first = side.lowest >> COARSE_SHIFT
    width = (side.highest >> COARSE_SHIFT) - first + 1
    sums = [0.0] * width
    counts = [0] * width
    for offset, win in enumerate(wins):
        index = side.lowest + offset
        count = side.latency[index]
        if count:
            coarse = (index >> COARSE_SHIFT) - first
            sums[coarse] += count * win
            counts[coarse] += count
    means = [total / count if count else 0.0 for total, count in zip(sums, counts, strict=True)]
    independent = 0.0
    for count, mean in zip(counts, means, strict=True):
        independent += count * (mean - theta) * (mean - theta)
    clustered = 0.0
    used = 0
    cells = side.cluster_latency
    for group in range(CLUSTERS):
        requests = side.cluster_requests[group]
        if not requests:
            continue
        used += 1
        base = group * COARSE + first
        total = 0.0
        for coarse in range(width):
            total += cells[base + coarse] * means[coarse]
        # As in clustered_variance: a group's deviation over 1 - its share.
        deviation = (total - theta * requests) / max(1.0 - requests / n, 1e-9)
        clustered += deviation * deviation
    if used < 2:
        return 0.0
    return max(0.0, (clustered * (used - 1) / used - independent) / (n * n))


def latency_test(
    name: str, canary: Evidence, production: Evidence, *, share: float, settings: JudgeSettings
) -> TestResult:
    """Is the canary slower than ``latency_tolerance`` × production (Mann–Whitney)?"""
    n_c, n_p = canary.requests, production.requests
    if n_c < MIN_LATENCY_SAMPLES or n_p < MIN_LATENCY_SAMPLES:
        return TestResult(name, 0.5, 0.0, 0.0, False, False)
    weights = _win_weights(production)
    theta = mann_whitney_theta(canary, production, settings.latency_tolerance, weights)
    # The null variance of θ̂ with independent requests, plus what the session
    # groups add on each side (a slow user is slow on every request).
    shift = _shift_buckets(settings.latency_tolerance)
    variance = (
        (n_c + n_p + 1) / (12.0 * n_c * n_p)
        + grouped_excess(canary, canary_wins(canary, production, shift, weights), theta)
        + grouped_excess(production, production_wins(canary, production, shift), theta)
    )
    se = math.sqrt(variance)
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
class ErrorRateCheck(Ready):
    """``errors``: is the canary's failure rate above production's (+ the tolerance)?"""

    name: str = "errors"
    share: float = 0.40
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
class LatencyCheck(Ready):
    """``latency``: is the canary slower than ``latency_tolerance`` × production?"""

    name: str = "latency"
    share: float = 0.40
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


def slow_within_the_line(
    canary: Evidence, settings: JudgeSettings
) -> tuple[float, list[float]] | None:
    """The canary's bad count, and its groups', with its durations divided by
    ``latency_tolerance``: a request slower than the objective but within
    the rollback line (objective < duration ≤ objective × 1.5) no longer
    counts as bad, so a slowdown under the line cannot roll back through
    the SLO either. ``None`` without an objective or a tolerance.

    The band is read from the sketch (the two buckets at its ends in part,
    by the log-position of the line within them) and spread over the groups
    by their coarse histograms (each coarse bucket's part in the band as in
    the whole sketch). The count keeps at least the failures.
    """
    objective = settings.latency_objective_seconds
    if objective is None or settings.latency_tolerance <= 1.0 or not canary.requests:
        return None
    line = objective * settings.latency_tolerance
    low, high = bucket_index(objective), bucket_index(line)
    inside: dict[int, float] = {}  # coarse bucket -> durations in the band
    for index in range(max(low, canary.lowest), min(high, canary.highest) + 1):
        count = canary.latency[index]
        if not count:
            continue
        # bucket index covers (MIN·γ^(index-1), MIN·γ^index]: its part in (objective, line]
        top = index * _LOG_GAMMA + _LOG_MIN_SECONDS
        bottom = top - _LOG_GAMMA
        part = min(top, math.log(line)) - max(bottom, math.log(objective))
        if part > 0.0:
            coarse = index >> COARSE_SHIFT
            inside[coarse] = inside.get(coarse, 0.0) + count * min(1.0, part / _LOG_GAMMA)
    shares: dict[int, float] = {}
    for coarse, in_band in inside.items():
        first = coarse << COARSE_SHIFT
        shares[coarse] = in_band / sum(canary.latency[first : first + (1 << COARSE_SHIFT)])
    counts: list[float] = []
    for group in range(CLUSTERS):
        base = group * COARSE
        in_band = sum(
            canary.cluster_latency[base + coarse] * share for coarse, share in shares.items()
        )
        # Not floored per group: a coarse bucket's share is spread evenly over
        # the groups, and flooring the groups it overshoots would bias the sum.
        counts.append(canary.cluster_bad[group] - in_band)
    return max(float(canary.failures), math.fsum(counts)), counts


@dataclass(frozen=True)
class SloCheck(Ready):
    """``slo``: while the canary misses the SLO, is its bad rate above production's?"""

    name: str = "slo"
    share: float = 0.05
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
                canary_bad=slow_within_the_line(canary, settings),
            )
        # The SLO is met: the test cannot act, so its work is skipped.
        return TestResult(
            self.name, canary.bad_rate - production.bad_rate, 0.0, 0.0, False, False, acted=False
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
            f"canary SLO compliance {canary_compliance:.4f} < {settings.slo_threshold} and "
            f"worse than {comparison}'s {1 - production.bad_rate:.4f} (z {result.z:.2f})"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        return ROLLBACK_LINE

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        return ""


@dataclass(frozen=True)
class ObjectiveCheck(Ready):
    """``objective``: with a thin baseline, is the canary's bad rate above the
    objective's line (``burn_rate_threshold`` × the error budget)?

    While production has at least ``min_requests`` outcomes in the step the
    comparison with it decides, and this check does not act (an incident
    that hits everyone is not the release's fault). Below that (a 99.9 %
    canary, a quiet night) it is what catches a canary that fails: a few
    failed requests in a row are evidence here, with no baseline needed.
    """

    name: str = "objective"
    share: float = 0.05
    label: str = "SLO objective"

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        line = objective_line(settings)
        rate = canary.bad_rate
        if production.requests >= settings.min_requests or not canary.requests:
            return TestResult(self.name, rate, 0.0, 0.0, False, False, acted=False)
        log_m = objective_log_evidence(canary.bad, canary.requests, line)
        z = (rate - line) / math.sqrt(line * (1.0 - line) / canary.requests)
        rejected = log_m >= settings.rejection_log_for(self.share)
        return TestResult(self.name, rate, z, log_m, rejected, rejected)

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
            f"canary bad rate {canary.bad_rate:.4f} is above the objective's line "
            f"{objective_line(settings):.4f} ({settings.burn_rate_threshold:g}x the error "
            f"budget) with a thin baseline ({production.requests} {comparison} requests in "
            f"this step; log-evidence {result.log_evidence:.1f} ≥ "
            f"{settings.rejection_log_for(self.share):.1f})"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        return ROLLBACK_LINE

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        return ""


def _route_slot_results(
    canary: Evidence, production: Evidence, settings: JudgeSettings, share: float
) -> list[tuple[int, TestResult]]:
    """The errors test of each route slot with failures on either side and
    requests on both (the slots the route check weighs)."""
    results: list[tuple[int, TestResult]] = []
    for slot in range(ROUTE_SLOTS):
        first = slot * CLUSTERS
        last = first + CLUSTERS
        if (
            not any(canary.route_requests[first:last])
            or not any(production.route_requests[first:last])
            or not (
                any(canary.route_failures[first:last]) or any(production.route_failures[first:last])
            )
        ):
            continue
        result = proportion_test(
            "routes",
            canary.route(slot),
            production.route(slot),
            bad=False,
            tolerance=settings.error_rate_tolerance,
            monitor_ratio=settings.monitor_tolerance,
            share=share / ROUTE_SLOTS,
            settings=settings,
        )
        results.append((slot, result))
    return results


def _route_name(canary: Evidence, slot: int) -> str:
    """The route template the canary failed on most in ``slot``, for a reason."""
    names = canary.route(slot).route_names
    if not names:
        return f"route slot {slot}"
    top = max(names, key=lambda name: (names[name], name))
    others = len(names) - 1
    return f"route {top}" + (f" (and {others} more in its slot)" if others else "")


_NAMING_SETTINGS = JudgeSettings()


@dataclass(frozen=True)
class RouteErrorCheck(Ready):
    """``routes``: is the canary's failure rate on one route above production's there?

    Each of the ``ROUTE_SLOTS`` route slots (``Evidence.route``) gets the
    ``errors`` test on its own requests, so a regression confined to an
    endpoint with 2 % of the traffic is judged at that endpoint's rate, not
    diluted fifty times. The check's evidence is the slots' average
    ``(1/ROUTE_SLOTS)·Σ M_slot`` (a slot not yet weighed counts 0, below
    its true value): a mixture of test martingales, so rejecting when it
    reaches ``1/(α·share)`` keeps the check within its share however many
    routes an app has. Its MONITOR sign needs half the rejection line in
    evidence (a plain 5 % check on sixteen slots would flag most good
    releases somewhere).
    """

    name: str = "routes"
    share: float = 0.10
    label: str = "error rate on a route"

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> TestResult:
        results = _route_slot_results(canary, production, settings, self.share)
        if not results:
            return TestResult(self.name, 0.0, 0.0, 0.0, False, False, acted=False)
        log_m = _log_sum_exp([result.log_evidence for _, result in results]) - math.log(ROUTE_SLOTS)
        worst = max(results, key=lambda item: item[1].log_evidence)[1]
        line = settings.rejection_log_for(self.share)
        rejected = log_m >= line
        sign = rejected or (log_m > 0.0 and log_m >= line / 2.0)
        return TestResult(self.name, worst.estimate, worst.z, log_m, rejected, sign)

    def _worst(self, canary: Evidence, production: Evidence) -> int | None:
        """The slot with the strongest evidence at no tolerance: the one a
        reason names and a score is taken from (the check's own settings do
        not reach ``severity``, so all three choose it the same way)."""
        results = _route_slot_results(canary, production, _NAMING_SETTINGS, self.share)
        if not results:
            return None
        return max(results, key=lambda item: item[1].log_evidence)[0]

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
        slot = self._worst(canary, production)
        if slot is None:
            return f"canary error rate on a route above {comparison}'s"
        mine, theirs = canary.route(slot), production.route(slot)
        return (
            f"canary error rate on {_route_name(canary, slot)} {mine.error_rate:.4f} "
            f"({mine.failures} of {mine.requests}) is above {comparison}'s "
            f"{theirs.error_rate:.4f} there ({theirs.failures} of {theirs.requests}; z "
            f"{result.z:.2f}; log-evidence over the {ROUTE_SLOTS} route slots "
            f"{result.log_evidence:.1f} ≥ {settings.rejection_log_for(self.share):.1f})"
        )

    def severity(self, canary: Evidence, production: Evidence) -> float:
        slot = self._worst(canary, production)
        if slot is None:
            return ROLLBACK_LINE
        return ErrorRateCheck().severity(canary.route(slot), production.route(slot))

    def figures(self, result: TestResult, canary: Evidence, production: Evidence) -> str:
        if not result.sign:
            return ""
        slot = self._worst(canary, production)
        if slot is None:
            return ""
        mine, theirs = canary.route(slot), production.route(slot)
        return (
            f"error rate on {_route_name(canary, slot)} {mine.error_rate:.4f} "
            f"vs {theirs.error_rate:.4f}"
        )


# The checks the gate runs, in the order a rollback names the first that rejected.
DEFAULT_CHECKS: tuple[Check, ...] = (
    ErrorRateCheck(),
    LatencyCheck(),
    SloCheck(),
    ObjectiveCheck(),
    RouteErrorCheck(),
)
# How the false-rollback rate is split between them (their union stays within it).
ALPHA_SHARES = {check.name: check.share for check in DEFAULT_CHECKS}


def validate_checks(checks: Sequence[Check]) -> None:
    """Raise ``ConfigError`` unless ``checks`` have every member of ``Check``
    (``waiting_for`` is the one a check written before it lacks), distinct
    names and shares in (0, 1] that sum to 1 (so together they stay within
    the false-rollback rate)."""
    for check in checks:
        if not callable(getattr(check, "waiting_for", None)):
            raise ConfigError(
                "checks",
                type(check).__name__,
                "checks with every member of Check: this one lacks waiting_for "
                "(subclass gate_middleware.judge.statistics.Ready: it waits for nothing)",
            )
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


# -- one budget for a release's whole life ----------------------------------------
#
# Each step's checks give e-processes M_i (test supermartingales while the
# release is no worse than production); rejecting at S·s_i·M_i >= 1/α
# implies S·Σ s_i·M_i >= 1/α. Across steps the gate keeps S, the mass the
# release's earlier steps carry: S_1 = 1 - RESTART_SHARE, and at the end of
# step k, S_{k+1} = S_k·Σ s_i·M_i(end) + w_{k+1} with
# w_k = RESTART_SHARE / ((k-1)·k) (these sum to RESTART_SHARE). The process
# S_k·Σ s_i·M_i(t) + Σ_{j>k} w_j starts at 1 and is a test supermartingale
# over the release's whole life (a mixture over the steps it could have
# restarted at), so by Ville's inequality the release is rolled back
# falsely with probability at most α, however many steps and evaluations.
# Evidence of a regression in one step carries into the next; a good
# release's steps carry little, and each new step still starts from at
# least w_k (a regression that appears only at a larger share is judged
# from that step on, at a stricter line).

RESTART_SHARE = 0.1
NO_EVIDENCE = -1e300  # log M of a step whose checks all stood aside (M = 0, and JSON can say it)


def release_start_log_evidence() -> float:
    """log S_1: what the first step of a release starts from."""
    return math.log(1.0 - RESTART_SHARE)


def restart_weight(step: int) -> float:
    """w_k: the mass a release's ``step``-th step (from 2) starts afresh with."""
    if step < 2:
        raise ValueError(f"step must be 2 or more, got {step}")
    return RESTART_SHARE / ((step - 1) * step)


def carry(carried: float, step_log_evidence: float, next_step: int) -> float:
    """log S_{k+1}: what step k (started from ``carried``, ending with
    ``step_log_evidence``; ``NO_EVIDENCE`` for none) carries into the
    release's ``next_step``-th step."""
    return _log_sum_exp((carried + step_log_evidence, math.log(restart_weight(next_step))))


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


def _step_log_evidence(judged: Sequence[tuple[Check, TestResult]]) -> float:
    """log Σ s_i·M_i: the step's checks together (what it carries on).

    A check that did not act (``TestResult.acted``) counts as M = 0: its
    e-process was not computed, and any value at most the true one keeps
    the carried process a supermartingale (1 would not)."""
    terms = [
        math.log(check.share) + result.log_evidence for check, result in judged if result.acted
    ]
    return _log_sum_exp(terms) if terms else NO_EVIDENCE


def _carried_note(settings: JudgeSettings) -> str:
    """How far the release's whole-life budget moved the line (for a rollback's
    reason): 0.1 up in its first step, then by what its earlier steps carried."""
    carried = settings.carried_log_evidence
    if abs(carried) < 0.05:
        return ""
    return f"; the release's whole-life budget moved the line by {-carried:+.1f}"


def _strength(judged: Sequence[tuple[Check, TestResult]], settings: JudgeSettings) -> float:
    """0 (no evidence of a regression) .. 1 (enough to roll back)."""
    top = max(
        (
            result.log_evidence / max(settings.rejection_log_for(check.share), 0.1)
            for check, result in judged
        ),
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
    figures = [check.figures(result, canary, production) for check, result in judged]
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
        reason += _carried_note(settings)
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
    elif waiting := [
        text for check, _ in judged if (text := check.waiting_for(canary, production, settings))
    ]:
        verdict = INSUFFICIENT_DATA
        reason = "; ".join(waiting)
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
        step_log_evidence=_step_log_evidence(judged),
        carried_log_evidence=settings.carried_log_evidence,
    )


def judge_against_objective(
    canary: Evidence,
    long_window: BurnWindow,
    short_window: BurnWindow,
    settings: JudgeSettings,
) -> Judgement:
    """Judge a canary with no concurrent production sessions against the SLO objective.

    Rolled back when ``objective_log_evidence`` of the step's bad requests
    against the line (``burn_rate_threshold`` × the error budget) reaches
    ``1/false_rollback_rate``: a canary whose bad rate stays at or below the
    line is rolled back with probability at most ``false_rollback_rate``
    over the whole step, however quiet or long. The two burn-rate windows
    (``long_window`` and ``short_window``: the last rollback window and the
    last twelfth of it, each reaching further back while it holds fewer than
    ``burn_window_minimum`` requests; burn rate = bad fraction /
    (1 - slo_threshold)) only warn: MONITOR when both burn above 1 (the
    SRE workbook's rule: the long one says the burn is sustained, the short
    one that it is still going on) with enough requests in both; HEALTHY needs ``min_requests`` in the step and
    no such sign.
    """
    budget = max(1.0 - settings.slo_threshold, 1e-9)
    minimum = burn_window_minimum(settings.min_requests)

    def burn(window: BurnWindow) -> float:
        return (window.bad / window.requests) / budget if window.requests else 0.0

    long_burn, short_burn = burn(long_window), burn(short_window)
    enough_windows = long_window.requests >= minimum and short_window.requests >= minimum
    burn_rates: BurnRates = {
        "long_burn_rate": long_burn,
        "short_burn_rate": short_burn,
        "long_window_seconds": long_window.seconds,
        "short_window_seconds": short_window.seconds,
    }
    line = objective_line(settings)
    log_m = objective_log_evidence(canary.bad, canary.requests, line)
    threshold = settings.rejection_log_for(1.0)
    rate = canary.bad_rate
    z = (rate - line) / math.sqrt(line * (1.0 - line) / canary.requests) if canary.requests else 0.0
    # Never on no request at all (a line moved below 0 by a carried budget).
    rejected = canary.requests > 0 and log_m >= threshold
    objective = TestResult("objective", rate, z, log_m, rejected, rejected)
    strength = min(1.0, max(0.0, log_m) / max(threshold, 0.1))
    if objective.rejected:
        verdict = ROLLBACK
        reason = (
            f"canary bad rate {rate:.4f} over the step's {canary.requests} requests is above "
            f"{settings.burn_rate_threshold:g}x the error budget ({line:.4f}, SLO "
            f"{settings.slo_threshold}; log-evidence {log_m:.1f} ≥ {threshold:.1f}; burn rate "
            f"{long_burn:.1f}x long, {short_burn:.1f}x short)"
        ) + _carried_note(settings)
        score = min(ROLLBACK_SCORE - 0.01, ROLLBACK_SCORE / max(1.0, rate / line))
    elif canary.requests < settings.min_requests:
        verdict = INSUFFICIENT_DATA
        reason = (
            f"{canary.requests} outcomes in this step and no concurrent baseline; "
            f"{settings.min_requests} needed to judge against the SLO objective"
        )
        score = _score(verdict, strength, 1.0)
    elif enough_windows and long_burn > 1.0 and short_burn > 1.0:
        verdict = MONITOR
        reason = (
            f"canary burns its error budget at {long_burn:.1f}x over the last "
            f"{long_window.seconds:.0f} s ({long_window.requests} requests) / {short_burn:.1f}x "
            f"over the last {short_window.seconds:.0f} s ({short_window.requests} requests)"
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
        (objective,),
        canary_requests=canary.requests,
        production_requests=0,
        comparison="slo objective",
        burn_rates=burn_rates,
        step_log_evidence=log_m,
        carried_log_evidence=settings.carried_log_evidence,
    )


__all__ = [
    "BurnWindow",
    "DEFAULT_CHECKS",
    "HEALTHY",
    "INSUFFICIENT_DATA",
    "MONITOR",
    "ROLLBACK",
    "Check",
    "ErrorRateCheck",
    "Ready",
    "JudgeSettings",
    "Judgement",
    "LatencyCheck",
    "RouteErrorCheck",
    "SloCheck",
    "TestResult",
    "Verdict",
    "burn_window_minimum",
    "carry",
    "judge",
    "judge_against_objective",
    "mann_whitney_theta",
    "mixture_log_evidence",
    "release_start_log_evidence",
    "restart_weight",
    "split_log_evidence",
    "validate_checks",
]
