"""The in-memory gate never misleads: where it can tell that it is one of
several processes, it says so once, and the admin API refuses a change
(409) instead of answering 200 for one worker of several."""

from __future__ import annotations

import logging
import os
import uuid
import warnings

import httpx
import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.gate.workers import _worker_count, several_workers
from gate_middleware.operate.admin import AdminAPI
from tests.servers import free_port, python, running

TOKEN = "redis-admin-token-0123456789"  # tests/shared_app.py's
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def servers() -> dict[str, list[str]]:
    return {
        "gunicorn -w 2": ["-m", "gunicorn", "-w", "2", "--chdir", "tests", "shared_app:wsgi"],
        "uvicorn --workers 2": [
            "-m", "uvicorn", "--app-dir", "tests", "shared_app:app", "--workers", "2",
        ],
    }  # fmt: skip


@pytest.mark.parametrize("server", sorted(servers()))
def test_an_admin_change_to_several_in_memory_workers_is_refused(server: str) -> None:
    port = free_port()
    args = servers()[server]
    if "uvicorn" in args:
        args = [*args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        args = [*args, "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    env = {"GATE_ROLLOUT": f"memory-{uuid.uuid4().hex[:8]}"}
    with running(python(*args), port, env=env, ready_path="/stats") as base:
        for _ in range(4):  # a request through the middleware in each worker first
            httpx.get(base + "/checkout", timeout=5.0)
        answers = [
            httpx.post(base + "/gate/rollback", json={"reason": "x"}, headers=AUTH, timeout=5.0)
            for _ in range(6)
        ]
        assert {a.status_code for a in answers} == {409}
        message = answers[0].json()["error"]
        assert "each process decides alone" in message and "sqlite:///" in message
        # Nothing changed anywhere; reading still works.
        status = httpx.get(base + "/gate/status", headers=AUTH, timeout=5.0)
        assert status.status_code == 200 and status.json()["environment"]["name"] == "canary"


def test_one_in_memory_process_still_takes_changes() -> None:
    gate = PromotionGate(PromotionConfig(environment=Environment.canary(50)))
    assert gate.decides_alone is None and not gate.shared
    api = AdminAPI(gate, token=TOKEN)
    answer = api.handle(
        "POST", "/rollback", AUTH["Authorization"], b'{"reason": "x"}', "application/json"
    )
    assert answer.status == 200 and gate.environment == Environment.PRODUCTION


def test_a_fork_after_the_gate_was_built_is_noted_in_the_child(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = PromotionGate(PromotionConfig(environment=Environment.canary(50)))
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        reason = gate.decides_alone or ""
        os.write(write, reason.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reason = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "was forked from" in reason and "each process decides alone" in reason
    assert gate.decides_alone is None  # the parent is still the only one it knows of


def test_a_shared_gate_never_decides_alone(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    gate = PromotionGate.from_url(f"sqlite://{tmp_path}/gate.db", PromotionConfig(name="shared"))
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        gate.note_several_processes("four gunicorn workers")
    assert gate.shared and gate.decides_alone is None and caplog.records == []
    gate.close()


def test_it_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    gate = PromotionGate(PromotionConfig())
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        gate.note_several_processes("first")
        gate.note_several_processes("second")
    assert len(caplog.records) == 1 and "(first)" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("command", "workers"),
    [
        (["gunicorn", "-w", "4", "app:app"], 4),
        (["gunicorn", "-w4", "app:app"], 4),
        (["python", "-m", "uvicorn", "app:app", "--workers", "3"], 3),
        (["uvicorn", "app:app", "--workers=2"], 2),
        (["uvicorn", "app:app", "--reload"], 1),
        (["gunicorn", "app:app"], 1),
    ],
)
def test_the_worker_count_is_read_from_a_servers_command_line(
    command: list[str], workers: int
) -> None:
    assert _worker_count(command) == workers


def test_web_concurrency_names_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert "WEB_CONCURRENCY=3" in (several_workers() or "")
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert several_workers() is None  # and pytest's parent is no web server
