"""The admin API: the same behaviour over ASGI and WSGI, and mounted in each framework."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.admin import AdminASGIApp, AdminWSGIApp

from .conftest import FakeClock

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
    assert kinds == ["set_traffic", "promote", "promote", "rollback", "start_canary", "rollback"]


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
        ("/flags/unknown/disable", None, 400, "feature"),
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
    response = client.post("/traffic", content=b"{not json", headers=AUTH)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    response = client.post("/traffic", content=b"[1, 2]", headers=AUTH)
    assert response.status_code == 400
    assert client.get("/promote", headers=AUTH).status_code == 405
    assert client.get("/flags/new_api/enable", headers=AUTH).status_code == 405
    response = client.post("/traffic", content=b"{" + b" " * 70_000 + b"}", headers=AUTH)
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

    from .apps import configure_django

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
