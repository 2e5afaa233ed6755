"""The canary judge: evidence in, verdict out. No clock, no lock, no I/O.

The gate feeds it the evidence of the current step (``Evidence`` for the
canary and for the stable sessions it is compared with) and acts on the
``Judgement``. Every decision to roll back rests on a test that is valid at
every evaluation, however many there are ("anytime-valid"): the chance that
a release as good as production is ever rolled back by it stays under
``false_rollback_rate`` for the whole step, not per look.

Tests (each one-sided: "the canary is worse"):

``errors``
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

``latency``
    H0: the canary's durations divided by ``latency_tolerance`` (1.5×, the
    guide's rollback line) are no slower than production's:
    ``θ = P(X_c / 1.5 > X_p) + ½·P(=) <= ½`` (Mann–Whitney with a margin,
    as in Kayenta's judge). ``θ̂`` is computed from the two latency
    sketches (1 % buckets, the margin rounded to whole buckets: 1.49×),
    ``se² = (n_c + n_p + 1) / (12·n_c·n_p)`` (its null variance), and the
    same normal mixture with ``ρ = 0.1``. Decisions never rest on a p99.

``slo``
    the *bad* requests (failed, or slower than the latency objective):
    the same test as ``errors`` on the bad rate, at the same tolerance.
    A canary whose SLO compliance in the window is below the threshold is
    rolled back only when this test says it is also worse than
    production's concurrent compliance.

The false-rollback rate α is split between the three tests (errors 45 %,
latency 45 %, slo 10 %), so their union stays within it.

Without a concurrent comparison (staging or a 100 % canary with no
holdback) the canary is judged against the SLO objective by two burn-rate
windows (the SRE workbook's multi-window rule): it is rolled back when the
bad fraction exceeds ``burn_rate_threshold × (1 - slo_threshold)`` in both
the long and the short window.

Verdicts:

- ``ROLLBACK``: a test rejected (or both burn windows burn too fast).
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
from dataclasses import dataclass, field
from operator import mul
from typing import Any

from gate_middleware.judge.evidence import CLUSTERS, Evidence
from gate_middleware.judge.sketch import GAMMA, quantile

HEALTHY = "HEALTHY"
MONITOR = "MONITOR"
ROLLBACK = "ROLLBACK"
INSUFFICIENT_DATA = "INSUFFICIENT_DATA"

HEALTHY_SCORE = 0.9
ROLLBACK_SCORE = 0.8
# How the false-rollback rate is split between the tests (their union stays within it).
ALPHA_SHARES = {"errors": 0.45, "latency": 0.45, "slo": 0.10}
SIGN_Z = 1.6448536269514722  # a one-sided 5 % check: "a sign of a regression"
LATENCY_MIXING_SCALE = 0.1  # ρ for the Mann–Whitney test: θ 0.5 → 0.6
MIN_LATENCY_SAMPLES = 10
LATENCY_MARGIN_NOTE = "the rollback line"  # θ is P(canary / tolerance > production)
SMALL_COUNT = 10.0  # below this many expected failures, an exact count check must agree
_SPLIT_RATIOS = (2.0, 3.0, 5.0, 10.0, 20.0)
_LOG_GAMMA = math.log(GAMMA)


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

    def rejection_log(self, test: str) -> float:
        """log(1/α_test): the false-rollback rate split over the tests."""
        return math.log(1.0 / (self.false_rollback_rate * ALPHA_SHARES[test]))


@dataclass(frozen=True)
class TestResult:
    """One test: its statistic, its evidence against H0, and whether it rejected."""

    name: str
    estimate: float  # errors/slo: p̂_c - p̂_p; latency: θ̂
    z: float
    log_evidence: float  # log M; rejects at log(1/α)
    rejected: bool
    sign: bool  # a sign of a regression beyond the MONITOR band

    def to_dict(self) -> dict[str, Any]:
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

    verdict: str
    health_score: float
    reason: str
    tests: tuple[TestResult, ...] = ()
    canary_requests: int = 0
    baseline_requests: int = 0
    comparison: str = "production"  # "production", "holdback" or "slo objective"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def recommendation(self) -> str:
        return f"{self.verdict}: {self.reason}"

    def test(self, name: str) -> TestResult | None:
        for result in self.tests:
            if result.name == name:
                return result
        return None


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


def split_log_evidence(canary_failures: int, baseline_failures: int, canary_share: float) -> float:
    """log of the mixture (equal weights over ratios r) of the likelihood ratios
    for *which side each failure landed on* (Lindon et al. 2022, §4).

    With a fraction ``s`` of the requests on the canary and failure rates in
    the ratio ``r``, each failure is the canary's with probability
    ``θ_r = r·s / (r·s + 1 - s)``; under H0 (``r <= 1``) at most
    ``θ_1 = s``. Each term ``Π θ_r/θ_1`` (canary) ``× (1-θ_r)/(1-θ_1)``
    (baseline) is a supermartingale over the failures for every ``r >= 1``
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
            + baseline_failures * math.log((1.0 - theta) / (1.0 - s))
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


