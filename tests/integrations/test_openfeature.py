"""OpenFeature and OpenTelemetry traces, with the real SDKs.

``client.get_boolean_value("new_api", False)`` answers from the request's
decision inside a request and from the targeting key outside one; the
decision is on the request's span and each flag read is a
``feature_flag.evaluation`` event, under OpenTelemetry's own ASGI and WSGI
instrumentation, with and without OpenFeature's ``TracingHook``.
"""

from __future__ import annotations

import itertools
import json
import math
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gate_middleware import Environment, PromotionConfig, PromotionGate, Rollouts
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.integrations.openfeature import GateProvider
from tests.support import OPEN_GATES, FakeClock, feed

FLAG = "new_api"
TOKEN = "qa-token-" + "x" * 24
_domains = itertools.count()


def make_gate(percent: float = 50) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(percent), feature_flags=[FLAG])
    )


def feature_client(gate: PromotionGate | Rollouts, *, hook: bool = False) -> OpenFeatureClient:
    domain = f"gate-test-{next(_domains)}"
    # ..._and_wait: READY before the first evaluation (set_provider initialises
    # on a thread, and a provider not yet ready answers PROVIDER_NOT_READY).
    api.set_provider_and_wait(GateProvider(gate, emit_events=not hook), domain=domain)
    client = api.get_client(domain=domain)
    if hook:
        client.add_hooks([TracingHook()])
    return client


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


def starlette_app(
    gate: PromotionGate | Rollouts, client: OpenFeatureClient, flag: str = FLAG
) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from gate_middleware.integrations.starlette import GateMiddleware, gate_decision

    async def index(request: Request) -> JSONResponse:
        details = client.get_boolean_details(flag, request.query_params.get("default") == "on")
        decision = gate_decision(request)
        body = {
            "value": details.value,
            "reason": str(details.reason),
            "variant": details.variant,
            "decision_variant": decision.variant,
            "decision_value": decision.is_enabled(flag),
        }
        if details.error_code is not None:
            body["error_code"] = str(details.error_code)
        return JSONResponse(body)

    app = Starlette(routes=[Route("/", index)])
    app.add_middleware(GateMiddleware, gate=gate, override_token=TOKEN)
    return app


def flask_app(gate: PromotionGate, client: OpenFeatureClient) -> Any:
    from flask import Flask, jsonify

    from gate_middleware.integrations.flask import GateExtension, gate_decision

    app = Flask(__name__)

    @app.get("/")
    def index() -> Any:
        details = client.get_boolean_details(FLAG, False)
        decision = gate_decision()
        return jsonify(
            value=details.value,
            reason=str(details.reason),
            variant=details.variant,
            decision_variant=decision.variant,
            decision_value=decision.is_enabled(FLAG),
        )

    GateExtension(app, gate=gate, override_token=TOKEN)
    return app


def test_in_a_request_the_flag_is_the_requests_decision() -> None:
    from starlette.testclient import TestClient

    gate = make_gate(50)
    app = starlette_app(gate, feature_client(gate))
    seen = set()
    with TestClient(app) as http:
        for _ in range(40):
            http.cookies.clear()
            body = http.get("/").json()
            assert body["value"] == body["decision_value"]
            assert body["variant"] == body["decision_variant"]
            assert body["reason"] == "SPLIT"
            seen.add(body["variant"])
        # The QA override picks the variant: a targeting match.
        body = http.get(
            "/", headers={"X-Gate-Variant": "canary", "X-Gate-Override-Token": TOKEN}
        ).json()
        assert body == {
            "value": True,
            "reason": "TARGETING_MATCH",
            "variant": "canary",
            "decision_variant": "canary",
            "decision_value": True,
        }
    assert seen == {"canary", "stable"}


def test_outside_a_request_the_targeting_key_is_routed_the_same_way() -> None:
    gate = make_gate(50)
    client = feature_client(gate)
    variants = set()
    for n in range(50):
        key = f"user-{n}"
        details = client.get_boolean_details(FLAG, False, EvaluationContext(targeting_key=key))
        decision = gate.route_request(key)
        assert (details.value, details.variant) == (decision.is_enabled(FLAG), decision.variant)
        assert details.reason == Reason.SPLIT
        assert details.flag_metadata["gate.rollout"] == "default"
        variants.add(details.variant)
    assert variants == {"canary", "stable"}
    missing = client.get_boolean_details(FLAG, True)
    assert missing.value is True and missing.error_code == ErrorCode.TARGETING_KEY_MISSING
    wrong_type = client.get_string_details(FLAG, "x", EvaluationContext("user-1"))
    assert wrong_type.value == "x" and wrong_type.error_code == ErrorCode.TYPE_MISMATCH


