"""``python -m benchmarks.rollout_cost --quick``: what it measures is what it
says (one hash per rollout, every rollout recording, a finite memory figure
per rollout, a row per path and count). No assertion on a duration: the
machine is shared."""

from __future__ import annotations

import math

import pytest
from opentelemetry.metrics import NoOpMeterProvider

from benchmarks import rollout_cost
from gate_middleware.domain.routing import RoutingDecision


@pytest.fixture(scope="module")
def report() -> rollout_cost.Report:
    return rollout_cost.measure(quick=True)


def test_routing_a_set_hashes_the_session_once_per_rollout(report: rollout_cost.Report) -> None:
    assert report.hashes == {1: 1, 5: 5, 20: 20}


def test_the_hash_count_sees_a_rollout_that_did_not_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count above can fail: a rollout answering without hashing
    (``decision_for_variant``, bucket -1) is not counted."""
    rollouts = rollout_cost.build_rollouts(5, NoOpMeterProvider())
    lazy = rollouts["rollout-3"]

    def unhashed(session_id: str) -> RoutingDecision:
        return lazy.decision_for_variant("stable", reason="not hashed")

    monkeypatch.setattr(lazy, "route_request", unhashed)
    assert rollout_cost.hashes_per_request(rollouts, rollout_cost.SESSIONS[0]) == 4


def test_the_lifecycle_case_records_each_request_in_every_rollout() -> None:
    provider = NoOpMeterProvider()
    rollouts = rollout_cost.build_rollouts(20, provider)
    rollout_cost.lifecycle_case(rollout_cost.lifecycle(rollouts, provider))(150)
    for gate in rollouts:
        health = gate.health_snapshot()
        assert health.canary_requests + health.production_requests == 150, gate.name
        assert health.canary_requests > 0, gate.name  # a canary at 10 % of 150 sessions


def test_every_case_is_measured_in_every_round(report: rollout_cost.Report) -> None:
    expected = {
        rollout_cost.NOTHING,
        rollout_cost.SHA256,
        rollout_cost.WINDOW_COUNT,
        rollout_cost.EVIDENCE_COUNT,
        *(
            rollout_cost.part_label(part, count)
            for part in ("route_request", "record_decision", "request metrics (SDK)")
            for count in rollout_cost.COUNTS
        ),
        *(
            rollout_cost.lifecycle_label(count, meter)
            for meter in rollout_cost.METERS
            for count in rollout_cost.COUNTS
        ),
    }
    assert set(report.components) == expected
    assert set(report.asgi) == {
        rollout_cost.BARE_ASGI,
        *(
            rollout_cost.asgi_label(count, meter)
            for meter in rollout_cost.METERS
            for count in rollout_cost.COUNTS
        ),
    }
    for result in (*report.components.values(), *report.asgi.values()):
        assert len(result.samples) == report.repeat, result.name
        assert all(0.0 < sample < math.inf for sample in result.samples), result.name


def test_memory_per_rollout_is_positive_and_finite(report: rollout_cost.Report) -> None:
    assert set(report.memory) == set(rollout_cost.METERS)
    for meter, by_count in report.memory.items():
        assert set(by_count) == set(rollout_cost.COUNTS), meter
        for count, kib in by_count.items():
            assert 0.0 < kib < math.inf, (meter, count, kib)


def test_the_table_has_a_row_per_path_and_count(report: rollout_cost.Report) -> None:
    rows = rollout_cost.summary(report).splitlines()
    assert rows[0].startswith("| path | rollouts | overhead per request µs | ×bare |")
    body = [row.strip("|").split("|") for row in rows[2:]]
    assert len(body) == 4 * len(rollout_cost.COUNTS)
    for cells in body:
        assert len(cells) == 7, cells
        count = int(cells[1])
        per_extra, in_sha = cells[4].strip(), cells[5].strip()
        if count == 1:
            assert per_extra == in_sha == "–"
        else:  # a number, whatever its value on a noisy machine
            assert math.isfinite(float(per_extra.replace(",", ""))), cells
            assert math.isfinite(float(in_sha.replace(",", ""))), cells
        assert 0.0 < float(cells[6].replace(",", "")) < math.inf, cells


def test_the_report_states_the_target_and_the_hash_count(report: rollout_cost.Report) -> None:
    text = rollout_cost.split(report)
    assert "1 rollouts: 1, 5 rollouts: 5, 20 rollouts: 20" in text
    assert "Target, overhead grows by at most one SHA-256 per extra rollout: " in text
    assert (
        f"The floor alone is {report.floor_seconds / report.sha256_seconds:,.1f} SHA-256s" in text
    )
