from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import PromotionGate

from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent

# ./dev test's compiled pass runs the suite from a copy of the checkout without
# the package's sources, against the compiled wheel installed in its venv.
SOURCES = (ROOT / "gate_middleware").is_dir()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SOURCES:
        return
    skip = pytest.mark.skip(
        reason="checks the sources, which this pass (an installed wheel) does not have: "
        "it ran in the pure pass"
    )
    for item in items:
        if item.get_closest_marker("sources"):
            item.add_marker(skip)


class FakeClock:
    """A monotonic clock that tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[object]]:
    """{instrument name: [data points]} from one collection."""
    found: dict[str, list[object]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


# -- a real redis-server for the shared gate's tests --------------------------

OPEN_GATES: list[PromotionGate] = []


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(autouse=True)
def close_gates() -> Iterator[None]:
    """Stop every shared gate's follower threads when its test ends."""
    yield
    while OPEN_GATES:
        OPEN_GATES.pop().close()