def _skew_corrected(z: float, rate: float, n_c: int, n_b: int) -> float:
    """``z`` moved to the normal quantile with the same tail (Cornish–Fisher).

    Failure counts are skewed to the right (a Poisson count of mean μ has
    skewness 1/√μ), so a normal tail understates how often a few extra
    canary failures happen by chance. The difference of the two rates has
    third cumulant ``rate·(1/n_c² - 1/n_b²)`` against a variance of
    ``rate·(1/n_c + 1/n_b)``; the first Cornish–Fisher term
    ``z - γ·(z² - 1)/6`` gives the corrected quantile.
    """
    if z <= 1.0 or rate <= 0.0:
        return z
    variance = rate * (1.0 / n_c + 1.0 / n_b)
    skewness: float = rate * (1.0 / (n_c * n_c) - 1.0 / (n_b * n_b)) / math.pow(variance, 1.5)
    if skewness <= 0.0:
        return z
    # The expansion turns back down past z = 3/γ; hold it flat from there.
    z = min(z, 3.0 / skewness)
    return z - skewness * (z * z - 1.0) / 6.0


def proportion_test(
    name: str,
    canary: Evidence,
    baseline: Evidence,
    *,
    tolerance: float,
    monitor_ratio: float,
    settings: JudgeSettings,
) -> TestResult:
    """Is the canary's failure (or bad) rate above the baseline's + ``tolerance``?"""
    bad = name == "slo"
    n_c, n_b = canary.requests, baseline.requests
    x_c = canary.bad if bad else canary.failures
    x_b = baseline.bad if bad else baseline.failures
    if n_c == 0 or n_b == 0:
        return TestResult(name, 0.0, 0.0, 0.0, False, False)
    p_c, p_b = x_c / n_c, x_b / n_b
    pooled = (x_c + x_b) / (n_c + n_b)
    c_counts = canary.cluster_bad if bad else canary.cluster_failures
    b_counts = baseline.cluster_bad if bad else baseline.cluster_failures
    var_c = pooled * (1.0 - pooled) / n_c * _design_effect(n_c, x_c, c_counts, canary)
    var_b = pooled * (1.0 - pooled) / n_b * _design_effect(n_b, x_b, b_counts, baseline)
    variance = var_c + var_b
    difference = p_c - p_b
    if variance <= 0.0:
        # No failure on either side: nothing to weigh.
        return TestResult(name, difference, 0.0, 0.0, False, False)
    se = math.sqrt(variance)
    z = (difference - tolerance) / se
    u = pooled * pooled / variance
    expected = n_c * (p_b + tolerance)
    small = expected < SMALL_COUNT
    log_m = mixture_log_evidence(z if small else _skew_corrected(z, pooled, n_c, n_b), u)
    threshold = settings.rejection_log(name)
    rejected = False
    if log_m >= threshold:
        rejected = True
        if small:
            # Too few failures expected for the normal approximation: the
            # exact evidence of where the failures landed must agree. A
            # tolerance moves the null's share as a ratio at production's rate.
            ratio = 1.0 + (tolerance / p_b if p_b > 0 else 0.0)
            share = ratio * n_c / (ratio * n_c + n_b)
            exact = split_log_evidence(x_c, x_b, share)
            rejected = exact >= threshold
            log_m = min(log_m, exact)
    sign_z = (p_c - monitor_ratio * p_b - tolerance) / se
    return TestResult(name, difference, z, log_m, rejected, rejected or sign_z > SIGN_Z)


def _shift_buckets(ratio: float) -> int:
    return round(math.log(ratio) / _LOG_GAMMA)


def _win_weights(baseline: Evidence) -> list[int]:
    """For each baseline bucket lo+j: 2 × (durations in buckets below it) +
    (durations in it), i.e. twice what a canary duration there wins (ties
    count half), in integers.

    A plain loop over a list: compiled, it runs at machine-integer speed
    (2–3× ``accumulate`` and ``map``); interpreted, about as fast."""
    weights: list[int] = []
    below = 0
    for count in baseline.latency[baseline.lowest : baseline.highest + 1].tolist():
        weights.append(below + below + count)
        below += count
    return weights


