"""Guarantee 1: a fault inside the gate or the middleware never breaks a request.

Faults are injected at each point (routing, recording, metrics, a user's
rollback callback, ``session_key`` and ``is_success``) under every adapter;
every request still gets the app's own response, on the stable path, and
the fault is counted and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.metrics import NoOpCounter, NoOpHistogram, NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import Environment, PromotionConfig, PromotionGate, RollbackEvent
from tests.apps import FLAG, FRAMEWORKS, client_for
from tests.support import FakeClock, metric_points


class Fault(RuntimeError):
    pass


class FaultyGate(PromotionGate):
    """The real gate, with a fault injected at one point."""

    fault: str = ""

    def route_request(self, session_id: str) -> Any:
        if self.fault == "route":
            raise Fault("routing is broken")
        return super().route_request(session_id)

    def record_outcome(self, *args: Any, **kwargs: Any) -> None:
        if self.fault == "record":
            raise Fault("recording is broken")
        super().record_outcome(*args, **kwargs)


class _RaisingHistogram(NoOpHistogram):
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise Fault("the exporter is broken")


class _RaisingCounter(NoOpCounter):
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise Fault("the exporter is broken")


class _RaisingMeter(NoOpMeter):
    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _RaisingHistogram(name)

    def create_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _RaisingCounter(name)


class RaisingMeterProvider(NoOpMeterProvider):
    """A metrics pipeline whose every record and add raises."""

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _RaisingMeter(name)


FAULTS = ["route", "record", "metrics", "rollback_callback", "session_key", "is_success"]


def raising_session_key(request: Any) -> str:
    raise Fault("the user's session_key is broken")


def raising_is_success(status: int | None, exception: BaseException | None) -> bool:
    raise Fault("the user's is_success is broken")


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_fault_fails_open_to_the_apps_own_response(
    framework: str,
    fault: str,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    gate = FaultyGate(
        PromotionConfig(environment=Environment.canary(100), feature_flags=[FLAG], min_requests=5),
        clock=clock,
        meter_provider=provider,
    )
    options: dict[str, Any] = {"meter_provider": provider}
    if fault == "metrics":
        options["meter_provider"] = RaisingMeterProvider()
    elif fault == "session_key":
        options["session_key"] = raising_session_key
    elif fault == "is_success":
        options["is_success"] = raising_is_success
    elif fault == "rollback_callback":

        @gate.on_rollback
        def page_the_team(event: RollbackEvent) -> None:
            raise Fault("the pager is down")

        for i in range(10):  # a failing canary: the next evaluation rolls it back
            gate.record_request_outcome(f"s{i}", True, 0.01, variant="stable")
            gate.record_request_outcome(f"c{i}", False, 0.01, variant="canary")
        clock.advance(10)
    gate.fault = fault if fault in ("route", "record") else ""

    client, cleanup = client_for(framework, gate, **options)
    try:
        with caplog.at_level(logging.ERROR, logger="gate_middleware"):
            responses = [client.get("/") for _ in range(20)]
            flags = client.get("/flag")
    finally:
        client.close()
        if cleanup:
            cleanup()

    assert [r.status_code for r in responses] == [200] * 20
    bodies = [r.json() for r in responses]
    assert all(b["variant"] in ("canary", "stable") for b in bodies)
    assert flags.status_code == 200 and flags.text in ("new", "old")
    if fault in ("route", "session_key"):
        # Routing could not be trusted: the stable path.
        assert {b["variant"] for b in bodies} == {"stable"}
        assert flags.text == "old"
    if fault == "rollback_callback":
        # The first request's outcome rolled the canary back; then all stable.
        assert {b["variant"] for b in bodies[1:]} == {"stable"}
        assert flags.text == "old"
    if fault in ("route", "record", "session_key", "is_success"):
        stage = {
            "route": "route",
            "record": "record",
            "session_key": "session_key",
            "is_success": "is_success",
        }[fault]
        logged = [r for r in caplog.records if f"failed open in {stage}" in r.getMessage()]
        assert len(logged) == 1  # once, however many requests
        errors = metric_points(reader)["gate_middleware.middleware.errors"]
        counted = sum(p.value for p in errors if p.attributes["gate.stage"] == stage)
        assert counted == 21
    if fault == "rollback_callback":
        assert gate.environment == Environment.PRODUCTION
        assert any("callback raised" in r.getMessage() for r in caplog.records)
    if fault in ("metrics", "is_success", "session_key"):
        health = gate.health_snapshot()
        assert health.canary_requests + health.production_requests == 21
