"""The judge's checks: the ``Check`` port, another check plugged in, and verdicts as an enum."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.judge import statistics
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.statistics import (
    ALPHA_SHARES,
    DEFAULT_CHECKS,
    HEALTHY,
    INSUFFICIENT_DATA,
    MONITOR,
    ROLLBACK,
    Check,
    ErrorRateCheck,
    JudgeSettings,
    LatencyCheck,
    ObjectiveCheck,
    Ready,
    RouteErrorCheck,
    SloCheck,
    Verdict,
    judge,
)
from gate_middleware.judge.verdict import CanaryHealth, WindowStats, assess, no_release
from tests.support import FakeClock, healthy_traffic


def evidence_of(requests: int, failures: int = 0, duration: float = 0.05) -> Evidence:
    evidence = Evidence()
    for i in range(requests):
        evidence.record(i >= failures, i >= failures, duration, i)
    return evidence


@dataclass(frozen=True)
class CheckoutCheck(Ready):
    """A check written by an app (the business metrics' own is
    ``gate_middleware.judge.guardrails.MetricCheck``): here its evidence is
    given, where a real one would test the canary against production
    anytime-validly. ``Ready`` gives it ``waiting_for`` (it waits for nothing)."""

    log_evidence: float
    sign: bool = False
    name: str = "checkout"
    share: float = 0.10
    label: str = "checkout rate"

    def test(
        self,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
    ) -> statistics.TestResult:
        rejected = self.log_evidence >= settings.rejection_log_for(self.share)
        return statistics.TestResult(
            self.name, -0.02, 3.0, self.log_evidence, rejected, rejected or self.sign
        )

    def rollback_reason(
        self,
        result: statistics.TestResult,
        canary: Evidence,
        production: Evidence,
        settings: JudgeSettings,
        *,
        canary_compliance: float,
        comparison: str,
    ) -> str:
        return f"canary checkout rate is below {comparison}'s (z {result.z:.2f})"

    def severity(self, canary: Evidence, production: Evidence) -> float:
        return 3.0

    def figures(self, result: statistics.TestResult, canary: Evidence, production: Evidence) -> str:
        return f"checkout rate {result.estimate:+.2f}"


def with_another(checkout: CheckoutCheck) -> tuple[Check, ...]:
    """The default checks with the rate split again to make room for one more."""
    return (
        ErrorRateCheck(share=0.35),
        LatencyCheck(share=0.35),
        SloCheck(),
        ObjectiveCheck(),
        RouteErrorCheck(),
        checkout,
    )


SETTINGS = JudgeSettings()
CANARY, PRODUCTION = evidence_of(500), evidence_of(2000)


# -- the Check port -----------------------------------------------------------


@pytest.mark.parametrize("check", [*DEFAULT_CHECKS, CheckoutCheck(0.0)], ids=lambda c: c.name)
def test_every_check_keeps_the_contract(check: Check) -> None:
    """What the judge relies on, for each check: its result carries its name,
    a canary like production is not rolled back, and the texts exist."""
    assert 0.0 < check.share <= 1.0 and check.label
    same = evidence_of(1000, failures=10)
    result = check.test(same, same.copy(), SETTINGS, canary_compliance=0.5)
    assert result.name == check.name
    assert not result.rejected
    assert result.log_evidence < SETTINGS.rejection_log_for(check.share)
    reason = check.rollback_reason(
        result, same, same, SETTINGS, canary_compliance=0.5, comparison="production"
    )
    assert isinstance(reason, str) and reason
    assert check.severity(same, same) > 0.0
    assert isinstance(check.figures(result, same, same), str)


def test_the_default_checks_split_the_whole_rate() -> None:
    names = ["errors", "latency", "slo", "objective", "routes"]
    assert [check.name for check in DEFAULT_CHECKS] == names
    assert math.fsum(check.share for check in DEFAULT_CHECKS) == 1.0
    assert ALPHA_SHARES == {
        "errors": 0.40,
        "latency": 0.40,
        "slo": 0.05,
        "objective": 0.05,
        "routes": 0.10,
    }
    assert SETTINGS.rejection_log("errors") == SETTINGS.rejection_log_for(0.40)


def test_another_check_takes_part_in_the_verdict() -> None:
    checkout = CheckoutCheck(log_evidence=20.0)
    judgement = judge(CANARY, PRODUCTION, SETTINGS, checks=with_another(checkout))
    assert judgement.verdict == ROLLBACK
    assert judgement.reason == "canary checkout rate is below production's (z 3.00)"
    assert judgement.health_score == pytest.approx(0.8 * 1.5 / 3.0)  # its severity
    assert [test.name for test in judgement.tests] == [
        "errors",
        "latency",
        "slo",
        "objective",
        "routes",
        "checkout",
    ]
    health = assess(5.0, WindowStats(), WindowStats(), judgement)
    assert health.verdict == ROLLBACK
    assert health.evidence["tests"]["checkout"]["log_evidence"] == 20.0

    # A sign without a rejection: MONITOR, named by its label, with its figures.
    signed = judge(CANARY, PRODUCTION, SETTINGS, checks=with_another(CheckoutCheck(0.0, True)))
    assert signed.verdict == MONITOR
    assert "(checkout rate: error rate 0.0000 vs 0.0000, latency θ" in signed.reason
    assert ", checkout rate -0.02)" in signed.reason

    # Without it, the same evidence is healthy.
    assert judge(CANARY, PRODUCTION, SETTINGS).verdict == HEALTHY


def test_another_check_takes_part_in_the_budget() -> None:
    """It rejects at its own share of the rate, the others at theirs, and
    the shares must still sum to 1."""
    threshold = math.log(1 / (SETTINGS.false_rollback_rate * 0.10))  # 6.9
    below = judge(CANARY, PRODUCTION, SETTINGS, checks=with_another(CheckoutCheck(threshold - 0.1)))
    at = judge(CANARY, PRODUCTION, SETTINGS, checks=with_another(CheckoutCheck(threshold)))
    assert (below.verdict, at.verdict) == (HEALTHY, ROLLBACK)
    # Its evidence counts in the score against its own threshold: half-way, half the band.
    half = judge(CANARY, PRODUCTION, SETTINGS, checks=with_another(CheckoutCheck(threshold / 2)))
    assert half.health_score == pytest.approx(0.95)

    # The errors check now rejects at log(1/(α·0.35)), no longer at log(1/(α·0.40)).
    failing = evidence_of(500, failures=60)
    errors = judge(
        failing, evidence_of(2000, failures=20), SETTINGS, checks=with_another(CheckoutCheck(0.0))
    )
    assert errors.verdict == ROLLBACK
    assert errors.reason.endswith(f"≥ {math.log(1 / (0.01 * 0.35)):.1f})")
    assert f"{math.log(1 / (0.01 * 0.35)):.1f}" != f"{math.log(1 / (0.01 * 0.40)):.1f}"

    # The default checks and one more would spend more than the whole rate.
    with pytest.raises(ConfigError, match="sum to 1"):
        judge(CANARY, PRODUCTION, SETTINGS, checks=(*DEFAULT_CHECKS, CheckoutCheck(0.0)))
    with pytest.raises(ConfigError, match="distinct names"):
        judge(
            CANARY,
            PRODUCTION,
            SETTINGS,
            checks=(ErrorRateCheck(share=0.5), ErrorRateCheck(share=0.5)),
        )
    with pytest.raises(ConfigError):
        judge(CANARY, PRODUCTION, SETTINGS, checks=())


# -- verdicts as an enum --------------------------------------------------------


def test_verdicts_are_an_enum_that_reads_as_the_plain_strings() -> None:
    assert list(Verdict) == [HEALTHY, MONITOR, ROLLBACK, INSUFFICIENT_DATA]
    assert HEALTHY is Verdict.HEALTHY and HEALTHY == "HEALTHY" and f"{ROLLBACK}" == "ROLLBACK"
    judgement = judge(CANARY, evidence_of(20), SETTINGS)
    assert judgement.verdict is INSUFFICIENT_DATA
    assert judgement.recommendation.startswith("INSUFFICIENT_DATA: 500 canary and 20 production")


def test_the_health_carries_its_verdict_and_publishes_it_as_a_string() -> None:
    health = assess(5.0, WindowStats(), WindowStats(), judge(CANARY, PRODUCTION, SETTINGS))
    assert health.verdict is Verdict.HEALTHY
    published = health.to_dict()
    assert type(published["verdict"]) is str and published["verdict"] == "HEALTHY"
    assert json.loads(json.dumps(published))["verdict"] == "HEALTHY"
    assert type(no_release(WindowStats(), WindowStats()).to_dict()["verdict"]) is str

    # Carried, not read back from the text ...
    carried = CanaryHealth(5.0, 1, 1, 0.0, 0.0, 0.0, 0.0, 0.85, "reason text", verdict=MONITOR)
    assert carried.verdict is Verdict.MONITOR
    # ... except for a stored record decoded without its "verdict" key.
    fields = {key: value for key, value in published.items() if key != "verdict"}
    assert CanaryHealth(**fields).verdict is Verdict.HEALTHY
    assert CanaryHealth(**fields) == health


# -- the gate runs the checks it is given ------------------------------------


def test_the_gate_rolls_back_on_a_check_it_was_given() -> None:
    """``PromotionGate(checks=...)`` is the seam: the same traffic is healthy
    with the default checks and rolled back, by the plugged-in check's
    reason, with another that rejects."""

    def gate_with(checks: tuple[Check, ...]) -> PromotionGate:
        config = PromotionConfig(
            environment=Environment.canary(20.0), min_requests=50, initial_delay_seconds=0.0
        )
        gate = PromotionGate(config, clock=FakeClock(), plan_timer=False, checks=checks)
        healthy_traffic(gate)
        gate.monitor_canary_health()
        return gate

    assert gate_with(DEFAULT_CHECKS).environment == Environment.canary(20.0)
    failing = gate_with(with_another(CheckoutCheck(log_evidence=50.0)))
    assert failing.environment == Environment.PRODUCTION
    [event] = failing.get_rollback_history()
    assert "canary checkout rate is below production's" in event.reason


def test_the_gate_refuses_checks_whose_shares_do_not_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="share"):
        PromotionGate(checks=(*DEFAULT_CHECKS, CheckoutCheck(0.0)), plan_timer=False)


def test_a_check_written_before_waiting_for_is_refused_by_name() -> None:
    """A check from before ``Check.waiting_for`` is refused when the gate is
    built, naming the member and the base class that supplies it, not when a
    verdict would first be HEALTHY."""

    @dataclass(frozen=True)
    class OldCheck:
        name: str = "old"
        share: float = 1.0
        label: str = "old"

    with pytest.raises(ConfigError, match="lacks waiting_for.*Ready"):
        PromotionGate(checks=(OldCheck(),), plan_timer=False)  # type: ignore[arg-type]
