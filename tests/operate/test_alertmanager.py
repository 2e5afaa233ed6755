"""POST /alertmanager: Prometheus Alertmanager's webhook stops a release.

The same assertions over the ASGI and WSGI admin apps, with the body a real
Alertmanager (0.25, Debian's) sent for an alert routed by
examples/prometheus/alertmanager.yml; tests/system/test_alertmanager.py
runs that Alertmanager itself.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.naming import MAX_REASON_LENGTH, validate_reason
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.operate.admin import AdminASGIApp, AdminWSGIApp, openapi_document
from gate_middleware.operate.alertmanager import NOTIFICATION, check_notification
from gate_middleware.operate.operators import Operator
from tests.support import FakeClock

TOKENS = {
    "alertmanager": "alertmanager-token-0123456789",
    "vera": "viewer-token-0123456789abcdef",
}
OPERATORS = [
    Operator("alertmanager", "operator", token=TOKENS["alertmanager"]),
    Operator("vera", "viewer", token=TOKENS["vera"]),
]
AUTH = {"Authorization": f"Bearer {TOKENS['alertmanager']}"}

#: What Alertmanager 0.25 posted (its User-Agent: Alertmanager/0.25.0) for one
#: alert of examples/prometheus/gate-middleware-rollback-alerts.yml, routed by
#: examples/prometheus/alertmanager.yml: webhook format version 4, as
#: Alertmanager's configuration documentation describes it.
NOTIFIED: dict[str, Any] = {
    "receiver": "gate-rollback",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "CanaryErrorRateHigh",
                "gate_action": "rollback",
                "gate_rollout": "shop",
                "severity": "page",
            },
            "annotations": {"summary": "8% of the canary's requests fail"},
            "startsAt": "2026-12-07T06:32:57.890741084Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=x",
            "fingerprint": "fe57c3409c5be7b5",
        }
    ],
    "groupLabels": {"gate_rollout": "shop"},
    "commonLabels": {
        "alertname": "CanaryErrorRateHigh",
        "gate_action": "rollback",
        "gate_rollout": "shop",
        "severity": "page",
    },
    "commonAnnotations": {"summary": "8% of the canary's requests fail"},
    "externalURL": "http://alertmanager.example:9093",
    "version": "4",
    "groupKey": '{}/{gate_action="rollback",gate_rollout=~".+"}:{gate_rollout="shop"}',
    "truncatedAlerts": 0,
}
REASON = "CanaryErrorRateHigh: 8% of the canary's requests fail"
ACTOR = "alertmanager (client note: alertmanager:gate-rollback)"


def notification(**changes: Any) -> dict[str, Any]:
    """NOTIFIED with top-level fields changed; ``alert={...}`` changes the alert's."""
    body = copy.deepcopy(NOTIFIED)
    body["alerts"][0].update(changes.pop("alert", {}))
    body.update(changes)
    return body


def resolved() -> dict[str, Any]:
    return notification(
        status="resolved", alert={"status": "resolved", "endsAt": "2026-12-07T06:40:12.5Z"}
    )


def shop_gate() -> PromotionGate:
    return PromotionGate(
        PromotionConfig(name="shop", environment=Environment.canary(10), min_requests=20),
        clock=FakeClock(),
    )


@pytest.fixture
def gate() -> PromotionGate:
    return shop_gate()


@pytest.fixture(params=["asgi", "wsgi"])
def client(request: pytest.FixtureRequest, gate: PromotionGate) -> Iterator[httpx.Client]:
    if request.param == "asgi":
        with TestClient(AdminASGIApp(gate, operators=OPERATORS)) as test_client:
            yield test_client
    else:
        transport = httpx.WSGITransport(app=AdminWSGIApp(gate, operators=OPERATORS))
        with httpx.Client(transport=transport, base_url="http://testserver") as wsgi_client:
            yield wsgi_client


def rollbacks(gate: PromotionGate) -> list[Any]:
    return gate.get_rollback_history()


# -- what it does --------------------------------------------------------------------


