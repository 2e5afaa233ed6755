"""The admin API: the same behaviour over ASGI and WSGI, and mounted in each framework."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.operate import admin
from gate_middleware.operate.admin import (
    ROUTES,
    AdminASGIApp,
    AdminWSGIApp,
    dashboard_html,
    find_route,
)
from tests.support import FakeClock

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def gate(clock: FakeClock) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(
            environment=Environment.canary(10), feature_flags=["new_api"], min_requests=20
        ),
        clock=clock,
    )


@pytest.fixture(params=["asgi", "wsgi"])
def client(request: pytest.FixtureRequest, gate: PromotionGate) -> Iterator[httpx.Client]:
    if request.param == "asgi":
        with TestClient(AdminASGIApp(gate, token=TOKEN)) as test_client:
            yield test_client
    else:
        transport = httpx.WSGITransport(app=AdminWSGIApp(gate, token=TOKEN))
        with httpx.Client(transport=transport, base_url="http://testserver") as wsgi_client:
            yield wsgi_client


def feed(gate: PromotionGate, canary_errors: int = 0) -> None:
    for i in range(100):
        gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
    for i in range(40):
        gate.record_request_outcome(f"c{i}", i >= canary_errors, 0.02, variant="canary")


ENDPOINTS = [
    ("GET", "/status", None),
    ("GET", "/history", None),
    ("GET", "/openapi.json", None),
    ("POST", "/promote", {"target": "staging"}),
    ("POST", "/traffic", {"percent": 50}),
    ("POST", "/canary", {"percent": 5, "flags": []}),
    ("POST", "/rollback", {"reason": "x"}),
    ("POST", "/flags/new_api/enable", None),
    ("POST", "/flags/new_api/disable", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_every_endpoint_requires_the_token(
    client: httpx.Client,
    gate: PromotionGate,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    before = gate.state
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "error" in response.json()
    assert gate.state == before


def test_the_admin_app_refuses_to_start_without_a_token(gate: PromotionGate) -> None:
    for token in (None, "", "short"):
        with pytest.raises(ConfigError, match="token"):
            AdminASGIApp(gate, token=token)
        with pytest.raises(ConfigError, match="token"):
            AdminWSGIApp(gate, token=token)


def test_status_reports_the_gate(client: httpx.Client, gate: PromotionGate) -> None:
    feed(gate)
    gate.monitor_canary_health()  # takes a sample for the charts
    status = client.get("/status", headers=AUTH).json()
    assert status["environment"] == {"name": "canary", "traffic_percent": 10.0}
    assert status["next_stage"] == "staging"
    assert status["flags"] == {"stable": [], "release": ["new_api"]}
    assert status["health"]["canary_requests"] == 40
    assert status["health"]["production_requests"] == 100
    assert status["health"]["verdict"] == "HEALTHY"
    assert status["slo"] == {
        "compliance": 1.0,
        "threshold": 0.95,
        "met": True,
        "latency_objective_seconds": 0.5,
    }
    assert status["windows"]["canary"]["requests"] == 40
    assert len(status["series"]) == 1
    assert client.get("/status", headers=AUTH).headers["cache-control"] == "no-store"


def test_steering_through_the_api(client: httpx.Client, gate: PromotionGate) -> None:
    assert client.post("/traffic", json={"percent": 25}, headers=AUTH).status_code == 200
    assert gate.environment == Environment.canary(25)
    feed(gate)  # evidence for the new step
    response = client.post("/promote", json={}, headers=AUTH)  # the next stage
    assert response.json() == {"environment": {"name": "staging", "traffic_percent": 100.0}}
    response = client.post("/promote", json={"target": "production", "force": True}, headers=AUTH)
    assert response.status_code == 200 and gate.environment == Environment.PRODUCTION
    assert client.post("/flags/dark_mode/enable", headers=AUTH).status_code == 200
    assert gate.is_feature_enabled("dark_mode")
    assert client.post("/flags/dark_mode/disable", headers=AUTH).json()["enabled"] is False
    response = client.post("/canary", json={"percent": 5, "flags": ["search_v2"]}, headers=AUTH)
    assert response.json()["environment"]["traffic_percent"] == 5.0
    event = client.post("/rollback", json={"reason": "search is slow"}, headers=AUTH).json()[
        "event"
    ]
    assert event["reason"] == "search is slow" and event["environment"]["name"] == "canary"
    events = client.get("/history", headers=AUTH).json()["events"]
    kinds = [e.get("action", e["kind"]) for e in events]
    assert kinds == [
        "set_traffic",
        "promote",
        "promote",
        "enable_flag",
        "disable_flag",
        "start_canary",
        "rollback",
    ]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/traffic", {"percent": 150}, 400, "traffic_percent"),
        ("/traffic", {"percent": "ten"}, 400, "traffic_percent"),
        ("/traffic", {}, 400, "percent"),
        ("/traffic", {"percent": 10, "extra": 1}, 400, "extra"),
        ("/promote", {"target": "qa"}, 400, "target"),
        ("/promote", {"target": "staging", "force": "yes"}, 400, "force"),
        ("/canary", {"percent": 5}, 409, None),  # a release is already in progress
        ("/canary", {"percent": 5, "flags": "x"}, 400, "flags"),
        ("/rollback", {"reason": ""}, 400, "reason"),
        ("/rollback", {}, 400, "reason"),
        ("/flags/bad%20name/enable", None, 400, "feature"),
        ("/flags/unknown/disable", None, 404, "feature"),  # no such flag is on
        ("/promote", {"target": "staging"}, 409, None),  # not enough data
        ("/nowhere", {}, 404, None),
    ],
)
def test_bad_requests_change_nothing(
    client: httpx.Client,
    gate: PromotionGate,
    path: str,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    before = gate.state
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"]
    assert payload.get("field") == field
    assert gate.state == before


def test_invalid_json_and_methods(client: httpx.Client, gate: PromotionGate) -> None:
    before = gate.state
    headers = {**AUTH, "Content-Type": "application/json"}
    response = client.post("/traffic", content=b"{not json", headers=headers)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    response = client.post("/traffic", content=b"[1, 2]", headers=headers)
    assert response.status_code == 400
    assert client.get("/promote", headers=AUTH).status_code == 405
    assert client.get("/flags/new_api/enable", headers=AUTH).status_code == 405
    response = client.post("/traffic", content=b"{" + b" " * 70_000 + b"}", headers=headers)
    assert response.status_code == 413
    assert gate.state == before


def test_an_unhealthy_promotion_answers_409_with_the_gates_reason(
    client: httpx.Client, gate: PromotionGate
) -> None:
    for i in range(100):
        gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
    for i in range(40):
        gate.record_request_outcome(f"c{i}", True, 0.027, variant="canary")  # p99 1.35x
    response = client.post("/promote", json={"target": "staging"}, headers=AUTH)
    assert response.status_code == 409
    assert "health score" in response.json()["error"]
    assert gate.environment == Environment.canary(10)
    response = client.post("/promote", json={"target": "production"}, headers=AUTH)
    assert response.status_code == 409  # staging was skipped but canary -> production is valid
    gate.rollback("done")
    response = client.post("/promote", json={}, headers=AUTH)
    assert response.status_code == 409 and "no release" in response.json()["error"]


def test_the_openapi_document_is_valid(client: httpx.Client) -> None:
    document = client.get("/openapi.json", headers=AUTH).json()
    validate(document)
    assert set(document["paths"]) >= {
        "/status",
        "/history",
        "/promote",
        "/traffic",
        "/canary",
        "/rollback",
        "/flags/{name}/enable",
        "/flags/{name}/disable",
    }


def test_the_dashboard_page_is_self_contained(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<script>" in page and "<style>" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page  # nothing from a CDN


# -- one route table --------------------------------------------------------------

OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def test_the_dispatch_and_the_openapi_document_know_the_same_routes(
    client: httpx.Client,
) -> None:
    # Walk the table and the served document: every route of one is in the
    # other, and the dispatch answers each of them (no 404, no 405) and no
    # other method at their paths.
    document = client.get("/openapi.json", headers=AUTH).json()
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in OPERATIONS
    }
    declared = {(route.method, route.path) for route in ROUTES}
    assert documented == declared
    assert len(declared) == len(ROUTES)  # no route declared twice
    for method, path in sorted(documented | declared):
        url = path.replace("{name}", "new_api")
        answer = client.request(method, url, headers=AUTH, json={} if method == "POST" else None)
        assert answer.status_code != 405, (method, path, answer.text)
        assert "no admin endpoint" not in answer.text, (method, path)
        for other in ("GET", "POST", "PUT", "DELETE"):
            if (other, path) not in declared:
                assert client.request(other, url, headers=AUTH).status_code == 405, (other, path)


def test_each_route_has_one_name_and_its_links_name_routes() -> None:
    names = [route.name for route in ROUTES]
    assert len(set(names)) == len(names)
    for route in ROUTES:
        for link in route.links.values():
            assert link["operationId"] in names, (route.name, link)


def test_the_module_docstring_lists_every_route() -> None:
    assert admin.__doc__ is not None
    listed = re.findall(r"^    (GET|POST) +(/\S*)", admin.__doc__, re.MULTILINE)
    assert listed == [(route.method, route.path) for route in ROUTES]


def test_the_dashboard_calls_routes_of_the_table() -> None:
    page = dashboard_html().decode("utf-8")
    calls = re.findall(r"\b(?:api|act)\(\"(GET|POST)\", [\"`]([^\"`]+)[\"`]", page)
    assert len(calls) >= 10
    for method, path in calls:
        concrete = "/" + re.sub(r"\$\{[^}]*\}", "x", path)  # a template's ${...}: one segment
        assert find_route(method, concrete) is not None, (method, path)


def test_the_readme_lists_the_routes_of_the_table() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Admin API", 1)[1].split("\n### ", 1)[0]
    listed = set()
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)]
        if len(cells) > 3 and cells[1] in ("GET", "POST"):
            listed |= {(cells[1], path) for path in re.findall(r"`(/[^`]*)`", cells[2])}
    assert listed == {(route.method, route.path) for route in ROUTES}


# -- mounted in each framework ----------------------------------------------------


def test_mounted_in_starlette(gate: PromotionGate) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/ops/gate", AdminASGIApp(gate, token=TOKEN))])
    with TestClient(app) as client:
        assert client.get("/ops/gate/status", headers=AUTH).json()["rollout"] == "default"
        assert client.get("/ops/gate/status").status_code == 401
        assert (
            client.post("/ops/gate/traffic", json={"percent": 20}, headers=AUTH).status_code == 200
        )
    assert gate.environment == Environment.canary(20)


def test_mounted_in_flask(gate: PromotionGate) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.middleware.lint import LintMiddleware

    app = Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/gate": AdminWSGIApp(gate, token=TOKEN)})  # type: ignore[method-assign]
    transport = httpx.WSGITransport(app=LintMiddleware(app))
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        assert client.get("/gate/status", headers=AUTH).json()["rollout"] == "default"
        assert client.post("/gate/traffic", json={"percent": 30}, headers=AUTH).status_code == 200
    assert gate.environment == Environment.canary(30)


def test_mounted_in_django(gate: PromotionGate) -> None:
    from django.test.utils import override_settings

    from gate_middleware.integrations.django import admin_urls
    from tests.apps import configure_django

    configure_django()
    import sys
    import types

    urls = types.ModuleType("tests._admin_urls")
    urls.urlpatterns = admin_urls(gate, token=TOKEN, prefix="ops/gate/")  # type: ignore[attr-defined]
    sys.modules["tests._admin_urls"] = urls
    try:
        with override_settings(ROOT_URLCONF="tests._admin_urls", MIDDLEWARE=[]):
            from django.core.handlers.wsgi import WSGIHandler

            transport = httpx.WSGITransport(app=WSGIHandler())
            with httpx.Client(transport=transport, base_url="http://testserver") as client:
                assert client.get("/ops/gate/status", headers=AUTH).json()["rollout"] == "default"
                assert client.get("/ops/gate/status").status_code == 401
                response = client.post("/ops/gate/traffic", json={"percent": 40}, headers=AUTH)
                assert response.status_code == 200
                assert client.get("/ops/gate/").headers["content-type"].startswith("text/html")
    finally:
        del sys.modules["tests._admin_urls"]
    assert gate.environment == Environment.canary(40)


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer  ", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(client: httpx.Client, scheme: str) -> None:
    # RFC 7235: the scheme is a case-insensitive token, then one or more spaces.
    response = client.get("/status", headers={"Authorization": f"{scheme.strip()} {TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/traffic", b'{"percent": 30, "percent": 150}', "percent"),  # last would win
        ("/promote", b'{"target": "staging", "target": "production"}', "target"),
        ("/flags/new_api/disable", b'{"name": "other"}', "name"),  # the path names the flag
        ("/flags/dark_mode/enable", b'{"force": true}', "force"),
        ("/traffic", b'{"percent": -0.0}', "traffic_percent"),
        ("/canary", b'{"percent": -0.0}', "traffic_percent"),
        ("/traffic", b'{"percent": Infinity}', None),
        ("/traffic", b"[" * 2000 + b"]" * 2000, None),  # 4 KB; RecursionError before
        # Too deep for the parser (Python 3.11, 3.12) or an unknown field 'a' (3.13
        # parses 2,000 levels): refused either way, and nothing changed.
        (
            "/traffic",
            b'{"a":' * 2000 + b"1" + b"}" * 2000,
            "a" if sys.version_info >= (3, 13) else None,
        ),
        ("/traffic", b'\xff\xfe{"percent": 1}', None),
        ("/traffic", b'{"percent": 1' + b"0" * 5000 + b"}", None),  # past int's digit limit
        ("/traffic", b'{"percent": 1' + b"0" * 400 + b"}", None),  # past a float's range
        ("/canary", b'{"percent": 1' + b"0" * 400 + b', "flags": []}', None),
    ],
)
def test_loose_json_is_refused_and_changes_nothing(
    client: httpx.Client, gate: PromotionGate, path: str, body: bytes, field: str | None
) -> None:
    feed(gate)
    before = gate.state
    headers = {**AUTH, "Content-Type": "application/json"}
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json().get("field") == field
    assert gate.state == before


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_body_that_is_not_json_answers_415(
    client: httpx.Client, gate: PromotionGate, content_type: str | None
) -> None:
    before = gate.state
    headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}
    response = client.post("/traffic", content=b'{"percent": 30}', headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert gate.state == before
    charset = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    assert client.post("/traffic", content=b'{"percent": 30}', headers=charset).status_code == 200


def test_every_answer_is_no_store(client: httpx.Client) -> None:
    json_headers = {**AUTH, "Content-Type": "application/json"}
    answers = [
        client.get("/status", headers=AUTH),
        client.get("/status"),
        client.get("/nowhere", headers=AUTH),
        client.get("/promote", headers=AUTH),
        client.post("/traffic", content=b"{", headers=json_headers),
        client.post("/traffic", content=b"{}", headers={**AUTH, "Content-Type": "text/plain"}),
        client.post("/traffic", content=b"{" + b" " * 70_000 + b"}", headers=json_headers),
        client.get("/"),
    ]
    assert sorted({a.status_code for a in answers}) == [200, 400, 401, 404, 405, 413, 415]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url


def _inline(page: str, tag: str) -> list[str]:
    chunks = page.split(f"<{tag}>")[1:]
    return [chunk.split(f"</{tag}>", 1)[0] for chunk in chunks]


def test_the_dashboard_cannot_be_framed_or_given_other_code(client: httpx.Client) -> None:
    import base64
    import hashlib

    response = client.get("/")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = dict(
        (d.strip().split(" ", 1) + [""])[:2]
        for d in response.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        [inline] = _inline(response.text, tag)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"  # that code, nothing else
    assert 'style="' not in response.text  # style attributes would need 'unsafe-inline'


@contextmanager
def wsgi_server(app: Any, kind: str) -> Iterator[str]:
    """A real WSGI server on 127.0.0.1: werkzeug's (it reads chunked bodies and sets
    wsgi.input_terminated) or the standard library's (it does neither)."""
    import threading

    if kind == "werkzeug":
        from werkzeug.serving import make_server

        server: Any = make_server("127.0.0.1", 0, app, threaded=True)
    else:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def django_admin(gate: PromotionGate, prefix: str) -> Iterator[Any]:
    import sys
    import types

    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    from gate_middleware.integrations.django import admin_urls
    from tests.apps import configure_django

    configure_django()
    urls = types.ModuleType("tests._chunked_admin_urls")
    urls.urlpatterns = admin_urls(gate, token=TOKEN, prefix=prefix)  # type: ignore[attr-defined]
    sys.modules["tests._chunked_admin_urls"] = urls
    try:
        with override_settings(ROOT_URLCONF="tests._chunked_admin_urls", MIDDLEWARE=[]):
            yield WSGIHandler()
    finally:
        del sys.modules["tests._chunked_admin_urls"]


