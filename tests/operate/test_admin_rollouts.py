"""The admin API, the CLI and the Alertmanager receiver over a ``Rollouts``
set: each rollout listed and steered by name (``?rollout=NAME``), mounted
in each framework, while steering one leaves the others as they were; and
rollouts created while the app runs (``POST /rollouts``, ``gate-middleware
create``), served at once here and, for a set on a store, by every set
that shares it."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from starlette.testclient import TestClient

from gate_middleware import Environment, PromotionConfig, PromotionGate, compute_bucket
from gate_middleware.domain.config import SCENARIO_KEYS
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.gate import Rollouts
from gate_middleware.operate.admin import ROUTES, AdminASGIApp, AdminWSGIApp, route_named
from gate_middleware.operate.operators import token_sha256
from gate_middleware.web.session import SessionCookie
from tests.apps import client_for
from tests.servers import serving
from tests.support import TOKEN, FakeClock, run

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = ("checkout", "search", "profile")
VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
OPERATORS = [
    {"name": "vera", "role": "viewer", "token_sha256": token_sha256(VIEWER)},
    {"name": "otto", "role": "operator", "token": OPERATOR},
    {"name": "ada", "role": "admin", "token": TOKEN},
]
#: The routes that act on one rollout (every one but the set's own).
ONE_ROLLOUT = [route for route in ROUTES if not route.public and route.rollout == "one"]
SECRET = "rollouts-admin-secret-0123456789"
#: A rollout created while the app runs: half the sessions on its canary.
BILLING: dict[str, Any] = {
    "name": "billing",
    "feature_flags": ["new_billing"],
    "promotion_environment": "canary",
    "promotion_traffic_percent": 50,
    "min_requests": 10_000,
    "plan": {"steps": [50, 100], "bake_seconds": 60},
}


def rollout_gate(name: str, clock: FakeClock) -> PromotionGate:
    """A release of ``name`` in progress, on its plan's first step, its flag on for canary."""
    gate = PromotionGate(
        PromotionConfig(name=name, min_requests=20, plan=RolloutPlan()),
        clock=clock,
        wall_clock=clock,
        plan_timer=False,
    )
    gate.start_canary(feature_flags=[f"{name}_v2"])
    return gate


@pytest.fixture
def rollouts(clock: FakeClock) -> Rollouts:
    # The options are what a rollout created in the set is opened with.
    return Rollouts(
        [rollout_gate(name, clock) for name in NAMES],
        clock=clock,
        wall_clock=clock,
        plan_timer=False,
    )


def states(rollouts: Rollouts) -> dict[str, Any]:
    return {gate.name: gate.state for gate in rollouts}


@contextmanager
def django_client(served: PromotionGate | Rollouts) -> Iterator[httpx.Client]:
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    from gate_middleware.integrations.django import admin_urls
    from tests.apps import configure_django

    configure_django()
    urls = types.ModuleType("tests._rollouts_admin_urls")
    urls.urlpatterns = admin_urls(served, operators=OPERATORS, prefix="gate/")  # type: ignore[attr-defined]
    sys.modules["tests._rollouts_admin_urls"] = urls
    try:
        with override_settings(ROOT_URLCONF="tests._rollouts_admin_urls", MIDDLEWARE=[]):
            transport = httpx.WSGITransport(app=WSGIHandler())
            with httpx.Client(transport=transport, base_url="http://testserver/gate") as client:
                yield client
    finally:
        del sys.modules["tests._rollouts_admin_urls"]