def test_a_rolled_back_flag_is_off() -> None:
    gate = make_gate(100)
    client = feature_client(gate)
    context = EvaluationContext(targeting_key="user-1")
    assert client.get_boolean_value(FLAG, False, context) is True
    gate.rollback("checkout errors")
    details = client.get_boolean_details(FLAG, False, context)
    assert details.value is False and details.variant == "stable"
    assert details.reason == Reason.DISABLED and details.error_code is None


def test_an_unknown_flag_is_not_found_and_answers_the_callers_default() -> None:
    """A flag the rollout does not have: OpenFeature's FLAG_NOT_FOUND, in a
    request and outside one, with the caller's default (not a quiet False)."""
    from starlette.testclient import TestClient

    gate = make_gate(100)
    client = feature_client(gate)
    for default in (True, False):
        details = client.get_boolean_details("no_such_flag", default, EvaluationContext("user-1"))
        assert details.value is default
        assert details.reason == Reason.ERROR
        assert details.error_code == ErrorCode.FLAG_NOT_FOUND
        assert "no_such_flag" in (details.error_message or "")
    # Without a targeting key either, the flag is what is missing.
    no_key = client.get_boolean_details("no_such_flag", True)
    assert no_key.error_code == ErrorCode.FLAG_NOT_FOUND
    with TestClient(starlette_app(gate, client, "no_such_flag")) as http:
        body = http.get("/", params={"default": "on"}).json()
    assert (body["value"], body["reason"], body["error_code"]) == (True, "ERROR", "FLAG_NOT_FOUND")
    assert body["decision_variant"] == "canary"  # the request itself was served as usual


def test_a_known_flag_on_for_no_one_answers_the_callers_default() -> None:
    """Known: declared in the config, on now (stable or release), a flag of
    the plan's last release, or turned off by disable_feature. Known and on
    for no one: the caller's default, DISABLED. While the flag is on for
    some, a stable session's answer is the split's, whatever the default."""
    gate = make_gate(50)
    client = feature_client(gate)
    keys = (f"user-{n}" for n in range(1000))
    stable = EvaluationContext(next(k for k in keys if not gate.route_request(k).is_canary))
    split = client.get_boolean_details(FLAG, True, stable)
    assert (split.value, split.reason, split.variant) == (False, Reason.SPLIT, "stable")
    gate.rollback("checkout errors")  # FLAG is declared in the config, on for no one now
    for default in (True, False):
        details = client.get_boolean_details(FLAG, default, stable)
        assert (details.value, details.reason, details.error_code) == (
            default,
            Reason.DISABLED,
            None,
        )
    # Turned on at runtime (not declared), then off with disable_feature.
    gate.enable_feature("dark_mode")
    assert client.get_boolean_details("dark_mode", False, stable).value is True
    gate.disable_feature("dark_mode")
    details = client.get_boolean_details("dark_mode", True, stable)
    assert (details.value, details.reason) == (True, Reason.DISABLED)
    # A release's flags rolled back: known while the plan keeps them (for
    # retry); without a plan, nothing holds them and they are unknown again.
    planned = PromotionGate(PromotionConfig(plan=RolloutPlan()), plan_timer=False)
    unplanned = PromotionGate(PromotionConfig())
    for other in (planned, unplanned):
        other.start_canary(10 if other is unplanned else None, ["search_v2"])
        other.rollback("search is slow")
    planned_details = feature_client(planned).get_boolean_details("search_v2", True, stable)
    assert (planned_details.value, planned_details.reason) == (True, Reason.DISABLED)
    unplanned_details = feature_client(unplanned).get_boolean_details("search_v2", True, stable)
    assert (unplanned_details.value, unplanned_details.error_code) == (
        True,
        ErrorCode.FLAG_NOT_FOUND,
    )


def configuration_changes(client: OpenFeatureClient) -> queue.Queue[EventDetails]:
    """The PROVIDER_CONFIGURATION_CHANGED events ``client`` hears (the SDK
    runs handlers on its own threads)."""
    changes: queue.Queue[EventDetails] = queue.Queue()
    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changes.put)
    return changes


