from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.servers import RedisServer
from tests.support import OPEN_GATES, FakeClock

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


# -- a real redis-server for the shared gate's tests --------------------------


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
