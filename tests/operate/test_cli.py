"""The command-line tool against a live admin app on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.operate.admin import AdminASGIApp
from tests.servers import free_port, serving
from tests.support import TOKEN, run


@pytest.fixture
def gate() -> PromotionGate:
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(10), feature_flags=["new_api"], min_requests=20
        )
    )
    for i in range(100):
        gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
    for i in range(40):
        gate.record_request_outcome(f"c{i}", True, 0.02, variant="canary")
    return gate


@pytest.fixture
def url(gate: PromotionGate) -> Iterator[str]:
    with serving(AdminASGIApp(gate, token=TOKEN)) as base:
        yield base


def test_status(url: str) -> None:
    result = run(url, "status")
    assert result.returncode == 0, result.stderr
    assert "canary (10%)" in result.stdout
    assert "HEALTHY" in result.stdout
    assert "new_api" in result.stdout


def test_status_json_and_the_token_option(url: str) -> None:
    result = run(url, "--token", TOKEN, "status", "--json", token=None)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["health"]["canary_requests"] == 40
    assert status["environment"]["name"] == "canary"


def test_status_watch_redraws(url: str) -> None:
    result = run(url, "status", "--watch", "--interval", "0.2", "--iterations", "3")
    assert result.returncode == 0, result.stderr
    assert "canary (10%)" in result.stdout


def test_steering_and_history(url: str, gate: PromotionGate) -> None:
    assert run(url, "traffic", "25").returncode == 0
    assert gate.environment == Environment.canary(25)
    for i in range(100):  # evidence for the new step
        gate.record_request_outcome(f"s{i}", True, 0.02, variant="stable")
        gate.record_request_outcome(f"c{i}", True, 0.02, variant="canary")
    result = run(url, "flags", "enable", "dark_mode")
    assert result.returncode == 0 and gate.is_feature_enabled("dark_mode")
    assert run(url, "flags", "disable", "dark_mode").returncode == 0
    result = run(url, "promote")
    assert result.returncode == 0, result.stderr
    assert "staging" in result.stdout
    result = run(url, "rollback", "--reason", "totals are wrong")
    assert result.returncode == 0 and gate.environment == Environment.PRODUCTION
    result = run(url, "canary", "5", "--flag", "search_v2")
    assert result.returncode == 0 and gate.environment == Environment.canary(5)
    history = run(url, "history")
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert "set_traffic" in lines[0]
    assert any("rollback" in line and "totals are wrong" in line for line in lines)
    events = json.loads(run(url, "history", "--json").stdout)
    assert events[-1]["action"] == "start_canary"


def test_refused_by_the_gate_exits_1(url: str, gate: PromotionGate) -> None:
    for i in range(40):
        gate.record_request_outcome(f"c{i}", False, 0.02, variant="canary")
    result = run(url, "promote", "staging")
    assert result.returncode == 1
    assert "refused by the gate" in result.stderr
    result = run(url, "traffic", "10")
    assert result.returncode == 0


def test_usage_and_connection_errors_exit_2(url: str, gate: PromotionGate) -> None:
    before = gate.state
    assert run(url, "traffic", "150").returncode == 2
    assert run(url, "traffic").returncode == 2  # missing argument
    assert run(url, "promote", "qa").returncode == 2
    assert run(url, "rollback").returncode == 2  # --reason is required
    assert run(url, "status", token="wrong-token-0123456789").returncode == 2
    closed = f"http://127.0.0.1:{free_port()}/gate"
    result = run(closed, "status")
    assert result.returncode == 2 and "cannot reach" in result.stderr
    assert gate.state == before


# -- hostile networks and hostile servers --------------------------------------------------


class Scripted:
    """A tiny ASGI server app: answers each request with ``answer(method, path)``
    and remembers what it was sent (method, path, Authorization)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[tuple[str, str, str | None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization")
        self.seen.append(
            (scope["method"], scope["path"], authorization.decode() if authorization else None)
        )
        status, extra, body = self.answer(scope["method"], scope["path"])
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})