def chunked(body: bytes) -> Iterator[bytes]:
    yield body[:5]
    yield body[5:]


@pytest.mark.parametrize("mounted", ["AdminWSGIApp", "django"])
def test_a_chunked_body_is_read_to_its_end(gate: PromotionGate, mounted: str) -> None:
    feed(gate)
    headers = {**AUTH, "Content-Type": "application/json"}
    with contextlib.ExitStack() as stack:
        if mounted == "django":
            app = stack.enter_context(django_admin(gate, "gate/"))
        else:
            app = DispatcherMiddleware(NotFound(), {"/gate": AdminWSGIApp(gate, token=TOKEN)})
        base = stack.enter_context(wsgi_server(app, "werkzeug"))
        before = gate.state
        # Read as {} before, this promoted the rollout to the next stage.
        response = httpx.post(
            f"{base}/gate/promote", content=chunked(b'{"target": "nonsense"}'), headers=headers
        )
        assert response.status_code == 400 and response.json()["field"] == "target"
        assert gate.state == before
        response = httpx.post(
            f"{base}/gate/traffic", content=chunked(b'{"percent": 30}'), headers=headers
        )
        assert response.status_code == 200, response.text
    assert gate.environment == Environment.canary(30)


@pytest.mark.parametrize("mounted", ["AdminWSGIApp", "django"])
def test_a_chunked_body_the_server_cannot_end_is_refused(gate: PromotionGate, mounted: str) -> None:
    feed(gate)
    headers = {**AUTH, "Content-Type": "application/json"}
    with contextlib.ExitStack() as stack:
        if mounted == "django":
            app = stack.enter_context(django_admin(gate, "gate/"))
        else:
            app = DispatcherMiddleware(NotFound(), {"/gate": AdminWSGIApp(gate, token=TOKEN)})
        base = stack.enter_context(wsgi_server(app, "wsgiref"))
        before = gate.state
        response = httpx.post(f"{base}/gate/promote", content=chunked(b"{}"), headers=headers)
        assert response.status_code == 411
        assert "Content-Length" in response.json()["error"]
    assert gate.state == before
