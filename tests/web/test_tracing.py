"""Flag evaluations as span events, named as OpenTelemetry's semantic
conventions for feature flags name them (read from the installed
``opentelemetry-semantic-conventions``), on a real SDK span."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import feature_flag_attributes as flag

from gate_middleware.web.tracing import EVALUATION_EVENT, add_evaluation_event


@pytest.fixture
def tracer_provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_an_evaluation_event_carries_the_flags_value(
    tracer_provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracer_provider
    with provider.get_tracer("test").start_as_current_span("GET /"):
        add_evaluation_event("new_api", "canary", "SPLIT", value=True)
        add_evaluation_event("new_api", "stable", "DISABLED", value=False)
    [span] = exporter.get_finished_spans()
    on, off = span.events
    assert on.name == off.name == EVALUATION_EVENT == "feature_flag.evaluation"
    assert dict(on.attributes or {}) == {
        flag.FEATURE_FLAG_KEY: "new_api",
        flag.FEATURE_FLAG_RESULT_VALUE: True,
        flag.FEATURE_FLAG_RESULT_VARIANT: "canary",
        flag.FEATURE_FLAG_RESULT_REASON: "split",
        flag.FEATURE_FLAG_PROVIDER_NAME: "gate-middleware",
    }
    assert (off.attributes or {})[flag.FEATURE_FLAG_RESULT_VALUE] is False
    assert (off.attributes or {})[flag.FEATURE_FLAG_RESULT_REASON] == "disabled"
    # The evaluation context's id would be the session id: never an attribute.
    assert flag.FEATURE_FLAG_CONTEXT_ID not in (on.attributes or {})
