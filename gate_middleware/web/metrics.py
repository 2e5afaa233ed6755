"""The middleware's per-request OpenTelemetry instruments.

- ``gate_middleware.request.duration``: a histogram in seconds, with
  exactly the boundaries OpenTelemetry's HTTP semantic conventions recommend
  (5 ms … 10 s).
- ``gate_middleware.requests``: the requests served, a counter. It is an
  *observable* counter read from the middleware's own per-attribute-set
  counts when the SDK collects, so a request costs one dictionary increment
  instead of a second synchronous instrument call.
- ``gate_middleware.middleware.errors``: faults that were failed open, by
  ``gate.stage``. Every stage is exported at 0 from the start, so
  ``increase(...) > 0`` sees the first fault.

Under a ``Rollouts`` set, each rollout counts the request with its own
decision (``gate.rollout`` its name, ``gate.variant`` its variant), and the
duration histogram gets one point per request, under the set's name with the
request's combined variant (``canary`` when any rollout put it on its canary
path): a histogram point costs the OpenTelemetry SDK about fifty times a
count, and each rollout's latency by variant is its
``gate_middleware.gate.latency.p99`` gauge.

Request attributes: ``http.request.method`` (known methods, else
``_OTHER``), ``http.response.status_code`` (absent when the app raised
before responding), ``http.route`` (the route template, when the framework
knows it), ``url.scheme`` (``http`` or ``https``), ``error.type`` (the exception's class name, or the status code of
a 5xx), ``gate.variant``, ``gate.environment`` (the environment that served
the request) and ``gate.rollout``. No raw path or session id is ever an
attribute. Past ``MAX_ATTRIBUTE_SETS`` distinct sets (a misbehaving router,
say) further requests are counted under ``otel.metric.overflow=true``, as
the OpenTelemetry SDK does, so the number of series stays bounded. The names
do not collide with OpenTelemetry's own ``http.server.*`` instruments: both
can run in one app.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    NoOpMeter,
    Observation,
    get_meter,
)

from gate_middleware.domain.naming import SCHEMA_URL
from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.types import mypyc_attr

DURATION_BUCKETS = (
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
MAX_ATTRIBUTE_SETS = 2000
#: Where ``RequestLifecycle`` can fail open (the ``gate.stage`` attribute).
FAULT_STAGES = (
    "session_cookie",
    "session_key",
    "route",
    "trace",
    "is_success",
    "record",
    "metrics",
)

AttributeKey = tuple[str, str, str, "int | None", "str | None", "str | None", str]
Attributes = dict[str, "str | int | bool"]
_OVERFLOW: AttributeKey = ("", "", "", None, None, None, "")


class RequestMetrics:
    """Instruments created once; ``record`` is called once per finished request."""

    def __init__(self, rollout: str, meter_provider: MeterProvider | None = None) -> None:
        from gate_middleware.version import __version__

        meter = get_meter(
            "gate_middleware", __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        #: False for the no-op meter (``NoOpMeterProvider``): nothing it
        #: records is ever seen, so the middleware skips ``record``. (The
        #: global provider's proxy meter may get an SDK later: it records.)
        self.enabled = not isinstance(meter, NoOpMeter)
        self._rollout = rollout
        # The counts live in a plain object that the process-wide counter
        # references weakly (the compiled build's classes take no weak
        # references); this middleware holds it, and shares its dicts.
        source = _Counts(rollout)
        self._source = source
        self._lock = source.lock
        self._attributes = source.attributes
        self._counts = source.counts
        self._duration = meter.create_histogram(
            "gate_middleware.request.duration",
            unit="s",
            description="Duration of HTTP requests, from the first byte in to the last byte out",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        counter = _request_counter(meter)
        counter.sources.add(source)
        # When this middleware is dropped, its counts stay in the total: a
        # counter never goes down.
        weakref.finalize(source, counter.retire, source.counts, source.attributes, source.lock)
        self._errors = meter.create_counter(
            "gate_middleware.middleware.errors",
            unit="{error}",
            description="Faults inside the gate or middleware that were failed open",
        )
        # A metrics pipeline that fails must not stop the app from starting.
        with contextlib.suppress(Exception):
            for stage in FAULT_STAGES:
                self._errors.add(0, {"gate.stage": stage, "gate.rollout": rollout})

    def record(
        self,
        decision: RoutingDecision,
        method: str,
        status: int | None,
        route: str | None,
        exception: BaseException | None,
        duration: float,
        scheme: str = "http",
        timed: bool = True,
        counted: bool = True,
    ) -> None:
        """One finished request: a point of the duration histogram (unless
        ``timed`` is false) and one more in its attribute set's count
        (unless ``counted`` is false)."""
        if exception is not None:
            error: str | None = type(exception).__qualname__
        elif status is not None and status >= 500:
            error = str(status)
        else:
            error = None
        key: AttributeKey = (
            decision.variant,
            decision.target_environment.name,
            method if method in KNOWN_METHODS else "_OTHER",
            status,
            route,
            error,
            scheme,
        )
        attributes = self._attributes.get(key)
        if attributes is None:
            key, attributes = self._new_attributes(key)
        if timed:
            self._duration.record(duration, attributes)
        if counted:
            with self._lock:
                self._counts[key] = self._counts.get(key, 0) + 1

    def _new_attributes(self, key: AttributeKey) -> tuple[AttributeKey, Attributes]:
        with self._lock:
            if len(self._attributes) > MAX_ATTRIBUTE_SETS:
                return _OVERFLOW, self._attributes[_OVERFLOW]
            variant, environment, method, status, route, error, scheme = key
            attributes: Attributes = {
                "http.request.method": method,
                "url.scheme": scheme,
                "gate.variant": variant,
                "gate.environment": environment,
                "gate.rollout": self._rollout,
            }
            if status is not None:
                attributes["http.response.status_code"] = status
            if route:
                attributes["http.route"] = route
            if error is not None:
                attributes["error.type"] = error
            self._attributes[key] = attributes
            return key, attributes

    def count_error(self, stage: str) -> None:
        self._errors.add(1, {"gate.stage": stage, "gate.rollout": self._rollout})


@mypyc_attr(native_class=False)
class _Counts:
    """One middleware's requests per attribute set."""

    def __init__(self, rollout: str) -> None:
        self.lock = threading.Lock()
        self.attributes: dict[AttributeKey, Attributes] = {
            _OVERFLOW: {"otel.metric.overflow": True, "gate.rollout": rollout}
        }
        self.counts: dict[AttributeKey, int] = {}

    def items(self) -> list[tuple[Attributes, int]]:
        with self.lock:
            return [(self.attributes[key], count) for key, count in self.counts.items()]


