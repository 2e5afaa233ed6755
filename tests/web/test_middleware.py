"""One behaviour suite, the same assertions for every framework adapter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.judge.statistics import ErrorRateCheck, RouteErrorCheck
from tests.apps import FLAG, FRAMEWORKS, ROUTES, client_for
from tests.support import FakeClock, metric_points

SECRET = "behaviour-suite-secret-0123456789"

MakeClient = Callable[..., httpx.Client]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gate_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gate(gate_clock: FakeClock, meter_provider: MeterProvider) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(
            environment=Environment.canary(50),
            feature_flags=[FLAG],
            min_requests=20,
            auto_rollback_enabled=True,
        ),
        clock=gate_clock,
        meter_provider=meter_provider,
    )


@pytest.fixture
def make_client(
    framework: str, gate: PromotionGate, meter_provider: MeterProvider
) -> Iterator[MakeClient]:
    cleanups: list[Any] = []
    clients: list[httpx.Client] = []

    def make(**options: Any) -> httpx.Client:
        options.setdefault("meter_provider", meter_provider)
        options.setdefault("exclude_paths", ["/healthz"])
        client, cleanup = client_for(framework, gate, **options)
        clients.append(client)
        if cleanup:
            cleanups.append(cleanup)
        return client

    yield make
    for client in clients:
        client.close()
    for cleanup in reversed(cleanups):
        cleanup()


def set_cookie_headers(response: httpx.Response) -> list[str]:
    return [value.strip() for value in response.headers.get_list("set-cookie")]


def counts(gate: PromotionGate) -> tuple[int, int]:
    health = gate.health_snapshot()
    return health.canary_requests, health.production_requests


def test_first_request_gets_a_cookie_and_a_decision(make_client: MakeClient) -> None:
    client = make_client()
    response = client.get("/")
    assert response.status_code == 200
    [cookie] = set_cookie_headers(response)
    assert cookie.startswith("gate_session=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=31536000"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http
    body = response.json()
    assert body["variant"] in ("canary", "stable")
    assert body["current"] == body["variant"]  # current_decision() inside the view
    assert body["raw_is_same"] is True  # scope["state"]["gate"] / environ key
    assert (FLAG in body["flags"]) == (body["variant"] == "canary")


def test_the_same_cookie_gets_the_same_variant(make_client: MakeClient) -> None:
    client = make_client()
    first = client.get("/")
    variant, bucket = first.json()["variant"], first.json()["bucket"]
    for _ in range(20):
        again = client.get("/")
        assert again.json()["variant"] == variant and again.json()["bucket"] == bucket
        assert set_cookie_headers(again) == []  # a valid cookie is not set again


def test_both_variants_appear_at_fifty_percent(make_client: MakeClient) -> None:
    client = make_client()
    seen = []
    for _ in range(200):
        client.cookies.clear()
        seen.append(client.get("/flag").text)
    assert 60 < seen.count("new") < 140
    assert seen.count("new") + seen.count("old") == 200


def test_flags_follow_the_variant(make_client: MakeClient) -> None:
    client = make_client()
    for _ in range(30):
        client.cookies.clear()
        variant = client.get("/").json()["variant"]
        assert client.get("/flag").text == ("new" if variant == "canary" else "old")


def test_a_tampered_cookie_gets_a_fresh_id(make_client: MakeClient) -> None:
    client = make_client(secret=SECRET)
    original = client.get("/")
    value = client.cookies["gate_session"]
    assert value.count(".") == 2  # id.issued.signature
    session_id, issued, signature = value.split(".")
    forged = f"{session_id[:-1]}{'A' if session_id[-1] != 'A' else 'B'}.{issued}.{signature}"
    client.cookies.clear()
    response = client.get("/", headers={"Cookie": f"gate_session={forged}"})
    [cookie] = set_cookie_headers(response)
    new_id = cookie.split("=", 1)[1].split(";")[0].split(".")[0]
    assert new_id not in (session_id, forged.split(".")[0])
    assert original.status_code == response.status_code == 200


def test_an_exception_is_a_failure_and_reaches_the_frameworks_handler(
    make_client: MakeClient, gate: PromotionGate
) -> None:
    client = make_client()
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.text == "handled: RuntimeError"
    snapshot = gate.health_snapshot()
    assert snapshot.canary_requests + snapshot.production_requests == 1
    assert max(snapshot.canary_error_rate, snapshot.production_error_rate) == 1.0


def test_a_streaming_response_is_timed_to_its_last_chunk(
    make_client: MakeClient, metric_reader: InMemoryMetricReader
) -> None:
    client = make_client()
    response = client.get("/stream")
    assert response.text == "chunk0\nchunk1\nchunk2\n"
    [point] = metric_points(metric_reader)["gate_middleware.request.duration"]
    assert point.count == 1
    assert point.sum >= 0.3


def test_excluded_paths_are_neither_routed_nor_counted(
    make_client: MakeClient, gate: PromotionGate, metric_reader: InMemoryMetricReader
) -> None:
    client = make_client()
    response = client.get("/healthz")
    assert response.text == "ok"
    assert set_cookie_headers(response) == []
    assert counts(gate) == (0, 0)
    assert "gate_middleware.requests" not in metric_points(metric_reader)


def test_metrics_have_the_documented_names_and_attributes(
    framework: str, make_client: MakeClient, metric_reader: InMemoryMetricReader
) -> None:
    client = make_client()
    client.get("/items/42")
    session = client.cookies["gate_session"]
    points = metric_points(metric_reader)
    [count] = points["gate_middleware.requests"]
    [duration] = points["gate_middleware.request.duration"]
    assert count.value == 1 and duration.count == 1
    attributes = dict(duration.attributes)
    assert attributes == dict(count.attributes)
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == ROUTES[framework]
    assert attributes["gate.variant"] in ("canary", "stable")
    assert attributes["gate.environment"] in ("canary", "production")
    assert attributes["gate.rollout"] == "default"
    assert not any(isinstance(v, str) and ("42" in v or session in v) for v in attributes.values())
    assert attributes["url.scheme"] == "http"
    # Exactly the HTTP semantic conventions' recommended boundaries.
    assert list(duration.explicit_bounds) == [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
    ]  # fmt: skip
    assert not any(name.startswith("http.server.") for name in points)
    assert metric_reader.get_metrics_data() is not None
    scopes = metric_reader.get_metrics_data().resource_metrics[0].scope_metrics
    assert {scope.scope.schema_url for scope in scopes} == {
        "https://opentelemetry.io/schemas/1.26.0"
    }


def test_a_canary_that_returns_500s_is_rolled_back(
    make_client: MakeClient, gate: PromotionGate, gate_clock: FakeClock
) -> None:
    client = make_client()
    for _ in range(120):
        client.cookies.clear()
        client.get("/canary-fails")
    canary, stable = counts(gate)
    assert canary >= 20 and stable >= 20
    gate_clock.advance(6.0)  # the next outcome triggers the gate's own evaluation
    client.get("/canary-fails")
    assert gate.environment == Environment.PRODUCTION
    [event] = gate.get_rollback_history()
    assert event.automatic
    for _ in range(50):
        client.cookies.clear()
        assert client.get("/").json()["variant"] == "stable"
        assert client.get("/flag").text == "old"


def test_the_route_template_reaches_the_judge_and_names_the_rollback(
    framework: str, gate_clock: FakeClock, meter_provider: MeterProvider
) -> None:
    """Each adapter hands the judge the matched route template: a gate that
    judges by the route check alone rolls back naming the failing endpoint's
    template (its slot also holds the other template's requests, or not)."""
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(50), min_requests=20),
        clock=gate_clock,
        checks=(RouteErrorCheck(share=1.0),),
    )
    client, cleanup = client_for(framework, gate, meter_provider=meter_provider)
    try:
        for i in range(120):
            client.cookies.clear()
            client.get(f"/items/{i}")
            client.get("/canary-fails")
        gate_clock.advance(6.0)
        client.get("/canary-fails")
    finally:
        client.close()
        if cleanup:
            cleanup()
    assert gate.environment == Environment.PRODUCTION
    [event] = gate.get_rollback_history()
    failing = "canary-fails" if framework.startswith("django") else "/canary-fails"
    assert f"canary error rate on route {failing} " in event.reason, event.reason


