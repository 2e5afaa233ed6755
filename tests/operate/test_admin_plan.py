"""The plan's operator controls in the admin API, over ASGI and WSGI, with the actor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.operate.admin import AdminASGIApp, AdminWSGIApp, openapi_document
from tests.support import FakeClock, healthy_traffic

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Gate-Actor": "cli:alice"}
HOUR = 3600.0


@pytest.fixture
def gate(clock: FakeClock) -> PromotionGate:
    plan = RolloutPlan(steps=(1, 5, 25), bake_seconds=HOUR, staging_bake_seconds=HOUR)
    config = PromotionConfig(name="checkout", min_requests=100, plan=plan)
    return PromotionGate(config, clock=clock, wall_clock=clock, plan_timer=False)


@pytest.fixture(params=["asgi", "wsgi"])
def client(request: pytest.FixtureRequest, gate: PromotionGate) -> Iterator[httpx.Client]:
    if request.param == "asgi":
        with TestClient(AdminASGIApp(gate, token=TOKEN, token_name="deploy-bot")) as c:
            yield c
    else:
        app = AdminWSGIApp(gate, token=TOKEN, token_name="deploy-bot")
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://testserver") as c:
            yield c


def test_plan_controls_over_http(
    client: httpx.Client, gate: PromotionGate, clock: FakeClock
) -> None:
    assert client.get("/plan", headers=AUTH).json()["plan"]["position"] is None
    answer = client.post("/plan/pause", json={}, headers=AUTH)
    assert answer.status_code == 409 and "no release" in answer.json()["error"]
    client.post("/canary", json={"percent": 1, "flags": ["new_checkout"]}, headers=AUTH)
    plan = client.post("/plan/pause", json={"reason": "freeze"}, headers=AUTH).json()["plan"]
    assert plan["position"]["status"] == "paused" and plan["position"]["reason"] == "freeze"
    assert (
        client.post("/plan/resume", headers=AUTH).json()["plan"]["position"]["status"] == "running"
    )
    answer = client.post("/plan/skip", json={"step": 3}, headers=AUTH)
    assert answer.status_code == 409 and "not enough data" in answer.json()["error"]
    answer = client.post("/plan/skip", json={"step": 9}, headers=AUTH)
    assert answer.status_code == 400 and answer.json()["field"] == "step"
    answer = client.post("/plan/skip", json={"step": 3, "force": True}, headers=AUTH)
    assert answer.json()["environment"] == {"name": "canary", "traffic_percent": 25.0}
    shown = client.get("/plan", headers=AUTH).json()["plan"]
    assert shown["current"]["label"] == "canary 25%"
    assert shown["eta_seconds"] == pytest.approx(2 * HOUR)
    answer = client.post("/plan/abort", json={"reason": "totals are wrong"}, headers=AUTH)
    assert answer.json()["plan"]["position"]["status"] == "aborted"
    assert answer.json()["environment"]["name"] == "production"
    answer = client.post("/plan/retry", headers=AUTH)
    assert answer.json()["environment"] == {"name": "canary", "traffic_percent": 1.0}
    healthy_traffic(gate)
    answer = client.post("/plan/skip", json={}, headers=AUTH)  # promote now
    assert answer.json()["environment"]["name"] == "production"
    events = client.get("/history", headers=AUTH).json()["events"]
    assert [e["actor"] for e in events] == ["deploy-bot (client note: cli:alice)"] * len(events)
    assert [e.get("action", e["kind"]) for e in events] == [
        "start_canary",
        "pause",
        "resume",
        "skip",
        "rollback",
        "retry",
        "skip",
    ]
    assert client.get("/status", headers=AUTH).json()["plan"]["position"]["status"] == "done"


def test_without_a_plan_the_controls_are_refused(clock: FakeClock) -> None:
    gate = PromotionGate(PromotionConfig(environment=Environment.canary(10)), clock=clock)
    with TestClient(AdminASGIApp(gate, token=TOKEN)) as client:
        assert client.get("/plan", headers=AUTH).json() == {"plan": None}
        for path in ("pause", "resume", "abort", "retry", "skip"):
            body = {"reason": "x"} if path == "abort" else {}
            answer = client.post(f"/plan/{path}", json=body, headers=AUTH)
            assert answer.status_code == 409, path
            assert "plan" in answer.json()["error"]
        event = client.post("/rollback", json={"reason": "r"}, headers=AUTH).json()["event"]
        assert event["actor"] == "admin (client note: cli:alice)"


def test_the_plan_endpoints_are_documented() -> None:
    document = openapi_document()
    validate(document)
    assert {
        "/plan",
        "/plan/pause",
        "/plan/resume",
        "/plan/abort",
        "/plan/retry",
        "/plan/skip",
    } <= set(document["paths"])


def check_against_the_document(method: str, path: str, payload: Any) -> None:
    """Validate ``payload`` against the 200 schema the document gives ``method path``."""
    document = openapi_document()
    ok = document["paths"][path][method.lower()]["responses"]["200"]
    schema: dict[str, Any] = ok["content"]["application/json"]["schema"]
    jsonschema.validate(payload, {**schema, "components": document["components"]})


def conforms(answer: httpx.Response) -> None:
    assert answer.status_code == 200, answer.text
    check_against_the_document(answer.request.method, answer.request.url.path, answer.json())


def test_the_plan_answers_match_the_typed_plan_of_the_document(
    client: httpx.Client, gate: PromotionGate
) -> None:
    conforms(client.get("/plan", headers=AUTH))  # a plan, no release on it
    client.post("/canary", json={"percent": 1, "flags": ["new_checkout"]}, headers=AUTH)
    conforms(client.post("/plan/pause", json={"reason": "freeze"}, headers=AUTH))
    conforms(client.get("/plan", headers=AUTH))  # paused, with its bake and ETA
    conforms(client.post("/plan/resume", headers=AUTH))
    conforms(client.post("/plan/skip", json={"step": 3, "force": True}, headers=AUTH))
    conforms(client.post("/plan/abort", json={"reason": "totals are wrong"}, headers=AUTH))
    conforms(client.post("/plan/retry", headers=AUTH))
    healthy_traffic(gate)
    conforms(client.post("/plan/skip", json={}, headers=AUTH))  # production: done
    shown = client.get("/plan", headers=AUTH)
    conforms(shown)
    garbled = shown.json()
    garbled["plan"]["position"]["index"] = "two"
    with pytest.raises(jsonschema.ValidationError):  # the typed plan does say something
        check_against_the_document("GET", "/plan", garbled)