class _RequestCounter:
    """The ``gate_middleware.requests`` instrument of one meter, summing every
    live ``RequestMetrics`` on it. A second middleware on the same meter (each
    of Django's test clients loads its own) would otherwise register the name
    again, and the SDK keeps only the first callback."""

    def __init__(self, meter: Meter) -> None:
        self.sources: weakref.WeakSet[_Counts] = weakref.WeakSet()
        self.retired: dict[frozenset[tuple[str, str | int | bool]], tuple[Attributes, int]] = {}
        # Reentrant: a garbage collection inside observe() may retire a source.
        self._lock = threading.RLock()
        meter.create_observable_counter(
            "gate_middleware.requests",
            callbacks=[self.observe],
            unit="{request}",
            description="HTTP requests served, per variant",
        )

    def retire(
        self,
        counts: dict[AttributeKey, int],
        attributes: dict[AttributeKey, Attributes],
        lock: threading.Lock,
    ) -> None:
        """Keep a dropped source's counts (called when it is garbage collected)."""
        with lock:
            items = [(attributes[key], count) for key, count in counts.items()]
        with self._lock:
            _add(self.retired, items)

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = dict(self.retired)
            for source in list(self.sources):
                _add(totals, source.items())
        return [Observation(count, attributes) for attributes, count in totals.values()]


def _add(
    totals: dict[frozenset[tuple[str, str | int | bool]], tuple[Attributes, int]],
    items: Iterable[tuple[Attributes, int]],
) -> None:
    for attributes, count in items:
        key = frozenset(attributes.items())
        previous = totals.get(key)
        totals[key] = (attributes, count + (previous[1] if previous else 0))


_counters: weakref.WeakKeyDictionary[Meter, _RequestCounter] = weakref.WeakKeyDictionary()
_counters_lock = threading.Lock()


def _request_counter(meter: Meter) -> _RequestCounter:
    with _counters_lock:
        counter = _counters.get(meter)
        if counter is None:
            counter = _counters[meter] = _RequestCounter(meter)
        return counter
