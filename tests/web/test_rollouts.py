"""Several rollouts in one app (``Rollouts``), through every framework adapter.

One cookie serves every rollout; each rollout hashes it with its own name,
so a session's assignments are independent across rollouts and each stays
sticky. The request's decision answers for every rollout's flags, each
outcome is recorded in every rollout with that rollout's own decision, and
steering one rollout leaves the others alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import (
    ConfigError,
    Environment,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    Rollouts,
    compute_bucket,
)
from gate_middleware.web.session import SessionCookie
from tests.apps import FLAG, FRAMEWORKS, client_for
from tests.support import metric_points

SECRET = "several-rollouts-secret-0123456789"
#: rollout name -> its one flag; every rollout at 50 %.
FLAGS = {"checkout": FLAG, "search": "new_search", "profile": "new_profile"}
SESSIONS = 120


def rollout(name: str, meter_provider: MeterProvider | None = None) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(
            name=name,
            environment=Environment.canary(50),
            feature_flags=[FLAGS[name]],
            min_requests=10_000,  # no verdict acts during these tests
        ),
        meter_provider=meter_provider,
    )


@pytest.fixture
def rollouts(meter_provider: MeterProvider) -> Rollouts:
    return Rollouts([rollout(name, meter_provider) for name in FLAGS])


@pytest.fixture(params=FRAMEWORKS)
def client(
    request: pytest.FixtureRequest, rollouts: Rollouts, meter_provider: MeterProvider
) -> Iterator[httpx.Client]:
    http, cleanup = client_for(
        str(request.param), rollouts, secret=SECRET, meter_provider=meter_provider
    )
    try:
        yield http
    finally:
        http.close()
        if cleanup:
            cleanup()


def on_canary(name: str, session_id: str) -> bool:
    return compute_bucket(name, session_id) < 50_000


def new_session(client: httpx.Client) -> tuple[str, list[str]]:
    """(session id, the flags answered) for a request with no cookie."""
    client.cookies.clear()
    response = client.get("/")
    assert response.status_code == 200
    value = response.cookies["gate_session"]
    session_id = SessionCookie(secret=SECRET).read(f"gate_session={value}")
    assert session_id is not None
    return session_id, response.json()["flags"]


def test_each_rollout_answers_for_its_own_bucket_and_the_assignments_are_independent(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    cells: Counter[tuple[bool, bool]] = Counter()
    canary_sessions = Counter[str]()
    for _ in range(SESSIONS):
        session_id, flags = new_session(client)
        expected = {name: on_canary(name, session_id) for name in FLAGS}
        # every rollout's flag, by that rollout's own salt: one cookie serves all
        assert {FLAGS[name] for name, on in expected.items() if on} == set(flags)
        cells[expected["checkout"], expected["search"]] += 1
        canary_sessions.update(name for name, on in expected.items() if on)
    # One salt for all would put every session in the same cells (two empty ones);
    # independent salts fill each of the four about equally (30 expected of 120).
    assert all(cells[cell] >= 10 for cell in [(a, b) for a in (0, 1) for b in (0, 1)]), cells
    # each outcome was recorded in every rollout, with that rollout's own decision
    for gate in rollouts:
        health = gate.health_snapshot()
        assert health.canary_requests == canary_sessions[gate.name]
        assert health.production_requests == SESSIONS - canary_sessions[gate.name]


def test_a_session_keeps_every_rollouts_answer(client: httpx.Client) -> None:
    client.cookies.clear()
    first = client.get("/").json()["flags"]
    assert all(client.get("/").json()["flags"] == first for _ in range(10))


def test_rolling_back_one_rollout_leaves_the_others_alone(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    before = {name: rollouts[name].state for name in ("search", "profile")}
    rollouts["checkout"].rollback("a checkout regression", actor="ada")
    for _ in range(40):
        session_id, flags = new_session(client)
        assert FLAG not in flags
        assert ("new_search" in flags) == on_canary("search", session_id)
        assert ("new_profile" in flags) == on_canary("profile", session_id)
    for name, state in before.items():
        assert rollouts[name].state == state  # not a version moved


def test_each_rollouts_request_metrics_carry_its_own_decision(
    client: httpx.Client, metric_reader: InMemoryMetricReader
) -> None:
    canary = Counter[str]()
    combined_canary = 0
    for _ in range(30):
        session_id, _ = new_session(client)
        canary.update(name for name in FLAGS if on_canary(name, session_id))
        combined_canary += any(on_canary(name, session_id) for name in FLAGS)
    counted: Counter[tuple[str, str]] = Counter()
    for point in metric_points(metric_reader)["gate_middleware.requests"]:
        attributes = point.attributes  # type: ignore[attr-defined]
        if attributes.get("http.response.status_code") == 200:
            counted[attributes["gate.rollout"], attributes["gate.variant"]] += point.value  # type: ignore[attr-defined]
    for name in FLAGS:
        assert counted[name, "canary"] == canary[name]
        assert counted[name, "stable"] == 30 - canary[name]
    # The duration histogram: one point per request, under the set's name,
    # with the request's combined variant (canary when any rollout's canary).
    timed: Counter[tuple[str, str]] = Counter()
    for point in metric_points(metric_reader)["gate_middleware.request.duration"]:
        attributes = point.attributes  # type: ignore[attr-defined]
        if attributes.get("http.response.status_code") == 200:
            timed[attributes["gate.rollout"], attributes["gate.variant"]] += point.count  # type: ignore[attr-defined]
    assert set(timed) <= {("rollouts", "canary"), ("rollouts", "stable")}, timed
    assert sum(timed.values()) == 30
    assert timed["rollouts", "canary"] == combined_canary


def test_a_rollout_retired_while_serving_is_off_and_uncounted_until_reinstated(
    client: httpx.Client, rollouts: Rollouts, metric_reader: InMemoryMetricReader
) -> None:
    search = rollouts["search"]
    event = rollouts.retire("search", "the search team is done", actor="ada")
    assert (event.action, event.actor) == ("retire", "ada")
    served_before = search.health_snapshot()
    for _ in range(20):
        session_id, flags = new_session(client)
        assert "new_search" not in flags
        assert (FLAG in flags) == on_canary("checkout", session_id)  # the others still served
    after = search.health_snapshot()
    assert (after.canary_requests, after.production_requests) == (0, 0)  # a new step, not fed
    assert served_before.canary_requests + served_before.production_requests == 0
    assert not search.is_feature_enabled("new_search")
    assert "search" in rollouts and search.status().retired
    with pytest.raises(PromotionError, match="retired already"):
        rollouts.retire("search")
    rollouts.reinstate("search", actor="ada")
    seen = [new_session(client) for _ in range(20)]
    assert all(("new_search" in flags) == on_canary("search", sid) for sid, flags in seen)
    health = search.health_snapshot()
    assert health.canary_requests + health.production_requests == 20
    assert [e.action for e in search.get_history()[-2:]] == ["retire", "reinstate"]


def test_a_rollout_removed_from_the_set_and_added_again(
    client: httpx.Client, rollouts: Rollouts
) -> None:
    search = rollouts.remove("search")
    assert rollouts.names == ("checkout", "profile")
    for _ in range(10):
        _, flags = new_session(client)
        assert "new_search" not in flags
    assert (
        search.health_snapshot().production_requests + search.health_snapshot().canary_requests == 0
    )
    rollouts.add(search)
    seen = [new_session(client) for _ in range(20)]
    assert all(("new_search" in flags) == on_canary("search", sid) for sid, flags in seen)
    assert (
        search.health_snapshot().canary_requests + search.health_snapshot().production_requests
        == 20
    )


# -- the set itself -------------------------------------------------------------


def test_a_flag_claimed_by_two_rollouts_is_refused_naming_both() -> None:
    rollouts = Rollouts([rollout("checkout"), rollout("search")])
    thief = PromotionGate(PromotionConfig(name="billing", feature_flags=["bill", FLAGS["search"]]))
    with pytest.raises(
        ConfigError, match="'new_search' belongs to rollout 'search', and rollout 'billing'"
    ):
        rollouts.add(thief)
    assert rollouts.names == ("checkout", "search")  # nothing changed
    with pytest.raises(ConfigError, match="'search'"):
        Rollouts([rollout("search"), rollout("search")])
    with pytest.raises(ConfigError, match="rollout must be one of the set's rollouts"):
        rollouts.remove("billing")
    with pytest.raises(ConfigError, match="rollout must be one of the set's rollouts"):
        rollouts.retire("billing")


def test_a_decision_names_each_rollouts_own_answer() -> None:
    rollouts = Rollouts([rollout(name) for name in FLAGS])
    decision = rollouts.route_request("session-42")
    assert set(decision.rollouts) == set(FLAGS)
    for name, flag in FLAGS.items():
        own = decision.for_rollout(name)
        assert own.rollout == name
        assert own.bucket == compute_bucket(name, "session-42")
        assert decision.is_enabled(flag) == own.is_enabled(flag) == on_canary(name, "session-42")
    assert decision.is_canary == any(on_canary(name, "session-42") for name in FLAGS)
    with pytest.raises(KeyError, match="'billing' did not decide"):
        decision.for_rollout("billing")
    assert set(decision.to_dict()["rollouts"]) == set(FLAGS)  # type: ignore[arg-type]
    # one gate: its decision names its own rollout
    single = rollout("checkout").route_request("session-42")
    assert single.for_rollout("checkout") is single and single.parts == ()


def test_track_counts_in_each_rollout_that_defines_the_metric() -> None:
    from gate_middleware.domain.metrics import MetricDefinition

    checkout = PromotionGate(
        PromotionConfig(
            name="checkout",
            environment=Environment.canary(50),
            feature_flags=[FLAG],
            metrics=[MetricDefinition("checkout_completed")],
        )
    )
    search = rollout("search")
    rollouts = Rollouts([checkout, search])
    for index in range(50):
        decision = rollouts.route_request(f"session-{index}")
        rollouts.record_decision(decision, True, 0.01, None)
        decision.track("checkout_completed")
    [figures] = checkout.status().to_dict()["metrics"]
    assert figures["canary"]["sessions"] + figures["production"]["sessions"] == 50
    assert figures["canary"]["mean"] == figures["production"]["mean"] == 1.0
    # the other rollout defines no such metric: it is not told of it (no warning)
    assert search._tracker.undefined_counts() == {}
    # a metric no rollout defines reaches them all, and each counts it as undefined
    rollouts.route_request("session-1").track("no_such_metric")
    assert search._tracker.undefined_counts() == {"no_such_metric": 1}
    checkout.close()


def test_the_span_names_every_rollout_and_those_that_put_it_on_a_canary_path() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gate_middleware import RequestLifecycle

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lifecycle = RequestLifecycle(Rollouts([rollout(name) for name in FLAGS]), secret=SECRET)
    with provider.get_tracer("test").start_as_current_span("request"):
        request = lifecycle.begin(method="GET", cookie_header=None, https=False, request=None)
    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert list(attributes["gate.rollouts"]) == list(FLAGS)  # type: ignore[arg-type]
    canary = [name for name in FLAGS if request.decision.for_rollout(name).is_canary]
    assert list(attributes["gate.canary_rollouts"]) == canary  # type: ignore[arg-type]
    assert attributes["gate.variant"] == ("canary" if canary else "stable")
    provider.shutdown()


# -- what a set refuses, and what it keeps straight ------------------------------------


def test_a_reinstated_rollout_with_a_plan_starts_its_step_afresh() -> None:
    """The plan's clocks ran while the rollout was retired: reinstated, its step
    bakes again on new evidence instead of giving up at its first evaluation."""
    from gate_middleware import ManualClock
    from gate_middleware.domain.plan import RolloutPlan

    clock = ManualClock()
    plan = RolloutPlan(
        steps=(5, 25, 50), bake_seconds=3600, inconclusive_limit_seconds=6 * 3600,
        on_deadline="rollback",
    )  # fmt: skip
    gate = PromotionGate(
        PromotionConfig(name="checkout", plan=plan, min_requests=100), clock=clock, plan_timer=False
    )
    gate.start_canary(feature_flags=["new_checkout"])
    rollouts = Rollouts([gate])
    rollouts.retire("checkout", "holiday freeze", actor="ada")
    clock.advance(3 * 24 * 3600)
    rollouts.reinstate("checkout", actor="ada")
    assert gate.state.plan is not None and gate.state.plan.entered_at == clock.time()
    for _ in range(2):
        clock.advance(61)
        gate.tick()
    assert gate.environment == Environment.canary(5)  # neither rolled back nor paused
    assert gate.state.plan.status == "running"
    assert [event.action for event in gate.get_history()][-2:] == ["retire", "reinstate"]


def test_no_rollout_of_a_set_turns_on_another_rollouts_flag() -> None:
    checkout, search = rollout("checkout"), rollout("search")
    rollouts = Rollouts([checkout, search])
    with pytest.raises(ConfigError, match="'new_checkout_flow' belongs to rollout 'checkout'"):
        search.enable_feature(FLAG)
    search.rollback("so that a release may start")
    with pytest.raises(ConfigError, match="belongs to rollout 'checkout'"):
        search.start_canary(10, [FLAG])
    assert not any(search.route_request(f"s{i}").is_enabled(FLAG) for i in range(50))
    assert search.enable_feature("search_extra") is not None  # a flag no one else declares
    # a gate that has another rollout's flag on may not join the set
    stray = PromotionGate(PromotionConfig(name="stray", environment=Environment.canary(50)))
    stray.enable_feature("search_extra")
    with pytest.raises(ConfigError, match="'search_extra' belongs to rollout 'search'"):
        rollouts.add(stray)
    rollouts.remove("checkout")
    assert search.enable_feature(FLAG) is not None  # out of the set, nobody's flag


def test_two_rollouts_of_a_set_may_not_share_a_salt() -> None:
    shared = PromotionGate(
        PromotionConfig(
            name="billing", salt="checkout", environment=Environment.canary(50), feature_flags=["b"]
        )
    )
    with pytest.raises(ConfigError, match="rollout 'checkout' routes by 'checkout' too"):
        Rollouts([rollout("checkout"), shared])


def test_record_request_outcome_takes_its_own_part_of_a_requests_decision() -> None:
    checkout, search = rollout("checkout"), rollout("search")
    rollouts = Rollouts([checkout, search])
    canary = 0
    for index in range(200):
        decision = rollouts.route_request(f"session-{index}")
        checkout.record_request_outcome(f"session-{index}", True, 0.01, decision=decision)
        canary += decision.for_rollout("checkout").is_canary
    health = checkout.health_snapshot()
    assert (health.canary_requests, health.production_requests) == (canary, 200 - canary)
    other = search.route_request("session-1")
    with pytest.raises(ConfigError, match="rollout 'search'"):
        checkout.record_request_outcome("session-1", True, 0.01, decision=other)


def test_the_sets_callbacks_hear_its_members_once_and_not_a_removed_one() -> None:
    checkout, search = rollout("checkout"), rollout("search")
    rollouts = Rollouts([checkout, search])
    heard: list[str] = []
    rollouts.on_state_change(lambda gate, previous, state: heard.append(gate.name))
    search.set_traffic_percent(60)
    rollouts.remove("search")
    search.set_traffic_percent(70)  # out of the set: not heard
    rollouts.add(search)
    search.set_traffic_percent(80)  # added again: heard once
    checkout.set_traffic_percent(20)
    assert heard == ["search", "search", "checkout"]


def test_the_qa_override_under_a_set_keeps_each_rollouts_bucket() -> None:
    from gate_middleware import RequestLifecycle

    token = "qa-token-" + "x" * 24
    rollouts = Rollouts([rollout(name) for name in FLAGS])
    lifecycle = RequestLifecycle(rollouts, secret=SECRET, override_token=token)
    first = lifecycle.begin(method="GET", cookie_header=None, https=False, request=None)
    cookie = f"gate_session={first.cookie_value}"
    request = lifecycle.begin(
        method="GET", cookie_header=cookie, https=False, request=None,
        override_variant="canary", override_token=token,
    )  # fmt: skip
    decision = request.decision
    assert all(decision.is_enabled(flag) for flag in FLAGS.values())  # every rollout's canary
    assert request.session_id  # the cookie's session, read
    for name in FLAGS:
        assert decision.for_rollout(name).bucket == compute_bucket(name, request.session_id)
        assert decision.for_rollout(name).is_canary
