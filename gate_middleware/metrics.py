"""The middleware's per-request OpenTelemetry instruments.

=====================================  =========  ===========  ===========================
instrument                             kind       unit         attributes
=====================================  =========  ===========  ===========================
``gate_middleware.request.duration``   histogram  ``s``        see below
``gate_middleware.requests``           counter    ``{request}``  see below
``gate_middleware.middleware.errors``  counter    ``{error}``  ``gate.stage``
=====================================  =========  ===========  ===========================

Request attributes: ``http.request.method`` (known methods, else
``_OTHER``), ``http.response.status_code`` (absent when the app raised
before responding), ``http.route`` (the route template, when the framework
knows it), ``error.type`` (the exception's class name, or the status code of a 5xx),
``gate.variant``, ``gate.environment`` (the environment that served the
request) and ``gate.rollout``. No raw path or session id is ever an
attribute, so the number of series stays bounded. The names do not collide
with OpenTelemetry's own ``http.server.*`` instruments: both can run in one
app.
"""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider, get_meter

from gate_middleware.routing import RoutingDecision

DURATION_BUCKETS = (
    0.0,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


class RequestMetrics:
    """Instruments created once; ``record`` is called once per finished request."""

    def __init__(self, rollout: str, meter_provider: MeterProvider | None = None) -> None:
        from gate_middleware import __version__

        meter = get_meter("gate_middleware", __version__, meter_provider=meter_provider)
        self._rollout = rollout
        self._duration = meter.create_histogram(
            "gate_middleware.request.duration",
            unit="s",
            description="Duration of HTTP requests, from the first byte in to the last byte out",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._requests = meter.create_counter(
            "gate_middleware.requests",
            unit="{request}",
            description="HTTP requests served, per variant",
        )
        self._errors = meter.create_counter(
            "gate_middleware.middleware.errors",
            unit="{error}",
            description="Faults inside the gate or middleware that were failed open",
        )

    def record(
        self,
        decision: RoutingDecision,
        method: str,
        status: int | None,
        route: str | None,
        exception: BaseException | None,
        duration: float,
    ) -> None:
        attributes: dict[str, str | int] = {
            "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
            "gate.variant": decision.variant,
            "gate.environment": decision.target_environment.name,
            "gate.rollout": self._rollout,
        }
        if status is not None:
            attributes["http.response.status_code"] = status
        if route:
            attributes["http.route"] = route
        if exception is not None:
            attributes["error.type"] = type(exception).__qualname__
        elif status is not None and status >= 500:
            attributes["error.type"] = str(status)
        self._duration.record(duration, attributes)
        self._requests.add(1, attributes)

    def count_error(self, stage: str) -> None:
        self._errors.add(1, {"gate.stage": stage, "gate.rollout": self._rollout})