def test_each_change_of_a_flags_answer_emits_configuration_changed() -> None:
    """An automatic rollback, a traffic change, a promotion, the start of a
    release and a flag turned on or off each tell OpenFeature which flags
    changed, so a client can re-read them."""
    clock = FakeClock()
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(10), feature_flags=[FLAG], min_requests=100),
        clock=clock,
    )
    changes = configuration_changes(feature_client(gate))

    def changed() -> list[str] | None:
        return changes.get(timeout=5).flags_changed

    gate.set_traffic_percent(25)
    assert changed() == [FLAG]
    gate.enable_feature("dark_mode")
    assert changed() == ["dark_mode"]
    gate.disable_feature("dark_mode")
    assert changed() == ["dark_mode"]
    feed(gate, "stable", 5000, error_every=50)  # 2 %
    feed(gate, "canary", 500, error_every=10)  # 10 %: the judge rolls it back
    gate.monitor_canary_health()
    rollback = gate.get_rollback_history()[-1]
    assert rollback.automatic and rollback.feature == "all"
    event = changes.get(timeout=5)
    assert event.flags_changed == [FLAG]
    assert event.provider_name == "gate-middleware"
    assert event.metadata["gate.rollout"] == "default"
    assert event.metadata["gate.environment"] == "production"
    assert "Canary health score" in (event.message or "")
    gate.start_canary(10, ["search_v2"])
    assert changed() == ["search_v2"]
    gate.promote(Environment.STAGING, force=True)
    assert changed() == ["search_v2"]
    gate.promote(Environment.PRODUCTION, force=True)
    assert changed() == ["search_v2"]
    gate.start_canary(5)  # no flags: every answer stays, the environment changed
    assert changed() == []


def test_another_processs_change_emits_configuration_changed(tmp_path: Path) -> None:
    """With a shared store, a rollback made by another process (here another
    gate on the same SQLite file) is heard as this process adopts it."""
    url = f"sqlite://{tmp_path}/gate.db"
    config = PromotionConfig(
        name="checkout", environment=Environment.canary(50), feature_flags=[FLAG]
    )
    here, elsewhere = PromotionGate.from_url(url, config), PromotionGate.from_url(url, config)
    OPEN_GATES.extend([here, elsewhere])
    client = feature_client(here)
    changes = configuration_changes(client)
    elsewhere.rollback("checkout errors", actor="alice")
    event = changes.get(timeout=5)
    assert event.flags_changed == [FLAG]
    assert event.metadata["gate.environment"] == "production"
    details = client.get_boolean_details(FLAG, False, EvaluationContext("user-1"))
    assert (details.value, details.reason) == (False, Reason.DISABLED)


def events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "feature_flag.evaluation"]


