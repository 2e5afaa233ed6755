"""Named operators with roles, and the audit trail they leave.

The role table is written out here, from the roles' definitions
(``viewer`` reads; ``operator`` also pauses, resumes, aborts, rolls back and
turns flags off; ``admin`` also promotes, skips, starts releases, sets the
traffic, turns flags on and retries), and every endpoint is tried with every
role, over ASGI and WSGI and on a real server.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from werkzeug.serving import make_server

from gate_middleware import ConfigError, PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.gate import Rollouts
from gate_middleware.operate.admin import ROUTES, AdminASGIApp, AdminWSGIApp, route_named
from gate_middleware.operate.operators import Operator, OperatorFile, token_sha256
from tests.servers import serving
from tests.support import CLI, FakeClock

TOKENS = {
    "vera": "viewer-token-0123456789abcdef",
    "otto": "operator-token-0123456789abcdef",
    "ada": "admin-token-0123456789abcdef",
}
ROLE_OF = {"vera": "viewer", "otto": "operator", "ada": "admin"}
OPERATORS = [
    {"name": "vera", "role": "viewer", "token_sha256": token_sha256(TOKENS["vera"])},
    Operator("otto", "operator", token_sha256=token_sha256(TOKENS["otto"])),
    {"name": "ada", "role": "admin", "token": TOKENS["ada"]},
]

#: The least role each endpoint needs: the issue's table, written out.
ROLE_TABLE = {
    "getStatus": "viewer",
    "getHistory": "viewer",
    "getOpenAPI": "viewer",
    "getPlan": "viewer",
    "getRollouts": "viewer",
    "pausePlan": "operator",
    "resumePlan": "operator",
    "abortPlan": "operator",
    "rollback": "operator",
    "alertmanagerRollback": "operator",
    "disableFlag": "operator",
    "promote": "admin",
    "skipPlan": "admin",
    "startCanary": "admin",
    "setTraffic": "admin",
    "enableFlag": "admin",
    "retryPlan": "admin",
    "retireRollout": "admin",
    "reinstateRollout": "admin",
    "createRollout": "admin",
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}
#: A request for each endpoint that the gate would carry out for an admin.
REQUESTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "getStatus": ("GET", "/status", None),
    "getHistory": ("GET", "/history", None),
    "getOpenAPI": ("GET", "/openapi.json", None),
    "getPlan": ("GET", "/plan", None),
    "pausePlan": ("POST", "/plan/pause", {"reason": "freeze"}),
    "resumePlan": ("POST", "/plan/resume", None),
    "abortPlan": ("POST", "/plan/abort", {"reason": "stop"}),
    "rollback": ("POST", "/rollback", {"reason": "bad"}),
    "alertmanagerRollback": (
        "POST",
        "/alertmanager",
        {
            "version": "4",
            "status": "firing",
            "alerts": [{"status": "firing", "labels": {"gate_rollout": "default"}}],
        },
    ),
    "disableFlag": ("POST", "/flags/new_api/disable", None),
    "promote": ("POST", "/promote", {"force": True}),
    "skipPlan": ("POST", "/plan/skip", {"force": True}),
    "startCanary": ("POST", "/canary", {"percent": 5, "flags": ["new_api"]}),
    "setTraffic": ("POST", "/traffic", {"percent": 7}),
    "enableFlag": ("POST", "/flags/dark_mode/enable", None),
    "retryPlan": ("POST", "/plan/retry", None),
    "getRollouts": ("GET", "/rollouts", None),
    "retireRollout": ("POST", "/rollouts/default/retire", None),
    "reinstateRollout": ("POST", "/rollouts/default/reinstate", None),
    "createRollout": ("POST", "/rollouts", {"name": "billing", "feature_flags": ["new_billing"]}),
}
#: Routes of a ``Rollouts`` set: tried on a set that holds the fresh gate.
SET_ROUTES = {"retireRollout", "reinstateRollout", "createRollout"}


def auth(name: str, note: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKENS[name]}"}
    if note is not None:
        headers["X-Gate-Actor"] = note
    return headers


def planned_gate(clock: FakeClock) -> PromotionGate:
    gate = PromotionGate(
        PromotionConfig(min_requests=20, plan=RolloutPlan()),
        clock=clock,
        wall_clock=clock,
        plan_timer=False,
    )
    gate.start_canary(feature_flags=["new_api"])
    return gate


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_client(kind: str) -> Iterator[Any]:
    """A function that opens a client on an admin app of ``kind`` for a gate."""
    opened: list[Any] = []

    def open_one(gate: PromotionGate | Rollouts, **options: Any) -> httpx.Client:
        options.setdefault("operators", OPERATORS)
        if kind == "asgi":
            client: httpx.Client = TestClient(AdminASGIApp(gate, **options))
        else:
            transport = httpx.WSGITransport(app=AdminWSGIApp(gate, **options))
            client = httpx.Client(transport=transport, base_url="http://testserver")
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        client.close()


def test_every_route_needs_the_role_of_the_table() -> None:
    assert {route.name: route.role for route in ROUTES if not route.public} == ROLE_TABLE


def test_each_role_against_every_endpoint(open_client: Any) -> None:
    """3 roles × 20 endpoints, each on a fresh gate in which an admin's
    request is carried out: allowed exactly where the table says, refused
    with 403 naming the role needed, and a refused request changes nothing."""
    tried = {name: {"allowed": 0, "refused": 0} for name in TOKENS}
    for name in TOKENS:
        for route, (method, path, body) in REQUESTS.items():
            gate = planned_gate(FakeClock())
            if route in ("retryPlan", "startCanary"):
                gate.rollback("so that there is a release to retry")
            if route == "resumePlan":
                gate.pause("so that there is a pause to end")
            served: PromotionGate | Rollouts = gate
            if route in SET_ROUTES:
                served = Rollouts([gate])
                if route == "reinstateRollout":
                    served.retire(gate.name)  # so that there is a rollout to reinstate
            before = gate.state.version
            client = open_client(served)
            response = client.request(method, path, json=body, headers=auth(name))
            if RANK[ROLE_OF[name]] >= RANK[ROLE_TABLE[route]]:
                expected = route_named(route).answer.status  # 201 for a rollout created
                assert response.status_code == expected, (name, route, response.text)
                tried[name]["allowed"] += 1
            else:
                assert response.status_code == 403, (name, route, response.text)
                answer = response.json()
                assert answer["role_needed"] == ROLE_TABLE[route]
                assert f"needs the {ROLE_TABLE[route]} role" in answer["error"]
                assert gate.state.version == before, (name, route)
                if isinstance(served, Rollouts):
                    assert served.names == (gate.name,), (name, route)
                tried[name]["refused"] += 1
    assert tried == {
        "vera": {"allowed": 5, "refused": 15},
        "otto": {"allowed": 11, "refused": 9},
        "ada": {"allowed": 20, "refused": 0},
    }


def test_an_unknown_token_is_401_and_a_known_one_without_the_role_403(open_client: Any) -> None:
    gate = planned_gate(FakeClock())
    client = open_client(gate)
    wrong = {"Authorization": "Bearer someone-elses-token-0123456789"}
    assert client.get("/status", headers=wrong).status_code == 401
    assert client.post("/rollback", json={"reason": "x"}, headers=wrong).status_code == 401
    assert client.post("/rollback", json={"reason": "x"}, headers=auth("vera")).status_code == 403
    # The token's plain text is not needed when only its hash is configured.
    assert client.get("/status", headers=auth("vera")).status_code == 200


def test_the_status_says_who_asked_and_what_they_may_do(open_client: Any) -> None:
    client = open_client(planned_gate(FakeClock()))
    me = client.get("/status", headers=auth("otto")).json()["operator"]
    assert me["name"] == "otto" and me["role"] == "operator"
    assert set(me["may"]) == {r for r, role in ROLE_TABLE.items() if role != "admin"}


def test_the_actor_is_the_token_and_the_client_only_adds_a_note(
    open_client: Any, kind: str
) -> None:
    gate = planned_gate(FakeClock())
    client = open_client(gate)
    spoof = auth("otto", note="ada")  # an operator claiming to be the admin
    assert client.post("/plan/pause", json={"reason": "x"}, headers=spoof).status_code == 200
    assert gate.get_history()[-1].actor == "otto (client note: ada)"
    if kind == "wsgi":  # httpx's WSGI transport takes ASCII headers only: a real server below
        return
    utf8 = {**auth("ada"), "X-Gate-Actor": "cli:Łukasz José 李".encode()}
    assert client.post("/plan/resume", headers=utf8).status_code == 200
    assert gate.get_history()[-1].actor == "ada (client note: cli:Łukasz José 李)"


@contextlib.contextmanager
def wsgi_serving(app: Any) -> Iterator[str]:
    """A real WSGI server (werkzeug's) on 127.0.0.1, in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.parametrize("server", ["uvicorn", "werkzeug"])
def test_a_utf8_note_reads_the_same_on_a_real_server(server: str) -> None:
    gate = planned_gate(FakeClock())
    if server == "uvicorn":
        serve = serving(AdminASGIApp(gate, operators=OPERATORS))
    else:
        serve = wsgi_serving(AdminWSGIApp(gate, operators=OPERATORS))
    with serve as base:
        request = urllib.request.Request(
            f"{base}/plan/pause",
            data=b"{}",
            method="POST",
            headers={
                **auth("otto"),
                "Content-Type": "application/json",
                # http.client sends Latin-1: these are the UTF-8 bytes of the note
                "X-Gate-Actor": "cli:josé Łukasz".encode().decode("latin-1"),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    assert gate.get_history()[-1].actor == "otto (client note: cli:josé Łukasz)"


def test_operators_are_checked_at_configuration() -> None:
    gate = planned_gate(FakeClock())
    token = TOKENS["ada"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "token"),
        ({"operators": [{"name": "a b", "role": "admin", "token": token}]}, "operators.name"),
        ({"operators": [{"name": "a", "role": "root", "token": token}]}, "operators.a.role"),
        ({"operators": [{"name": "a", "role": "admin"}]}, "operators.a.token"),
        (
            {
                "operators": [
                    {"name": "a", "role": "admin", "token": token, "token_sha256": "0" * 64}
                ]
            },
            "operators.a.token",
        ),
        ({"operators": [{"name": "a", "role": "admin", "token": "short"}]}, "operators.a.token"),
        (
            {"operators": [{"name": "a", "role": "admin", "token_sha256": "xyz"}]},
            "operators.a.token_sha256",
        ),
        (
            {"operators": [{"name": "a", "role": "admin", "token": token, "extra": 1}]},
            "operators.extra",
        ),
        ({"operators": "ada"}, "operators"),
        (
            {
                "operators": [
                    {"name": "a", "role": "admin", "token": token},
                    {"name": "a", "role": "viewer", "token": TOKENS["vera"]},
                ]
            },
            "operators.name",
        ),
        (
            {"token": token, "operators": [{"name": "b", "role": "viewer", "token": token}]},
            "operators.b.token",
        ),
    ]
    for options, field in cases:
        with pytest.raises(ConfigError) as caught:
            AdminASGIApp(gate, **options)
        assert caught.value.field == field, (options, str(caught.value))
        assert token not in str(caught.value)
    # Two holders of one token: both are named.
    with pytest.raises(ConfigError, match="'admin' holds the same one"):
        AdminASGIApp(gate, token=token, operators=[{"name": "b", "role": "viewer", "token": token}])
    assert "token" not in repr(Operator("a", "admin", token=token)).split("role")[1]


def write_operators(path: Path, *operators: tuple[str, str, str]) -> None:
    lines = []
    for name, role, token in operators:
        lines += ["[[operator]]", f'name = "{name}"', f'role = "{role}"']
        lines.append(f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"')
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a change the file system sees


def test_tokens_rotate_without_a_restart(
    open_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "operators.toml"
    old, new = "first-token-0123456789abcdef", "second-token-0123456789abcdef"
    write_operators(path, ("alice", "operator", old))
    gate = planned_gate(FakeClock())
    client = open_client(gate, operators=(), operators_file=path)
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    assert client.get("/status", headers=bearer(old)).status_code == 200
    write_operators(path, ("alice", "operator", new), ("bob", "viewer", old))
    assert client.get("/status", headers=bearer(new)).json()["operator"]["name"] == "alice"
    assert client.post("/plan/pause", json={}, headers=bearer(old)).status_code == 403  # bob now
    write_operators(path, ("alice", "operator", new))
    assert client.get("/status", headers=bearer(old)).status_code == 401  # revoked
    # A broken file is refused and logged; the operators read before stay.
    path.write_text("[[operator]]\nname = 'x'\nrole = 'god'\n")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    with caplog.at_level(logging.ERROR, "gate_middleware.admin"):
        assert client.get("/status", headers=bearer(new)).status_code == 200
    assert "operators file changed but is refused" in caplog.text
    assert "operators.x.role" in caplog.text
    with pytest.raises(ConfigError, match="operators_file"):
        OperatorFile(tmp_path / "missing.toml")


def scripted_session(client: httpx.Client) -> list[tuple[str, str]]:
    """30 changes by two operators, 6 a cycle; returns the (action, actor) expected."""
    expected: list[tuple[str, str]] = []

    def change(name: str, method: str, path: str, body: Any, action: str, note: str | None) -> None:
        response = client.request(method, path, json=body, headers=auth(name, note))
        assert response.status_code == 200, response.text
        expected.append((action, f"{name} (client note: {note})" if note else name))

    for cycle in range(5):
        note = f"cli:user{cycle}" if cycle % 2 else None
        change(
            "ada", "POST", "/canary", {"percent": 5, "flags": [f"f{cycle}"]}, "start_canary", note
        )
        change("ada", "POST", "/traffic", {"percent": 10}, "set_traffic", note)
        change("ada", "POST", f"/flags/x{cycle}/enable", None, "enable_flag", note)
        change("otto", "POST", f"/flags/x{cycle}/disable", None, "disable_flag", "ada")
        change("ada", "POST", "/promote", {"target": "staging", "force": True}, "promote", note)
        change("otto", "POST", "/rollback", {"reason": f"cycle {cycle}"}, "rollback", None)
    return expected


def test_a_scripted_session_of_30_changes_leaves_30_events(open_client: Any) -> None:
    clock = FakeClock()  # the wall clock stands still: every event has one timestamp
    gate = PromotionGate(PromotionConfig(min_requests=20), clock=clock, wall_clock=clock)
    client = open_client(gate)
    expected = scripted_session(client)
    events = client.get("/history", headers=auth("vera")).json()["events"]
    assert [(e["action"], e["actor"]) for e in events] == expected
    assert len(events) == 30
    # Paged 7 at a time, the same 30, none lost at the page boundaries.
    paged: list[dict[str, Any]] = []
    query: dict[str, str] = {"limit": "7"}
    for _ in range(10):
        page = client.get("/history", params=query, headers=auth("vera")).json()
        paged += page["events"]
        if page["next"] is None:
            break
        query["since"] = page["next"]
    assert paged == events
    for bad in (
        {"limit": "0"},
        {"limit": "x"},
        {"since": "yesterday"},
        {"since": "2026-12-07T00:00:00"},
        {"page": "2"},
    ):
        assert client.get("/history", params=bad, headers=auth("vera")).status_code == 400, bad


def cli(url: str, token: str, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_MIDDLEWARE_")}
    env.update(
        GATE_MIDDLEWARE_URL=url,
        GATE_MIDDLEWARE_TOKEN=token,
        USER=user,
        LOGNAME=user,
        LC_ALL="C.UTF-8",
        COLUMNS="160",
    )
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_cli_with_roles_any_login_name_and_a_jsonl_export() -> None:
    gate = planned_gate(FakeClock())
    with serving(AdminASGIApp(gate, operators=OPERATORS)) as base:
        refused = cli(base, TOKENS["vera"], "plan", "pause", "--reason", "x")
        assert refused.returncode == 1
        assert "needs the operator role" in refused.stderr and "vera is a viewer" in refused.stderr
        for login in ("Łukasz", "josé", "李"):
            shown = cli(base, TOKENS["vera"], "history", user=login)
            assert shown.returncode == 0, shown.stderr
        paused = cli(base, TOKENS["otto"], "plan", "pause", "--reason", "x", user="Łukasz")
        assert paused.returncode == 0, paused.stderr
        assert gate.get_history()[-1].actor == "otto (client note: cli:Łukasz)"
        lines = cli(base, TOKENS["vera"], "history", "--jsonl").stdout.splitlines()
        assert [json.loads(line)["action"] for line in lines] == ["start_canary", "pause"]
        assert json.loads(lines[-1])["actor"] == "otto (client note: cli:Łukasz)"
        no_token = cli(base, "", "status")
        assert no_token.returncode == 2 and "GATE_MIDDLEWARE_TOKEN" in no_token.stderr


def test_hash_token_prints_what_token_sha256_takes() -> None:
    token = TOKENS["otto"]
    result = subprocess.run(
        [CLI, "hash-token"], input=token + "\n", capture_output=True, text=True, timeout=60
    )
    assert (
        result.returncode == 0
        and result.stdout.strip() == hashlib.sha256(token.encode()).hexdigest()
    )
    bad = subprocess.run(
        [CLI, "hash-token"], input="short", capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2


# -- the adversarial pass: each finding, held ----------------------------------


def test_an_operator_cannot_approve_a_manual_step(open_client: Any) -> None:
    """Resuming at a manual step approves it, which moves the release on: admin only."""
    plan = RolloutPlan(steps=({"traffic_percent": 1, "manual": True}, 5), bake_seconds=60)
    clock = FakeClock()
    gate = PromotionGate(
        PromotionConfig(min_requests=20, plan=plan), clock=clock, wall_clock=clock, plan_timer=False
    )
    gate.start_canary(feature_flags=["new_api"])
    client = open_client(gate)
    refused = client.post("/plan/resume", headers=auth("otto"))
    assert refused.status_code == 403 and refused.json()["role_needed"] == "admin"
    assert gate.state.plan is not None and not gate.state.plan.approved
    # A pause at a step that is not manual is the operator's to end.
    gate.pause("freeze")
    assert client.post("/plan/resume", headers=auth("ada")).status_code in (200, 409)


def test_no_weak_or_empty_token_matches_a_hash(open_client: Any) -> None:
    empty = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ConfigError, match="hash of nothing"):
        AdminASGIApp(
            planned_gate(FakeClock()),
            operators=[{"name": "bot", "role": "admin", "token_sha256": empty}],
        )
    weak = hashlib.sha256(b"admin").hexdigest()  # a hash of a token too short to be one
    client = open_client(
        planned_gate(FakeClock()),
        operators=[{"name": "bot", "role": "admin", "token_sha256": weak}],
    )
    for header in ("Bearer admin", "Bearer", "Bearer ", "bearer  "):
        assert client.get("/status", headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize(
    "query", ["limit=%C2%B2", "limit=" + "9" * 5000, "since=2026-01-01T00:00:00%2B00:00~%C2%B2"]
)
def test_odd_digits_in_the_query_are_a_400_not_a_500(open_client: Any, query: str) -> None:
    client = open_client(planned_gate(FakeClock()))
    assert client.get(f"/history?{query}", headers=auth("vera")).status_code == 400


def test_a_reloaded_file_cannot_take_a_fixed_operators_name_or_token(
    open_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "operators.toml"
    write_operators(path, ("bob", "viewer", "bob-token-0123456789abcdef"))
    client = open_client(
        planned_gate(FakeClock()), operators=(), token=TOKENS["ada"], operators_file=path
    )
    write_operators(path, ("admin", "viewer", TOKENS["ada"]))  # the fixed admin, demoted?
    with caplog.at_level(logging.ERROR, "gate_middleware.admin"):
        me = client.get("/status", headers=auth("ada")).json()["operator"]
    assert (me["name"], me["role"]) == ("admin", "admin")
    assert "refused" in caplog.text
    assert (
        client.get(
            "/status", headers={"Authorization": "Bearer bob-token-0123456789abcdef"}
        ).status_code
        == 200
    )


def test_no_token_is_ever_shown_in_an_error() -> None:
    secret = "carol-secret-token-0123456789"
    for fields in (
        {"name": "carol", "role": "admin", "token_sha256": secret},  # the token in the wrong field
        {"name": "carol", "role": "admin", "token": secret.encode()},  # bytes, not text
    ):
        with pytest.raises(ConfigError) as caught:
            AdminASGIApp(planned_gate(FakeClock()), operators=[fields])
        assert "secret" not in str(caught.value) and "secret" not in repr(caught.value)


def test_a_query_on_the_page_is_ignored_and_elsewhere_refused(open_client: Any) -> None:
    client = open_client(planned_gate(FakeClock()))
    assert client.get("/?utm_source=mail").status_code == 200
    assert client.get("/status?pretty=1", headers=auth("vera")).status_code == 400
    document = client.get("/openapi.json", headers=auth("vera")).json()
    assert "400" in document["paths"]["/status"]["get"]["responses"]


def test_two_authorization_headers_are_refused_on_a_real_server() -> None:
    gate = planned_gate(FakeClock())
    with serving(AdminASGIApp(gate, operators=OPERATORS)) as base:
        host, port = base.removeprefix("http://").split(":")
        for first, second in (("vera", "ada"), ("ada", "vera")):
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.putrequest("GET", "/status")
            connection.putheader("Authorization", f"Bearer {TOKENS[first]}")
            connection.putheader("Authorization", f"Bearer {TOKENS[second]}")
            connection.endheaders()
            assert connection.getresponse().status == 401
            connection.close()


def test_a_rotation_that_keeps_size_and_mtime_is_still_read(
    open_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "operators.toml"
    old, new = "aaaa-token-0123456789abcdef", "bbbb-token-0123456789abcdef"  # one length
    write_operators(path, ("alice", "operator", old))
    client = open_client(planned_gate(FakeClock()), operators=(), operators_file=path)
    assert client.get("/status", headers={"Authorization": f"Bearer {old}"}).status_code == 200
    stat = path.stat()
    path.write_text(path.read_text().replace(token_sha256(old), token_sha256(new)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p would leave it
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert client.get("/status", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert client.get("/status", headers={"Authorization": f"Bearer {old}"}).status_code == 401


def test_the_cli_pages_a_long_history_and_takes_any_login() -> None:
    gate = planned_gate(FakeClock())
    for i in range(230):  # 460 events: three pages of 200
        gate.enable_feature(f"f{i}", actor="ada")
        gate.disable_feature(f"f{i}", actor="ada")
    with serving(AdminASGIApp(gate, operators=OPERATORS)) as base:
        lines = cli(base, TOKENS["vera"], "history", "--jsonl").stdout.splitlines()
        assert len(lines) == 461
        assert (
            len(
                cli(
                    base, TOKENS["vera"], "history", "--jsonl", "--limit", "250"
                ).stdout.splitlines()
            )
            == 250
        )
        paused = cli(base, TOKENS["otto"], "plan", "pause", "--reason", "x", user="a\x1b[31mb")
        assert paused.returncode == 0, paused.stderr
    assert gate.get_history()[-1].actor == "otto (client note: cli:a[31mb)"
