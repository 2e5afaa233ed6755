"""The admin API, the CLI and the Alertmanager receiver over a ``Rollouts``
set: each rollout listed and steered by name (``?rollout=NAME``), mounted
in each framework, while steering one leaves the others as they were."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.gate import Rollouts
from gate_middleware.operate.admin import ROUTES, AdminASGIApp, AdminWSGIApp
from gate_middleware.operate.operators import token_sha256
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
    return Rollouts([rollout_gate(name, clock) for name in NAMES])


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
                {"name": "checkout", "status": client.get("/status", headers=AUTH).json()}
            ],
            "retired": [],
        }
        before = gate.state
        for action in ("retire", "reinstate"):
            refused = client.post(f"/rollouts/checkout/{action}", headers=AUTH)
            assert refused.status_code == 409, refused.text
            assert "Rollouts set" in refused.json()["error"]
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
        for action in ("retire", "reinstate"):
            refused = client.post(
                f"/rollouts/search/{action}", headers={"Authorization": f"Bearer {token}"}
            )
            assert refused.status_code == 403 and refused.json()["role_needed"] == "admin"
    assert rollouts.names == NAMES and states(rollouts) == before


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