def mann_whitney_theta(
    canary: Evidence,
    baseline: Evidence,
    ratio: float,
    weights: list[int] | None = None,
) -> float:
    """θ̂ = P(X_c / ratio > X_b) + ½·P(X_c / ratio = X_b), from the two sketches.

    Dividing by ``ratio`` moves a duration down ``log(ratio)/log(γ)``
    buckets (rounded), so the margin is exact to the sketch's 1 %.
    ``weights`` is ``_win_weights(baseline)``, when the caller has it.
    """
    n_c, n_b = canary.requests, baseline.requests
    if n_c == 0 or n_b == 0:
        return 0.5
    if weights is None:
        weights = _win_weights(baseline)
    shift = _shift_buckets(ratio)
    lo_b, hi_b = baseline.lowest, baseline.highest
    counts = canary.latency
    # Canary bucket i meets baseline bucket i - shift: below lo_b it wins
    # nothing, above hi_b it wins every baseline duration.
    first = max(canary.lowest, lo_b + shift)
    last = min(canary.highest, hi_b + shift)
    twice = 0
    if first <= last:
        offset = first - shift - lo_b
        for count in counts[first : last + 1].tolist():
            twice += count * weights[offset]
            offset += 1
    above = max(first, last + 1, hi_b + shift + 1)
    if above <= canary.highest:
        twice += 2 * n_b * sum(counts[above : canary.highest + 1])
    return twice / (2 * n_c * n_b)


def latency_test(canary: Evidence, baseline: Evidence, settings: JudgeSettings) -> TestResult:
    """Is the canary slower than ``latency_tolerance`` × the baseline (Mann–Whitney)?"""
    n_c, n_b = canary.requests, baseline.requests
    if n_c < MIN_LATENCY_SAMPLES or n_b < MIN_LATENCY_SAMPLES:
        return TestResult("latency", 0.5, 0.0, 0.0, False, False)
    se = math.sqrt((n_c + n_b + 1) / (12.0 * n_c * n_b))
    weights = _win_weights(baseline)
    theta = mann_whitney_theta(canary, baseline, settings.latency_tolerance, weights)
    z = (theta - 0.5) / se
    u = (LATENCY_MIXING_SCALE / se) ** 2
    log_m = mixture_log_evidence(z, u)
    rejected = log_m >= settings.rejection_log("latency")
    sign_theta = mann_whitney_theta(canary, baseline, settings.monitor_tolerance, weights)
    sign = rejected or (sign_theta - 0.5) / se > SIGN_Z
    return TestResult("latency", theta, z, log_m, rejected, sign)


def _strength(tests: tuple[TestResult, ...], settings: JudgeSettings) -> float:
    """0 (no evidence of a regression) .. 1 (enough to roll back)."""
    top = max((t.log_evidence / settings.rejection_log(t.name) for t in tests), default=0.0)
    return min(1.0, max(0.0, top))


def _p99(evidence: Evidence) -> float:
    """The evidence's p99 duration (for reasons and the score; no test rests on it)."""
    return quantile(evidence.latency, evidence.requests, 0.99, max(evidence.highest, 0))


def _error_ratio(canary: Evidence, baseline: Evidence) -> float:
    """The canary's failure rate over the baseline's (half a failure added to each: no ∞)."""
    return ((canary.failures + 0.5) / (canary.requests + 1)) / (
        (baseline.failures + 0.5) / (baseline.requests + 1)
    )


def _latency_ratio(canary: Evidence, baseline: Evidence) -> float:
    p99_b = _p99(baseline)
    return _p99(canary) / p99_b if p99_b > 0 else 1.0


def _figures(canary: Evidence, baseline: Evidence, latency: TestResult) -> str:
    return (
        f"error rate {canary.error_rate:.4f} vs {baseline.error_rate:.4f}, "
        f"latency θ {latency.estimate:.3f} at {LATENCY_MARGIN_NOTE}"
    )


def _score(verdict: str, strength: float, ratio: float = 1.5) -> float:
    """The guide's bands: HEALTHY 0.9..1, MONITOR and INSUFFICIENT_DATA 0.8..0.89, ROLLBACK < 0.8."""
    if verdict == ROLLBACK:
        return min(ROLLBACK_SCORE - 0.01, ROLLBACK_SCORE * 1.5 / max(ratio, 1.5))
    if verdict == HEALTHY:
        return HEALTHY_SCORE + (1.0 - HEALTHY_SCORE) * (1.0 - strength)
    return 0.89 - 0.09 * strength