def redirect_to(location: str, status: int) -> Any:
    def answer(method: str, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return status, [(b"location", location.encode())], b""

    return answer


def json_answer(payload: Any, status: int = 200) -> Any:
    def answer(method: str, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return status, [(b"content-type", b"application/json")], json.dumps(payload).encode()

    return answer


REDIRECTS = [301, 302, 303, 307, 308]


@pytest.mark.parametrize("status", REDIRECTS)
@pytest.mark.parametrize("command", [["status"], ["history"], ["traffic", "20"]])
def test_the_token_never_follows_a_redirect_to_another_origin(
    status: int, command: list[str]
) -> None:
    catcher = Scripted(json_answer({"events": []}))
    with serving(catcher) as elsewhere:
        for target in (f"{elsewhere}/gate/status", elsewhere.replace("127.0.0.1", "localhost")):
            redirector = Scripted(redirect_to(target, status))
            with serving(redirector) as base:
                result = run(f"{base}/gate", *command)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            assert redirector.seen  # the CLI did ask
    assert catcher.seen == []  # and nothing, token or not, reached the other origin


@pytest.mark.parametrize("status", REDIRECTS)
def test_a_redirected_post_is_refused_not_turned_into_a_get(status: int) -> None:
    # A 301/302/303 turns a POST into a GET: the CLI then read /status's answer
    # as a rollback's and crashed with KeyError: 'event'.
    status_json = json_answer({"environment": {"name": "canary", "traffic_percent": 10}})

    def answer(method: str, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if method == "POST":
            return redirect_to("/gate/status", status)(method, path)
        return status_json(method, path)

    server = Scripted(answer)
    with serving(server) as base:
        result = run(f"{base}/gate", "rollback", "--reason", "totals are wrong")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert [method for method, _, _ in server.seen] == ["POST"]


def test_plain_http_to_another_host_needs_allow_http() -> None:
    result = run("http://gate.example.invalid/gate", "status")
    assert result.returncode == 2 and "--allow-http" in result.stderr
    result = run("http://gate.example.invalid/gate", "--allow-http", "status")
    assert result.returncode == 2 and "cannot reach" in result.stderr  # it tried
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/gate", "gate.example.invalid"):
        result = run(url, "status")
        assert result.returncode == 2 and "http" in result.stderr, url


def test_loopback_addresses_need_no_flag(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    assert run(f"http://localhost:{port}", "status").returncode == 0
    # (nothing listens on [::1] here: refused for being unreachable, not for http)
    assert "--allow-http" not in run(f"http://[::1]:{port}", "status").stderr


ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\r\n2026-11-30 INFO Promoted\u202e"


def hostile_event() -> dict[str, Any]:
    environment = {"name": "canary" + ESCAPES, "traffic_percent": 10}
    return {
        "kind": "rollback",
        "timestamp": "2026-11-30T12:00:00+00:00",
        "automatic": False,
        "feature": "all",
        "environment": environment,
        "reason": "bad" + ESCAPES,
    }


@pytest.mark.parametrize(
    ("command", "payload", "status"),
    [
        (["history"], {"events": [hostile_event()]}, 200),
        (["rollback", "--reason", "x"], {"event": hostile_event()}, 200),
        (["traffic", "20"], {"error": "refused" + ESCAPES}, 409),
        (["traffic", "20"], {"error": "bad" + ESCAPES}, 400),
    ],
)
def test_nothing_the_server_sends_drives_the_terminal(
    command: list[str], payload: Any, status: int
) -> None:
    with serving(Scripted(json_answer(payload, status))) as base:
        result = run(f"{base}/gate", *command)
    assert "Traceback" not in result.stderr
    printed = result.stdout + result.stderr
    for byte in ("\x1b", "\x07", "\r", "\u202e"):
        assert byte not in printed, repr(printed)
    assert not any(line.startswith("2026-11-30 INFO") for line in printed.splitlines())
    assert "\\x1b" in printed  # shown, escaped


@pytest.mark.parametrize(
    "answer",
    [
        json_answer(["not", "an", "object"]),
        json_answer({"environment": "production"}),
        lambda method, path: (200, [(b"content-type", b"text/html")], b"<html>login</html>"),
    ],
)
def test_an_answer_of_the_wrong_shape_exits_2_without_a_traceback(answer: Any) -> None:
    with serving(Scripted(answer)) as base:
        for command in (["status"], ["history"], ["traffic", "20"], ["promote"]):
            result = run(f"{base}/gate", *command)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr


def test_no_data_shows_as_no_data_and_help_names_the_environment() -> None:
    """With no request yet: no "SLO 0.00%" nor "p99 0.0 ms"; --help lists the
    environment variables, --version answers."""
    gate = PromotionGate(PromotionConfig(environment=Environment.canary(10), feature_flags=["x"]))
    with serving(AdminASGIApp(gate, token=TOKEN)) as base:
        shown = run(base, "status")
    assert shown.returncode == 0, shown.stderr
    assert "SLO – (no requests yet)" in shown.stdout
    assert "0.0 ms" not in shown.stdout and "0.00%" not in shown.stdout
    helped = run(base, "--help")
    for variable in ("GATE_MIDDLEWARE_URL", "GATE_MIDDLEWARE_TOKEN", "GATE_MIDDLEWARE_ALLOW_HTTP"):
        assert variable in helped.stdout
    version = run(base, "--version")
    assert version.returncode == 0 and version.stdout.startswith("gate-middleware, version ")