def test_a_business_metric_tracked_in_the_view_rolls_back_a_release_that_breaks_it(
    framework: str, gate_clock: FakeClock, meter_provider: MeterProvider
) -> None:
    """``track()`` on each framework's request object (``request.state.gate``,
    ``g.gate``, ``request.gate``) reaches the judge for the session's
    variant: a release whose checkout never completes, without an error or
    a slow response, is rolled back by the guardrail, which the reason names."""
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(50),
            min_requests=20,
            metrics=[MetricDefinition("checkout_completed", tolerance=0.05)],
        ),
        clock=gate_clock,
        checks=(ErrorRateCheck(share=1.0),),
    )
    client, cleanup = client_for(framework, gate, meter_provider=meter_provider)
    try:
        for _ in range(240):
            client.cookies.clear()
            assert client.get("/checkout").status_code == 200
        gate_clock.advance(6.0)
        client.cookies.clear()
        client.get("/checkout")
    finally:
        client.close()
        if cleanup:
            cleanup()
    assert gate.environment == Environment.PRODUCTION
    [event] = gate.get_rollback_history()
    assert "metric checkout_completed (sessions converting) on the canary 0 " in event.reason, (
        event.reason
    )


def test_the_qa_override_needs_the_token(make_client: MakeClient) -> None:
    token = "qa-override-token-0123456789"
    client = make_client(override_token=token)
    stable_sessions = 0
    for _ in range(30):
        client.cookies.clear()
        natural = client.get("/").json()["variant"]
        forged = client.get("/", headers={"X-Gate-Variant": "canary"}).json()["variant"]
        wrong = client.get(
            "/", headers={"X-Gate-Variant": "canary", "X-Gate-Override-Token": "nope"}
        ).json()["variant"]
        forced = client.get(
            "/", headers={"X-Gate-Variant": "canary", "X-Gate-Override-Token": token}
        ).json()["variant"]
        assert forged == wrong == natural
        assert forced == "canary"
        stable_sessions += natural == "stable"
    assert stable_sessions > 0