@contextmanager
def mounted(kind: str, served: PromotionGate | Rollouts) -> Iterator[httpx.Client]:
    """A client whose base URL is the admin API of ``served``, mounted as ``kind``."""
    if kind == "asgi":
        with TestClient(AdminASGIApp(served, operators=OPERATORS)) as client:
            yield client
    elif kind == "wsgi":
        from werkzeug.middleware.lint import LintMiddleware

        transport = httpx.WSGITransport(
            app=LintMiddleware(AdminWSGIApp(served, operators=OPERATORS))
        )
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            yield client
    elif kind == "starlette":
        from starlette.applications import Starlette
        from starlette.routing import Mount

        app = Starlette(routes=[Mount("/ops/gate", AdminASGIApp(served, operators=OPERATORS))])
        with TestClient(app, base_url="http://testserver/ops/gate") as client:
            yield client
    elif kind == "flask":
        from flask import Flask
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        flask_app = Flask(__name__)
        flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, {"/gate": AdminWSGIApp(served, operators=OPERATORS)}
        )
        transport = httpx.WSGITransport(app=flask_app)
        with httpx.Client(transport=transport, base_url="http://testserver/gate") as client:
            yield client
    else:
        with django_client(served) as client:
            yield client


@pytest.fixture(params=["asgi", "wsgi", "starlette", "flask", "django"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(kind: str, rollouts: Rollouts) -> Iterator[httpx.Client]:
    with mounted(kind, rollouts) as opened:
        yield opened


# -- steering one rollout of the set ------------------------------------------------

STEERING = {
    "pause": ("/plan/pause", {"reason": "freeze"}),
    "rollback": ("/rollback", {"reason": "totals are wrong"}),
    "traffic": ("/traffic", {"percent": 35}),
    "flag on": ("/flags/dark_mode/enable", None),
    "flag off": ("/flags/search_v2/disable", None),
}


@pytest.mark.parametrize("action", list(STEERING))
def test_steering_one_rollout_leaves_the_others_alone(
    client: httpx.Client, rollouts: Rollouts, action: str
) -> None:
    path, body = STEERING[action]
    before = states(rollouts)
    response = client.post(path, params={"rollout": "search"}, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    after = states(rollouts)
    assert after["search"] != before["search"]
    assert after["search"].version == before["search"].version + 1
    assert {name: after[name] for name in ("checkout", "profile")} == {
        name: before[name] for name in ("checkout", "profile")
    }
    search = rollouts["search"]
    changed = {
        "pause": lambda: search.state.plan is not None and search.state.plan.status == "paused",
        "rollback": lambda: search.environment == Environment.PRODUCTION,
        "traffic": lambda: search.environment == Environment.canary(35),
        "flag on": lambda: search.is_feature_enabled("dark_mode"),
        "flag off": lambda: not search.is_feature_enabled("search_v2"),
    }[action]
    assert changed()
    assert search.get_history()[-1].actor == "ada"


def test_each_rollouts_status_history_and_plan_are_its_own(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    rollouts["profile"].set_traffic_percent(20)
    for name in NAMES:
        status = client.get("/status", params={"rollout": name}, headers=AUTH).json()
        assert status["rollout"] == name
        assert status["flags"]["release"] == [f"{name}_v2"]
        assert status["environment"]["traffic_percent"] == (20 if name == "profile" else 1.0)
        history = client.get("/history", params={"rollout": name, "limit": "50"}, headers=AUTH)
        assert len(history.json()["events"]) == len(rollouts[name].get_history())
        plan = client.get("/plan", params={"rollout": name}, headers=AUTH).json()["plan"]
        assert plan == json.loads(json.dumps(rollouts[name].plan_status()))


def test_get_rollouts_answers_each_status_in_the_sets_order(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    listed = client.get("/rollouts", headers=AUTH).json()
    assert [rollout["name"] for rollout in listed["rollouts"]] == list(NAMES)
    assert listed["retired"] == []
    for rollout in listed["rollouts"]:
        alone = client.get("/status", params={"rollout": rollout["name"]}, headers=AUTH).json()
        assert rollout["status"] == alone
    # /rollouts concerns the set: it takes no ?rollout=.
    refused = client.get("/rollouts", params={"rollout": "search"}, headers=AUTH)
    assert refused.status_code == 400 and refused.json()["field"] == "rollout"


# -- which rollout: required, unknown, defaulted --------------------------------------


def test_a_set_of_several_needs_the_rollout_on_every_route(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    before = states(rollouts)
    for route in ONE_ROLLOUT:
        url = route.url(name="search_v2") if "{name}" in route.path else route.path
        body = {} if route.method == "POST" else None
        response = client.request(route.method, url, json=body, headers=AUTH)
        assert response.status_code == 400, (route.name, response.text)
        answer = response.json()
        assert answer["field"] == "rollout", route.name
        assert all(repr(name) in answer["error"] for name in NAMES), answer
        unknown = client.request(
            route.method, url, params={"rollout": "billing"}, json=body, headers=AUTH
        )
        assert unknown.status_code == 404, (route.name, unknown.text)
        assert "'billing'" in unknown.json()["error"]
        assert all(repr(name) in unknown.json()["error"] for name in NAMES)
    assert states(rollouts) == before


def test_a_set_of_one_needs_no_name(kind: str, clock: FakeClock) -> None:
    only = Rollouts([rollout_gate("checkout", clock)])
    with mounted(kind, only) as client:
        assert client.get("/status", headers=AUTH).json()["rollout"] == "checkout"
        assert client.post("/traffic", json={"percent": 12}, headers=AUTH).status_code == 200
        assert only["checkout"].environment == Environment.canary(12)
        assert client.get("/status", params={"rollout": "other"}, headers=AUTH).status_code == 404


def test_a_single_gate_takes_its_own_name_and_no_other(kind: str, clock: FakeClock) -> None:
    gate = rollout_gate("checkout", clock)
    with mounted(kind, gate) as client:
        own = client.get("/status", params={"rollout": "checkout"}, headers=AUTH)
        assert own.status_code == 200 and own.json() == client.get("/status", headers=AUTH).json()
        other = client.post(
            "/rollback", params={"rollout": "search"}, json={"reason": "x"}, headers=AUTH
        )
        assert other.status_code == 404 and "'checkout'" in other.json()["error"]
        assert gate.environment != Environment.PRODUCTION
        listed = client.get("/rollouts", headers=AUTH).json()
        assert listed == {
            "rollouts": [
                {
                    "name": "checkout",
                    "status": client.get("/status", headers=AUTH).json(),
                    "created": None,
                }
            ],
            "retired": [],
            "refused": {},
        }
        before = gate.state
        for action in ("retire", "reinstate"):
            refused = client.post(f"/rollouts/checkout/{action}", headers=AUTH)
            assert refused.status_code == 409, refused.text
            assert "Rollouts set" in refused.json()["error"]
        # One gate has no set to add a rollout to: 409, once the body is a config.
        refused = client.post("/rollouts", json=BILLING, headers=AUTH)
        assert refused.status_code == 409, refused.text
        assert "Rollouts set" in refused.json()["error"] and "'billing'" in refused.json()["error"]
        bad = client.post("/rollouts", json={**BILLING, "min_requests": 0}, headers=AUTH)
        assert bad.status_code == 400 and bad.json()["field"] == "min_requests"
        assert gate.state == before


# -- the hardening still holds ---------------------------------------------------------


def test_strict_queries_and_the_public_page_under_a_set(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    twice = client.get("/status?rollout=search&rollout=search", headers=AUTH)
    assert twice.status_code == 400 and twice.json()["field"] == "rollout"
    for query in ("rollout=search&limit=%C2%B2", "rollout=search&limit=0", "rollout=search&x=1"):
        assert client.get(f"/history?{query}", headers=AUTH).status_code == 400, query
    assert client.get("/status?rollout", headers=AUTH).status_code == 400  # strict parsing
    # The page takes no query, and needs no token, under a set as with one gate.
    page = client.get("/", params={"rollout": "search"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/status", params={"rollout": "search"}).status_code == 401


def test_two_authorization_headers_are_refused_under_a_set(rollouts: Rollouts) -> None:
    with TestClient(AdminASGIApp(rollouts, operators=OPERATORS)) as client:
        headers = [("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")]
        response = client.get("/rollouts", headers=headers)
        assert response.status_code == 401


def test_the_openapi_document_lists_the_rollouts(client: httpx.Client) -> None:
    document = client.get("/openapi.json", headers=AUTH).json()
    assert (
        client.get("/openapi.json", params={"rollout": "search"}, headers=AUTH).json() == document
    )
    assert client.get("/openapi.json", params={"rollout": "x"}, headers=AUTH).status_code == 404
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        parameters = {p["name"]: p for p in operation.get("parameters", [])}
        if route.public or route.rollout == "set":
            assert "rollout" not in parameters, route.name
        else:
            assert parameters["rollout"]["schema"]["enum"] == list(NAMES), route.name
            assert "404" in operation["responses"], route.name


# -- roles, retire and reinstate ---------------------------------------------------------


def test_the_set_routes_need_their_roles(client: httpx.Client, rollouts: Rollouts) -> None:
    assert client.get("/rollouts", headers={"Authorization": f"Bearer {VIEWER}"}).status_code == 200
    before = states(rollouts)
    for token in (VIEWER, OPERATOR):
        headers = {"Authorization": f"Bearer {token}"}
        for action in ("retire", "reinstate"):
            refused = client.post(f"/rollouts/search/{action}", headers=headers)
            assert refused.status_code == 403 and refused.json()["role_needed"] == "admin"
        refused = client.post("/rollouts", json=BILLING, headers=headers)
        assert refused.status_code == 403 and refused.json()["role_needed"] == "admin"
        assert "createRollout" in refused.json()["error"]
    assert rollouts.names == NAMES and states(rollouts) == before
    assert rollouts.created == {}


def test_retire_and_reinstate_a_rollout(client: httpx.Client, rollouts: Rollouts) -> None:
    search = rollouts["search"]
    others = {name: rollouts[name].state for name in ("checkout", "profile")}
    retired = client.post("/rollouts/search/retire", headers={**AUTH, "X-Gate-Actor": "cli:ada"})
    assert retired.status_code == 200, retired.text
    answer = retired.json()
    assert answer["rollouts"] == list(NAMES) and answer["retired"] == ["search"]
    assert answer["event"]["action"] == "retire"
    assert answer["event"]["actor"] == "ada (client note: cli:ada)"
    assert search.get_history()[-1].action == "retire" and search.retired
    assert rollouts.names == NAMES  # still listed and steerable, served by no one
    assert not rollouts.route_request("s1").is_enabled("search_v2")
    listed = client.get("/rollouts", headers=AUTH).json()
    assert [r["name"] for r in listed["rollouts"]] == list(NAMES)
    assert listed["retired"] == ["search"]
    status = client.get("/status", params={"rollout": "search"}, headers=AUTH)
    assert status.status_code == 200 and status.json()["retired"] is True
    again = client.post("/rollouts/search/retire", headers=AUTH)
    assert again.status_code == 409 and "retired already" in again.json()["error"]
    assert client.post("/rollouts/billing/reinstate", headers=AUTH).status_code == 404

    reinstated = client.post("/rollouts/search/reinstate", headers=AUTH)
    assert reinstated.status_code == 200, reinstated.text
    assert reinstated.json()["event"]["action"] == "reinstate"
    assert reinstated.json()["retired"] == [] and not search.retired
    assert search.get_history()[-1].actor == "ada"
    assert client.post("/rollouts/search/reinstate", headers=AUTH).status_code == 409
    assert {name: rollouts[name].state for name in ("checkout", "profile")} == others


# -- rollouts created while the app runs ---------------------------------------------


def served_flags(rollouts: Rollouts, sessions: int) -> list[tuple[str, list[str]]]:
    """(session id, the flags its request got) for ``sessions`` new
    sessions, each one request through an app the set serves."""
    http, cleanup = client_for("starlette", rollouts, secret=SECRET)  # type: ignore[arg-type]
    try:
        served = []
        for _ in range(sessions):
            http.cookies.clear()
            response = http.get("/")
            assert response.status_code == 200
            cookie = f"gate_session={response.cookies['gate_session']}"
            session_id = SessionCookie(secret=SECRET).read(cookie)
            assert session_id is not None
            served.append((session_id, list(response.json()["flags"])))
        return served
    finally:
        http.close()
        if cleanup:
            cleanup()


def assert_billing_served(rollouts: Rollouts) -> None:
    """Each new session's request has the flag new_billing exactly when the
    rollout billing puts the session on its canary (half of them)."""
    served = served_flags(rollouts, 40)
    on_canary = [compute_bucket("billing", session_id) < 50_000 for session_id, _ in served]
    assert [("new_billing" in flags) for _, flags in served] == on_canary
    assert any(on_canary) and not all(on_canary)


def answer_schema(client: httpx.Client, status: str) -> dict[str, Any]:
    """The schema the served document gives ``POST /rollouts``'s answer ``status``."""
    document = client.get("/openapi.json", headers=AUTH).json()
    response = document["paths"]["/rollouts"]["post"]["responses"][status]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def test_the_create_body_is_a_scenarios_table() -> None:
    route = route_named("createRollout")
    assert set(route.fields) == SCENARIO_KEYS and route.required == ["name"]
    assert route.role == "admin" and route.answer.status == 201
    config = PromotionConfig(
        name="billing",
        environment=Environment.canary(5),
        feature_flags=["new_billing"],
        plan=RolloutPlan(
            steps=[5, 10, {"traffic_percent": 25, "manual": True, "min_requests": 50}],
            approval_deadline_seconds=600,
        ),
        metrics=[MetricDefinition("checkout_completed", tolerance=0.05)],
        salt="billing-1",
        cohort="release",
        holdback_percent=5,
    )
    # What a rollout is kept as is what the body takes, and reads back the same.
    table = config.to_table()
    jsonschema.validate(table, route.body)
    assert PromotionConfig.from_table(table) == config


def test_an_admin_creates_a_rollout_that_requests_get_at_once(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    before = states(rollouts)
    response = client.post("/rollouts", json=BILLING, headers={**AUTH, "X-Gate-Actor": "cli:ada"})
    assert response.status_code == 201, response.text
    answer = response.json()
    jsonschema.validate(answer, answer_schema(client, "201"))
    added = {
        "actor": "ada (client note: cli:ada)",
        "added_at": datetime.fromtimestamp(1000.0, UTC).isoformat(),  # the set's wall clock
    }
    assert answer["rollout"] == "billing" and answer["rollouts"] == [*NAMES, "billing"]
    assert answer["created"] == added and answer["retired"] == []
    # A set without a store: the rollout is this process's only, and the answer says so.
    assert answer["shared"] is False and "this process only" in answer["warning"]
    status = answer["status"]
    assert status["rollout"] == "billing"
    assert status["environment"] == {"name": "canary", "traffic_percent": 50.0}
    assert status["flags"]["release"] == ["new_billing"]
    assert status == client.get("/status", params={"rollout": "billing"}, headers=AUTH).json()
    created = rollouts["billing"].get_history()[0]
    assert created.action == "create" and created.actor == "ada (client note: cli:ada)"

    listed = client.get("/rollouts", headers=AUTH).json()
    assert [rollout["name"] for rollout in listed["rollouts"]] == [*NAMES, "billing"]
    assert [rollout["created"] for rollout in listed["rollouts"]] == [None, None, None, added]
    assert listed["refused"] == {} and listed["retired"] == []
    assert {name: rollouts[name].state for name in NAMES} == before
    assert_billing_served(rollouts)
    # Steered as any rollout of the set.
    traffic = client.post(
        "/traffic", params={"rollout": "billing"}, json={"percent": 60}, headers=AUTH
    )
    assert traffic.status_code == 200 and rollouts["billing"].environment == Environment.canary(60)


#: A body the set cannot add, and the field its 400 names.
UNADDABLE = {
    "a traffic percent over 100": (
        {**BILLING, "promotion_traffic_percent": 150},
        "promotion_traffic_percent",
    ),
    "an unknown key": ({**BILLING, "traffic": 5}, "traffic"),
    "a store": ({**BILLING, "store": "sqlite:///elsewhere.db"}, "store"),
    "no name": ({key: value for key, value in BILLING.items() if key != "name"}, "name"),
    "a name taken": ({**BILLING, "name": "search"}, "name"),
    "a flag another rollout has on": (
        {**BILLING, "feature_flags": ["new_billing", "search_v2"]},
        "feature_flags",
    ),
    "a salt another rollout routes by": ({**BILLING, "salt": "checkout"}, "salt"),
    "a plan that goes backwards": (
        {**BILLING, "plan": {"steps": [50, 20]}},
        "plan.steps[2].traffic_percent",
    ),
    "a count that is not whole": ({**BILLING, "min_requests": 2.5}, "min_requests"),
}


def test_a_rollout_the_set_cannot_add_is_a_400_naming_the_field(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    before = states(rollouts)
    for case, (body, field) in UNADDABLE.items():
        response = client.post("/rollouts", json=body, headers=AUTH)
        assert response.status_code == 400, (case, response.text)
        assert response.json()["field"] == field, (case, response.json())
    taken = client.post("/rollouts", json={**BILLING, "name": "search"}, headers=AUTH).json()
    assert "'search'" in taken["error"] and "'checkout'" in taken["error"]
    clash = client.post(
        "/rollouts", json=UNADDABLE["a flag another rollout has on"][0], headers=AUTH
    )
    assert "'search_v2' belongs to rollout 'search'" in clash.json()["error"]
    assert rollouts.names == NAMES and rollouts.created == {} and states(rollouts) == before
    # 100.0 is a whole count, as the document's integer says.
    whole = client.post("/rollouts", json={**BILLING, "min_requests": 100.0}, headers=AUTH)
    assert whole.status_code == 201, whole.text
    assert rollouts["billing"].config.min_requests == 100


def test_a_store_that_refuses_the_new_rollout_answers_409(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    rollouts = Rollouts.from_url(
        f"sqlite:///{path}", [PromotionConfig(name="checkout", feature_flags=["new_checkout"])]
    )
    try:
        db = sqlite3.connect(path)
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON gate_catalog "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        db.close()
        with TestClient(AdminASGIApp(rollouts, operators=OPERATORS)) as client:
            refused = client.post("/rollouts", json=BILLING, headers=AUTH)
            assert refused.status_code == 409, refused.text
            assert "nothing changed" in refused.json()["error"]
            assert "disk full" in refused.json()["error"]
        assert rollouts.names == ("checkout",) and rollouts.created == {}
    finally:
        rollouts.close()


def test_a_rollout_created_on_a_store_is_served_by_every_set_on_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    declared = [PromotionConfig(name="checkout", feature_flags=["new_checkout"])]
    here = Rollouts.from_url(url, declared, refresh_seconds=0.05)
    there = Rollouts.from_url(url, declared, refresh_seconds=0.05)
    # A worker still on older code, one of whose own rollouts declares the flag.
    legacy = PromotionConfig(name="legacy", feature_flags=["new_billing"])
    older = Rollouts.from_url(url, [*declared, legacy], refresh_seconds=0.05)
    try:
        with TestClient(AdminASGIApp(here, operators=OPERATORS)) as client:
            response = client.post("/rollouts", json=BILLING, headers=AUTH)
            assert response.status_code == 201, response.text
            answer = response.json()
            jsonschema.validate(answer, answer_schema(client, "201"))
        assert answer["shared"] is True and "warning" not in answer
        assert answer["created"]["actor"] == "ada"

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            "billing" in there and there["billing"].get_history() and "billing" in older.refused
        ):
            time.sleep(0.02)
        assert there.names == ("checkout", "billing")
        assert there.created["billing"].actor == "ada"
        assert there.created["billing"].config == here["billing"].config
        first = there["billing"].get_history()[0]
        assert first.action == "create" and first.actor == "ada"
        assert_billing_served(there)
        with TestClient(AdminASGIApp(there, operators=OPERATORS)) as client:
            listed = client.get("/rollouts", headers=AUTH).json()
        assert [rollout["created"] for rollout in listed["rollouts"]] == [None, answer["created"]]

        # The older worker serves its own rollout and says why it does not serve the new one.
        assert older.names == ("checkout", "legacy")
        with TestClient(AdminASGIApp(older, operators=OPERATORS)) as client:
            listed = client.get("/rollouts", headers=AUTH).json()
        assert list(listed["refused"]) == ["billing"]
        assert "'new_billing' belongs to rollout 'legacy'" in listed["refused"]["billing"]
        with serving(AdminASGIApp(older, operators=OPERATORS)) as base:
            listing = run(base, "rollouts")
        assert listing.returncode == 0, listing.stderr
        assert "not served here: billing: feature_flags must be" in listing.stdout
    finally:
        for rollouts in (here, there, older):
            rollouts.close()


# -- the Alertmanager receiver under a set ----------------------------------------------


def notification(*rollouts: str, status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "receiver": "gate",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "ErrorsHigh", "gate_rollout": name},
                "annotations": {"summary": f"{name} fails"},
            }
            for name in rollouts
        ],
    }


def test_an_alert_rolls_back_the_rollout_its_label_names(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    before = states(rollouts)
    answer = client.post("/alertmanager", json=notification("search"), headers=AUTH).json()
    assert answer["rolled_back"] is True and "'search'" in answer["why"]
    assert rollouts["search"].environment == Environment.PRODUCTION
    assert rollouts["search"].get_history()[-1].reason.startswith("ErrorsHigh")
    assert {n: rollouts[n].state for n in ("checkout", "profile")} == {
        n: before[n] for n in ("checkout", "profile")
    }


def test_an_alert_naming_no_rollout_of_the_set_changes_nothing(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    before = states(rollouts)
    answer = client.post("/alertmanager", json=notification("billing"), headers=AUTH).json()
    assert answer["rolled_back"] is False and answer["event"] is None
    assert "checkout" in answer["why"]
    # ?rollout= picks one rollout, as the single gate's name did: another's alert is not its own.
    picked = client.post(
        "/alertmanager", params={"rollout": "checkout"}, json=notification("search"), headers=AUTH
    ).json()
    assert picked["rolled_back"] is False and "gate_rollout='checkout'" in picked["why"]
    assert states(rollouts) == before


def test_alerts_for_two_rollouts_roll_back_both(client: httpx.Client, rollouts: Rollouts) -> None:
    answer = client.post(
        "/alertmanager", json=notification("checkout", "profile"), headers=AUTH
    ).json()
    assert answer["rolled_back"] is True
    assert set(answer["rollouts"]) == {"checkout", "profile"}
    assert rollouts["checkout"].environment == Environment.PRODUCTION
    assert rollouts["profile"].environment == Environment.PRODUCTION
    assert rollouts["search"].environment != Environment.PRODUCTION


# -- the command line against a live server ---------------------------------------------


@pytest.fixture
def url(rollouts: Rollouts) -> Iterator[str]:
    with serving(AdminASGIApp(rollouts, operators=OPERATORS)) as base:
        yield base


def test_the_cli_lists_and_steers_each_rollout(url: str, rollouts: Rollouts) -> None:
    shown = run(url, "status")
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in NAMES)
    listed = run(url, "rollouts")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines()]
    assert [line[:3] for line in lines[1:]] == [[name, "canary", "1%"] for name in NAMES]

    before = states(rollouts)
    assert run(url, "--rollout", "search", "traffic", "25").returncode == 0
    assert rollouts["search"].environment == Environment.canary(25)
    assert run(url, "--rollout", "search", "plan", "pause").returncode == 0
    assert {n: rollouts[n].state for n in ("checkout", "profile")} == {
        n: before[n] for n in ("checkout", "profile")
    }
    one = json.loads(run(url, "--rollout", "search", "status", "--json").stdout)
    assert one["rollout"] == "search" and one["environment"]["traffic_percent"] == 25
    every = json.loads(run(url, "status", "--json").stdout)
    assert [r["name"] for r in every["rollouts"]] == list(NAMES)

    needed = run(url, "traffic", "30")
    assert needed.returncode == 2 and "rollout" in needed.stderr
    assert "checkout" in needed.stderr and "profile" in needed.stderr
    unknown = run(url, "--rollout", "billing", "status")
    assert unknown.returncode == 2 and "'billing'" in unknown.stderr


def test_the_cli_retires_and_reinstates(url: str, rollouts: Rollouts) -> None:
    retired = run(url, "retire", "profile")
    assert retired.returncode == 0, retired.stderr
    assert rollouts["profile"].retired and rollouts.names == ("checkout", "search", "profile")
    listing = run(url, "rollouts").stdout
    assert "retired: profile" in listing
    assert rollouts["checkout"].get_history()[-1].action != "retire"
    assert rollouts["profile"].get_history()[-1].actor.startswith("ada (client note: cli")
    refused = run(url, "reinstate", "profile", token=OPERATOR)
    assert refused.returncode == 1 and "admin role" in refused.stderr
    assert rollouts["profile"].retired
    assert run(url, "reinstate", "profile").returncode == 0
    assert not rollouts["profile"].retired


def test_the_cli_waits_for_one_rollout_of_a_set(clock: FakeClock) -> None:
    done = PromotionGate(PromotionConfig(name="done", environment=Environment.PRODUCTION))
    rollouts = Rollouts([rollout_gate("checkout", clock), done])
    with serving(AdminASGIApp(rollouts, operators=OPERATORS)) as base:
        waited = run(base, "--rollout", "done", "status", "--wait", "--timeout", "5s")
        assert waited.returncode == 0, waited.stderr
        assert "reached production" in waited.stdout
        unnamed = run(base, "status", "--wait", "--timeout", "5s")
        assert unnamed.returncode == 2 and "rollout" in unnamed.stderr


SCENARIOS = """
[scenarios.billing]
name = "billing"
promotion_environment = "canary"
promotion_traffic_percent = 50
feature_flags = ["new_billing"]
store = "sqlite:///var/lib/shop/gate.db"

[scenarios.billing.plan]
steps = [50, 100]
bake_seconds = 60

[scenarios.search]
name = "search"
feature_flags = ["new_search"]

[scenarios.reports]
name = "reports"
feature_flags = ["new_reports"]
"""


def test_the_cli_creates_a_rollout_from_a_scenario_file(
    url: str, rollouts: Rollouts, tmp_path: Path
) -> None:
    scenarios = tmp_path / "scenarios.toml"
    scenarios.write_text(SCENARIOS, encoding="utf-8")
    several = run(url, "create", str(scenarios))
    assert several.returncode == 2 and "['billing', 'reports', 'search']" in several.stderr
    refused = run(url, "create", str(scenarios), "--scenario", "billing", token=OPERATOR)
    assert refused.returncode == 1 and "admin role" in refused.stderr
    assert rollouts.names == NAMES

    made = run(url, "create", str(scenarios), "--scenario", "billing")
    assert made.returncode == 0, made.stderr
    assert "rollout billing created: canary (50%)" in made.stdout
    assert "scenarios.billing.store is not sent" in made.stderr
    assert "warning:" in made.stderr and "this process only" in made.stderr
    assert rollouts.names == (*NAMES, "billing")
    # The rollout's config is the file's scenario, as from_toml reads it.
    assert rollouts["billing"].config == PromotionConfig.from_toml(scenarios, "billing", store=None)
    assert rollouts["billing"].get_history()[0].actor.startswith("ada (client note: cli")
    listing = run(url, "rollouts").stdout.splitlines()
    assert [line.split()[:4] for line in listing if line.startswith("billing")] == [
        ["billing", "canary", "50%", "INSUFFICIENT_DATA"]
    ]
    assert "ada (client note: cli" in listing[-1]

    taken = run(url, "create", str(scenarios), "--scenario", "search")
    assert taken.returncode == 2 and "error 400" in taken.stderr
    assert "name must be a rollout name not yet in the set" in taken.stderr
    absent = run(url, "create", str(scenarios), "--scenario", "profile")
    assert absent.returncode == 2 and "'profile'" in absent.stderr
    assert rollouts.names == (*NAMES, "billing")
    as_json = run(url, "create", str(scenarios), "--scenario", "reports", "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["rollout"] == "reports" and answer["shared"] is False
    assert rollouts.names == (*NAMES, "billing", "reports")