@pytest.mark.parametrize("hook", [False, True], ids=["provider-events", "openfeature-hook"])
@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_traces_under_opentelemetrys_own_instrumentation(
    protocol: str, hook: bool, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    import httpx

    tracer_provider, exporter = spans
    gate = make_gate(50)
    client = feature_client(gate, hook=hook)
    if protocol == "asgi":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ASGITracing
        from starlette.testclient import TestClient

        app = ASGITracing(starlette_app(gate, client), tracer_provider=tracer_provider)
        http: httpx.Client = TestClient(app)
    else:
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WSGITracing

        flask = flask_app(gate, client)
        flask.wsgi_app = WSGITracing(flask.wsgi_app, tracer_provider=tracer_provider)
        http = httpx.Client(transport=httpx.WSGITransport(app=flask), base_url="http://testserver")
    with http:
        body = http.get("/").json()
    span = server_span(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["gate.variant"] == body["decision_variant"]
    assert attributes["gate.rollout"] == "default"
    assert attributes["gate.environment"] in ("canary", "production")
    [event] = events(span)
    assert event["feature_flag.key"] == FLAG
    assert event["feature_flag.result.variant"] == body["variant"]
    assert event["feature_flag.provider.name"] == "gate-middleware"
    assert event["feature_flag.result.reason"] == "split"
    # The answer itself: ours a boolean, OpenFeature's TracingHook the JSON of it.
    value = event["feature_flag.result.value"]
    assert value == (json.dumps(body["value"]) if hook else body["value"])
    assert not any("gate_session" in str(v) for v in [*attributes.values(), *event.values()])


def test_no_tracer_no_trace_and_no_error() -> None:
    from opentelemetry import trace
    from starlette.testclient import TestClient

    # No SDK: the global tracer provider is the API's proxy, spans never record.
    assert not trace.get_current_span().is_recording()
    gate = make_gate(50)
    with TestClient(starlette_app(gate, feature_client(gate))) as http:
        body = http.get("/").json()
    assert body["reason"] == "SPLIT"


def test_track_reports_a_business_metric_for_the_session() -> None:
    """``client.track`` counts for the request's session, or the targeting
    key's outside a request; it never raises (OpenFeature's rule)."""
    from openfeature.track import TrackingEventDetails
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gate_middleware.domain.metrics import MetricDefinition
    from gate_middleware.integrations.starlette import GateMiddleware

    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(50),
            metrics=[MetricDefinition("order_value", kind="mean")],
        )
    )
    client = feature_client(gate)

    async def buy(request: Request) -> PlainTextResponse:
        client.track("order_value", tracking_event_details=TrackingEventDetails(value=20.0))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/buy", buy)])
    app.add_middleware(GateMiddleware, gate=gate, override_token=TOKEN)
    with TestClient(app) as http:
        for _ in range(10):
            http.cookies.clear()
            assert http.get("/buy").status_code == 200
    client.track("order_value", EvaluationContext("user-7"))  # 1 without a value
    client.track("order_value")  # no session: logged and dropped
    client.track("order_value", EvaluationContext("user-7"), TrackingEventDetails(value=math.nan))
    [view] = gate.status().to_dict()["metrics"]
    sides = (view["canary"], view["production"])
    assert sum(side["sessions"] for side in sides) == 11  # user-7 reported, so it counts
    total = sum(side["sessions"] * side["mean"] for side in sides)
    assert total == pytest.approx(10 * 20.0 + 1.0)
    gate.close()


# -- several rollouts -----------------------------------------------------------


def two_rollouts() -> Rollouts:
    return Rollouts(
        [
            PromotionGate(
                PromotionConfig(
                    name="api", environment=Environment.canary(50), feature_flags=[FLAG]
                )
            ),
            PromotionGate(
                PromotionConfig(
                    name="search", environment=Environment.canary(50), feature_flags=["search_v2"]
                )
            ),
        ]
    )


def test_several_rollouts_each_flag_answers_from_its_own_rollout() -> None:
    from starlette.testclient import TestClient

    rollouts = two_rollouts()
    client = feature_client(rollouts)
    # outside a request: each flag routes the key by its own rollout's salt
    for index in range(60):
        key = f"user-{index}"
        context = EvaluationContext(targeting_key=key)
        for name, flag in (("api", FLAG), ("search", "search_v2")):
            details = client.get_boolean_details(flag, False, context)
            own = rollouts[name].route_request(key)
            assert details.value == own.is_enabled(flag)
            assert details.variant == own.variant  # this rollout's path, not the other's
            assert details.flag_metadata["gate.rollout"] == name
            assert details.flag_metadata["gate.bucket"] == own.bucket
    unknown = client.get_boolean_details("nobody_declares_it", True, EvaluationContext("k"))
    assert unknown.value is True and unknown.error_code == ErrorCode.FLAG_NOT_FOUND
    assert "'api', 'search'" in (unknown.error_message or "")
    # in a request: the request's own decision in each rollout
    app = starlette_app(rollouts, client, flag="search_v2")
    with TestClient(app) as http:
        for _ in range(30):
            http.cookies.clear()
            body = http.get("/").json()
            assert body["value"] == body["decision_value"]


def test_several_rollouts_each_rollouts_change_is_heard_a_later_one_too() -> None:
    rollouts = two_rollouts()
    changes = configuration_changes(feature_client(rollouts))
    rollouts["search"].rollback("search regressed")
    event = changes.get(timeout=5)
    assert event.flags_changed == ["search_v2"] and event.metadata["gate.rollout"] == "search"
    late = rollouts.add(
        PromotionGate(
            PromotionConfig(name="late", environment=Environment.canary(5), feature_flags=["late"])
        )
    )
    late.set_traffic_percent(20)
    event = changes.get(timeout=5)
    assert event.flags_changed == ["late"] and event.metadata["gate.rollout"] == "late"
    assert rollouts["api"].state.environment.traffic_percent == 50  # untouched
