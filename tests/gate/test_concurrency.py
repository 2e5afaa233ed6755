"""Guarantees 2 and 3: no lost outcomes under concurrency, exactly one rollback."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import (
    Environment,
    GateASGIMiddleware,
    GateWSGIMiddleware,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    RollbackEvent,
)
from tests.support import FakeClock, metric_points

THREADS = 64
PER_THREAD = 5_000


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def quiet_gate(clock: FakeClock, meter_provider: MeterProvider) -> PromotionGate:
    # A frozen clock: every outcome stays in the window and no evaluation runs.
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(30), auto_rollback_enabled=False),
        clock=clock,
        meter_provider=meter_provider,
    )


def requests_counted(reader: InMemoryMetricReader) -> int:
    return sum(int(p.value) for p in metric_points(reader).get("gate_middleware.requests", []))


def test_no_outcome_is_lost_through_the_wsgi_middleware(
    fine_switching: None, clock: FakeClock
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gate = quiet_gate(clock, provider)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=provider)
    errors: list[BaseException] = []
    done = threading.Event()

    def collect() -> None:
        while not done.wait(0.01):
            reader.get_metrics_data()

    def worker(number: int) -> None:
        try:
            for i in range(PER_THREAD):
                environ = {
                    "REQUEST_METHOD": "GET",
                    "PATH_INFO": "/",
                    "wsgi.url_scheme": "http",
                    "HTTP_COOKIE": f"gate_session=session-{number:03d}-{i:06d}",
                }
                body = middleware(environ, lambda status, headers, exc_info=None: None)
                b"".join(body)
                body.close()  # type: ignore[attr-defined]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    collector = threading.Thread(target=collect)
    collector.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    collector.join()

    total = THREADS * PER_THREAD
    expected_canary = sum(
        gate.route_request(f"session-{n:03d}-{i:06d}").is_canary
        for n in range(THREADS)
        for i in range(PER_THREAD)
    )
    health = gate.health_snapshot()
    assert errors == []
    assert health.canary_requests == expected_canary
    assert health.production_requests == total - expected_canary
    assert requests_counted(reader) == total
    provider.shutdown()


def test_no_outcome_is_lost_through_the_asgi_middleware(clock: FakeClock) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gate = quiet_gate(clock, provider)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = GateASGIMiddleware(app, gate=gate, meter_provider=provider)

    async def one(i: int) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "scheme": "http",
            "headers": [(b"cookie", f"gate_session=asgi-session-{i:06d}".encode())],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            await asyncio.sleep(0)

        await middleware(scope, receive, send)

    async def everything() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(2000)), return_exceptions=True)

    results = asyncio.run(everything())
    assert [r for r in results if r is not None] == []
    health = gate.health_snapshot()
    expected_canary = sum(
        gate.route_request(f"asgi-session-{i:06d}").is_canary for i in range(2000)
    )
    assert health.canary_requests == expected_canary
    assert health.production_requests == 2000 - expected_canary
    assert requests_counted(reader) == 2000
    provider.shutdown()


def test_exactly_one_rollback_when_64_threads_see_the_failure(
    fine_switching: None, clock: FakeClock
) -> None:
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(50),
            feature_flags=["new_api"],
            min_requests=50,
            evaluation_interval_seconds=0.001,
        ),
        clock=clock,
    )
    fired: list[RollbackEvent] = []
    gate.on_rollback(fired.append)
    for i in range(500):
        gate.record_request_outcome(f"s{i}", True, 0.01, variant="stable")
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    promoted: list[Environment] = []

    def worker(number: int) -> None:
        try:
            barrier.wait()
            for i in range(200):
                # The canary's error rate climbs past the threshold as they go.
                gate.record_request_outcome(f"t{number}-{i}", i % 3 != 0, 0.01, variant="canary")
                clock.advance(0.0001)
                if i % 10 == 0:
                    gate.monitor_canary_health()
                    gate.check_slo_compliance()
                    with contextlib.suppress(PromotionError):
                        promoted.append(gate.promote(Environment.STAGING))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(fired) == 1
    assert gate.get_rollback_history() == fired
    assert promoted == []
    assert gate.environment == Environment.PRODUCTION
    assert [e.kind for e in gate.get_history()] == ["rollback"]