def judge(
    canary: Evidence,
    baseline: Evidence,
    settings: JudgeSettings,
    *,
    canary_window_compliance: float | None = None,
    comparison: str = "production",
) -> Judgement:
    """Judge the canary against a concurrent baseline (production or the holdback)."""
    compliance = (
        canary_window_compliance if canary_window_compliance is not None else 1 - canary.bad_rate
    )
    errors = proportion_test(
        "errors",
        canary,
        baseline,
        tolerance=settings.error_rate_tolerance,
        monitor_ratio=settings.monitor_tolerance,
        settings=settings,
    )
    latency = latency_test(canary, baseline, settings)
    # The SLO test can only act while the SLO is missed: skip its work otherwise.
    slo = (
        proportion_test(
            "slo",
            canary,
            baseline,
            tolerance=settings.error_rate_tolerance,
            monitor_ratio=settings.monitor_tolerance,
            settings=settings,
        )
        if compliance < settings.slo_threshold
        else TestResult("slo", canary.bad_rate - baseline.bad_rate, 0.0, 0.0, False, False)
    )
    tests = (errors, latency, slo)
    strength = _strength(tests, settings)
    slo_violated = slo.rejected and compliance < settings.slo_threshold
    ratio = 1.5
    if errors.rejected or latency.rejected or slo_violated:
        if errors.rejected:
            ratio = _error_ratio(canary, baseline)
            reason = (
                f"canary error rate {canary.error_rate:.4f} is above {comparison}'s "
                f"{baseline.error_rate:.4f} (z {errors.z:.2f}; log-evidence "
                f"{errors.log_evidence:.1f} ≥ {settings.rejection_log('errors'):.1f})"
            )
        elif latency.rejected:
            ratio = _latency_ratio(canary, baseline)
            reason = (
                f"canary latency is more than {settings.latency_tolerance:g}x {comparison}'s "
                f"(Mann-Whitney θ {latency.estimate:.3f}, z {latency.z:.2f}; p99 "
                f"{_p99(canary) * 1000:.1f} ms vs {_p99(baseline) * 1000:.1f} ms)"
            )
        else:
            reason = (
                f"canary SLO compliance {compliance:.4f} < {settings.slo_threshold} and worse than "
                f"{comparison}'s {1 - baseline.bad_rate:.4f} (z {slo.z:.2f})"
            )
        verdict = ROLLBACK
    elif canary.requests < settings.min_requests or baseline.requests < settings.min_requests:
        verdict = INSUFFICIENT_DATA
        reason = (
            f"{canary.requests} canary and {baseline.requests} {comparison} outcomes in this "
            f"step, {settings.min_requests} of each needed"
        )
    elif errors.sign or latency.sign or (slo.sign and compliance < settings.slo_threshold):
        verdict = MONITOR
        signs = [
            name
            for name, result in (("error rate", errors), ("latency", latency), ("SLO", slo))
            if result.sign
        ]
        reason = (
            f"a sign of a canary regression above {settings.monitor_tolerance:g}x {comparison}'s "
            f"({' and '.join(signs)}: {_figures(canary, baseline, latency)}), not yet enough to roll "
            "back; wait before increasing traffic"
        )
    else:
        verdict = HEALTHY
        reason = (
            f"no sign of a regression above {settings.monitor_tolerance:g}x {comparison}'s "
            f"in {canary.requests} canary requests ({_figures(canary, baseline, latency)})"
        )
    return Judgement(
        verdict,
        _score(verdict, strength, ratio),
        reason,
        tests,
        canary_requests=canary.requests,
        baseline_requests=baseline.requests,
        comparison=comparison,
    )


def judge_against_objective(
    canary: Evidence,
    long_window: tuple[int, int],
    short_window: tuple[int, int],
    settings: JudgeSettings,
) -> Judgement:
    """Judge a canary with no concurrent baseline by two burn-rate windows.

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
    details = {"long_burn_rate": long_burn, "short_burn_rate": short_burn}
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
        baseline_requests=0,
        comparison="slo objective",
        details=details,
    )


__all__ = [
    "HEALTHY",
    "INSUFFICIENT_DATA",
    "MONITOR",
    "ROLLBACK",
    "JudgeSettings",
    "Judgement",
    "TestResult",
    "judge",
    "judge_against_objective",
    "mann_whitney_theta",
    "mixture_log_evidence",
    "split_log_evidence",
]