def test_https_cookies_are_secure(framework: str, make_client: MakeClient) -> None:
    client = make_client()
    client.base_url = httpx.URL("https://testserver")
    response = client.get("/")
    [cookie] = set_cookie_headers(response)
    assert "Secure" in cookie


def test_a_response_that_sets_the_cookie_is_kept_from_shared_caches(
    make_client: MakeClient,
) -> None:
    # Its body depends on the variant and it carries the visitor's cookie.
    client = make_client(secret=SECRET)
    first = client.get("/")
    assert set_cookie_headers(first)
    vary = {v.strip().lower() for h in first.headers.get_list("vary") for v in h.split(",")}
    assert "cookie" in vary
    cache_control = {d.strip() for d in first.headers.get("cache-control", "").split(",")}
    assert "private" in cache_control and "public" not in cache_control
    again = client.get("/")
    assert set_cookie_headers(again) == []  # no cookie set: the app's own caching stands


def test_a_rotated_secret_moves_nobody(make_client: MakeClient) -> None:
    old_secret = "the-previous-secret-0123456789"
    before = make_client(secret=old_secret)
    first = before.get("/")
    old_value = before.cookies["gate_session"]
    rotated = make_client(secret=SECRET, secret_fallbacks=[old_secret])
    response = rotated.get("/", headers={"Cookie": f"gate_session={old_value}"})
    assert response.json()["bucket"] == first.json()["bucket"]
    assert response.json()["variant"] == first.json()["variant"]
    [cookie] = set_cookie_headers(response)  # signed again with the current secret
    new_value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert new_value.split(".")[0] == old_value.split(".")[0] and new_value != old_value
    current_only = make_client(secret=SECRET)
    again = current_only.get("/", headers={"Cookie": f"gate_session={new_value}"})
    assert again.json()["bucket"] == first.json()["bucket"]
    assert set_cookie_headers(again) == []


def test_a_path_no_route_matches_has_no_http_route(
    make_client: MakeClient, metric_reader: InMemoryMetricReader
) -> None:
    # OpenTelemetry's HTTP conventions leave http.route out when no route matched.
    client = make_client()
    assert client.get("/no-such-page").status_code == 404
    [point] = metric_points(metric_reader)["gate_middleware.request.duration"]
    attributes = dict(point.attributes)
    assert "http.route" not in attributes
    assert attributes["http.response.status_code"] == 404


def test_cacheable_public_leaves_a_public_response_cacheable(
    make_client: MakeClient, gate: PromotionGate
) -> None:
    # A cookieless client (a CDN, a crawler) of a page the view marks public:
    # no cookie, the app's Cache-Control and Vary as they were; still counted.
    client = make_client(secret=SECRET, cacheable="public")
    for _ in range(3):
        response = client.get("/public")
        assert response.text == "the same for everyone"
        assert set_cookie_headers(response) == []
        assert response.headers.get_list("cache-control") == ["public, max-age=60"]
        assert response.headers.get_list("vary") == ["Accept-Encoding"]
    assert "gate_session" not in client.cookies
    assert sum(counts(gate)) == 3
    # The first page that is not cacheable sets the cookie, kept from shared caches.
    page = client.get("/")
    assert len(set_cookie_headers(page)) == 1
    assert "private" in page.headers["cache-control"]
    again = client.get("/public")  # with the cookie: nothing to set, nothing changed
    assert set_cookie_headers(again) == []
    assert again.headers["cache-control"] == "public, max-age=60"


def test_without_cacheable_a_public_response_that_sets_the_cookie_is_made_private(
    make_client: MakeClient,
) -> None:
    client = make_client(secret=SECRET)
    response = client.get("/public")
    assert set_cookie_headers(response)
    assert response.headers["cache-control"] == "private, max-age=60"
    vary = {v.strip() for h in response.headers.get_list("vary") for v in h.split(",")}
    assert vary == {"Accept-Encoding", "Cookie"}