def test_a_firing_alert_for_the_rollout_rolls_the_release_back(
    client: httpx.Client, gate: PromotionGate
) -> None:
    response = client.post("/alertmanager", json=NOTIFIED, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["rolled_back"] is True
    assert answer["event"]["reason"] == REASON
    assert answer["event"]["environment"] == {"name": "canary", "traffic_percent": 10.0}
    assert gate.environment == Environment.PRODUCTION
    [event] = rollbacks(gate)
    assert event.reason == REASON
    assert event.actor == ACTOR  # the token's operator; the receiver as its note
    assert event.automatic is False


def test_a_repeated_notification_after_the_rollback_does_nothing(
    client: httpx.Client, gate: PromotionGate
) -> None:
    assert client.post("/alertmanager", json=NOTIFIED, headers=AUTH).json()["rolled_back"]
    for _ in range(2):  # repeat_interval: the same notification again
        response = client.post("/alertmanager", json=NOTIFIED, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "rolled_back": False,
            "why": "no release in progress (the gate is in production)",
            "event": None,
        }
    assert len(rollbacks(gate)) == 1


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (resolved(), "the alerts for rollout 'shop' are resolved"),
        (
            notification(alert={"labels": {"alertname": "X", "gate_rollout": "search"}}),
            "no alert has the label gate_rollout='shop'",
        ),
        (
            notification(alert={"labels": {"alertname": "HighLoad", "rollout": "shop"}}),
            "no alert has the label gate_rollout='shop'",
        ),
        (notification(alerts=[]), "no alert has the label gate_rollout='shop'"),
    ],
    ids=["resolved", "another-rollout", "no-rollout-label", "no-alerts"],
)
def test_a_notification_that_does_not_apply_answers_200_and_changes_nothing(
    client: httpx.Client, gate: PromotionGate, body: dict[str, Any], why: str
) -> None:
    before = gate.state
    response = client.post("/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 200, response.text  # Alertmanager retries anything else
    assert response.json() == {"rolled_back": False, "why": why, "event": None}
    assert gate.state == before


def test_no_release_in_progress_answers_200_and_changes_nothing(
    client: httpx.Client, gate: PromotionGate
) -> None:
    gate.promote(Environment.PRODUCTION, force=True)
    before = gate.state
    response = client.post("/alertmanager", json=NOTIFIED, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["rolled_back"] is False
    assert "no release in progress" in response.json()["why"]
    assert gate.state == before


def test_a_release_in_staging_is_rolled_back_too(client: httpx.Client, gate: PromotionGate) -> None:
    gate.promote(Environment.STAGING, force=True)
    assert client.post("/alertmanager", json=NOTIFIED, headers=AUTH).json()["rolled_back"]
    assert gate.environment == Environment.PRODUCTION
    assert rollbacks(gate)[-1].environment == Environment.STAGING


def test_a_resolved_alert_beside_a_firing_one_still_rolls_back(
    client: httpx.Client, gate: PromotionGate
) -> None:
    body = notification()
    firing = copy.deepcopy(body["alerts"][0])
    firing["labels"]["alertname"] = "CanaryVerdictRollback"
    firing["annotations"] = {}
    body["alerts"] = [resolved()["alerts"][0], firing, copy.deepcopy(firing)]
    body["alerts"][2]["labels"]["alertname"] = "CanaryLatencyHigh"
    response = client.post("/alertmanager", json=body, headers=AUTH)
    assert response.json()["rolled_back"] is True
    assert rollbacks(gate)[-1].reason == "CanaryVerdictRollback (also firing: CanaryLatencyHigh)"


def test_the_rollout_label_can_be_named_in_the_url(
    client: httpx.Client, gate: PromotionGate
) -> None:
    body = notification(alert={"labels": {"alertname": "CheckoutSlow", "rollout": "shop"}})
    assert client.post("/alertmanager", json=body, headers=AUTH).json()["rolled_back"] is False
    response = client.post("/alertmanager?label=rollout", json=body, headers=AUTH)
    assert response.json()["rolled_back"] is True
    assert rollbacks(gate)[-1].reason == "CheckoutSlow: 8% of the canary's requests fail"


def test_the_rollback_ends_the_plan_as_an_operators_abort(clock: FakeClock) -> None:
    config = PromotionConfig(name="shop", min_requests=20, plan=RolloutPlan())
    gate = PromotionGate(config, clock=clock, wall_clock=clock, plan_timer=False)
    gate.start_canary()
    with TestClient(AdminASGIApp(gate, operators=OPERATORS)) as client:
        assert client.post("/alertmanager", json=NOTIFIED, headers=AUTH).json()["rolled_back"]
    position = gate.state.plan
    assert position is not None
    assert position.status == "aborted" and position.reason == REASON  # retryPlan starts it again


@pytest.mark.parametrize(
    ("alertname", "summary", "expected"),
    [
        ("CanaryErrorRateHigh", None, "CanaryErrorRateHigh"),
        ("", "all bad", "an Alertmanager alert: all bad"),
        (None, None, "an Alertmanager alert"),
        ("Two\nlines\x1b[31m", "a\u202eb\u200bc\td", "Two lines [31m: a b c d"),
        ("A", "x" * 5000, "A: " + "x" * 199 + "…"),
        ("N" * 3000, "s", "N" * 199 + "…: s"),
    ],
)
def test_the_reason_is_one_printable_line_of_the_name_and_summary(
    client: httpx.Client,
    gate: PromotionGate,
    alertname: str | None,
    summary: str | None,
    expected: str,
) -> None:
    labels = {"gate_rollout": "shop"} | ({} if alertname is None else {"alertname": alertname})
    annotations = {} if summary is None else {"summary": summary}
    body = notification(alert={"labels": labels, "annotations": annotations})
    response = client.post("/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    reason = rollbacks(gate)[-1].reason
    assert reason == expected
    assert validate_reason(reason) and len(reason) <= MAX_REASON_LENGTH


def test_more_fields_in_an_alert_are_accepted(client: httpx.Client, gate: PromotionGate) -> None:
    # A later Alertmanager (or Grafana's) may add fields to an alert: they are ignored.
    body = notification(alert={"silenceURL": "http://am/silence", "values": {"B": 0.08}})
    assert client.post("/alertmanager", json=body, headers=AUTH).json()["rolled_back"] is True


# -- who may, and what is refused -------------------------------------------------


def test_it_needs_the_operator_role(client: httpx.Client, gate: PromotionGate) -> None:
    before = gate.state
    viewer = {"Authorization": f"Bearer {TOKENS['vera']}"}
    response = client.post("/alertmanager", json=NOTIFIED, headers=viewer)
    assert response.status_code == 403
    assert response.json()["role_needed"] == "operator"
    assert client.post("/alertmanager", json=NOTIFIED).status_code == 401
    wrong = {"Authorization": "Bearer someone-elses-token-0123456789"}
    assert client.post("/alertmanager", json=NOTIFIED, headers=wrong).status_code == 401
    assert gate.state == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "version"),
        (notification(version="3"), "version"),
        (notification(version=4), "version"),
        (notification(status="pending"), "status"),
        (notification(alerts={"status": "firing"}), "alerts"),
        (notification(alerts=["firing"]), "alerts[0]"),
        (notification(alert={"status": "pending"}), "alerts[0].status"),
        (notification(alert={"labels": ["gate_rollout"]}), "alerts[0].labels"),
        (notification(alert={"labels": {"gate_rollout": 7}}), "alerts[0].labels.gate_rollout"),
        (notification(alert={"annotations": {"summary": None}}), "alerts[0].annotations.summary"),
        (notification(alert={"fingerprint": 12}), "alerts[0].fingerprint"),
        (notification(truncatedAlerts=-1), "truncatedAlerts"),
        (notification(truncatedAlerts=True), "truncatedAlerts"),
        (notification(commonLabels={"a": {"b": "c"}}), "commonLabels.a"),
        (notification(groupKey=None), "groupKey"),
        (notification(orgId=1), "orgId"),  # Grafana's webhook, not Alertmanager's
        ({"reason": "x"}, "reason"),  # the body of /rollback
    ],
)
def test_a_malformed_notification_is_refused_naming_the_field(
    client: httpx.Client, gate: PromotionGate, body: dict[str, Any], field: str
) -> None:
    before = gate.state
    response = client.post("/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert gate.state == before


@pytest.mark.parametrize("missing", ["status", "labels"])
def test_an_alert_without_its_status_or_labels_is_refused(
    client: httpx.Client, gate: PromotionGate, missing: str
) -> None:
    body = notification()
    del body["alerts"][0][missing]
    response = client.post("/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["field"] == f"alerts[0].{missing}"
    assert response.json()["error"].endswith("got nothing")


def test_a_bad_label_name_in_the_url_is_refused(client: httpx.Client) -> None:
    for query in ("label=1abc", "label=a-b", "label=", "other=x"):
        response = client.post(f"/alertmanager?{query}", json=NOTIFIED, headers=AUTH)
        assert response.status_code == 400, query
        assert response.json()["field"] in ("label", "other")


def test_the_notification_goes_to_its_own_route_not_to_rollback(client: httpx.Client) -> None:
    # Before this route, Alertmanager's webhook was refused at /rollback.
    response = client.post("/rollback", json=NOTIFIED, headers=AUTH)
    assert response.status_code == 400 and response.json()["field"] == "alerts"


# -- the schema and the check agree ------------------------------------------------


def test_the_openapi_document_declares_the_notification() -> None:
    operation = openapi_document()["paths"]["/alertmanager"]["post"]
    assert operation["operationId"] == "alertmanagerRollback"
    assert operation["x-gate-role"] == "operator"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == set(NOTIFIED)  # every key Alertmanager sends
    assert set(schema["properties"]["alerts"]["items"]["properties"]) == set(NOTIFIED["alerts"][0])
    assert [p["name"] for p in operation["parameters"]] == ["label", "rollout"]


def test_the_check_agrees_with_the_schema_on_every_case_above() -> None:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(NOTIFICATION)
    bodies = [NOTIFIED, resolved(), notification(alerts=[]), notification(alert={"x": 1})]
    bodies += [notification(version="3"), notification(truncatedAlerts=-1), {}]
    bodies += [notification(alert={"labels": {"a": 1}}), notification(orgId=1)]
    bodies += [json.loads(json.dumps(notification(truncatedAlerts=2.0)))]
    for body in bodies:
        valid = validator.is_valid(body)
        try:
            check_notification(body)
        except ValueError:
            assert not valid, body
        else:
            assert valid, body
