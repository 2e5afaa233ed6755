"""Guarantee 12: memory and metric series stay flat as traffic grows."""

from __future__ import annotations

import resource
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import Environment, GateWSGIMiddleware, PromotionConfig, PromotionGate
from tests.support import metric_points

TOTAL = 1_000_000
WARM_UP = 200_000
PATHS = 10_000


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def series(reader: InMemoryMetricReader) -> int:
    return sum(len(points) for name, points in metric_points(reader).items())


def test_a_million_sessions_and_ten_thousand_paths_keep_memory_and_series_flat() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(20), auto_rollback_enabled=False),
        meter_provider=provider,
    )

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK" if environ["PATH_INFO"][-1] != "7" else "503 Unavailable", [])
        return [b"ok"]

    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=provider)
    methods = ["GET", "POST", "PUT", "BREW"]

    def serve(start: int, stop: int) -> None:
        for i in range(start, stop):
            environ = {
                "REQUEST_METHOD": methods[i % 4],
                "PATH_INFO": f"/items/{i % PATHS}",
                "wsgi.url_scheme": "http",
                "HTTP_COOKIE": f"gate_session=distinct-session-{i:012d}",
            }
            body = middleware(environ, lambda status, headers, exc_info=None: None)
            for _ in body:
                pass
            body.close()  # type: ignore[attr-defined]

    serve(0, WARM_UP)
    rss_warm, series_warm = peak_rss_kib(), series(reader)
    serve(WARM_UP, TOTAL)
    rss_end, series_end = peak_rss_kib(), series(reader)

    # 800,000 more distinct sessions and the paths again: keeping even 8 bytes
    # per session would add over 6 MiB.
    assert rss_end - rss_warm < 6 * 1024, (rss_warm, rss_end)
    assert series_end == series_warm
    # variants x methods (3 known + _OTHER) x statuses, per request instrument,
    # and the gate's fixed series: its gauges (2 error rates, 2 p99s, a score,
    # the traffic, 4 verdicts, 3 stages), counters at 0 (6 rollbacks, 2
    # promotions) and 7 fault stages.
    assert series_end <= 2 * (2 * 4 * 2) + 1 + (2 + 2 + 1 + 1 + 4 + 3) + (6 + 2) + 7
    for points in metric_points(reader).values():
        for point in points:
            for value in point.attributes.values():
                assert "distinct-session" not in str(value) and "/items/" not in str(value)
    health = gate.health_snapshot()
    assert health.canary_requests + health.production_requests == TOTAL
    provider.shutdown()
