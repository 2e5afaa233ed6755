"""Guarantee 11: pre-fork servers. Every worker routes identically and records
its own outcomes; nothing the gate made before the fork is reused after it."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from tests.servers import free_port, python, running
from tests.support import OPEN_GATES


def test_a_lock_held_at_fork_time_does_not_deadlock_the_child() -> None:
    gate = PromotionGate(PromotionConfig(environment=Environment.canary(50)))
    holding = threading.Event()
    release = threading.Event()

    def hold_the_window_lock() -> None:
        with gate._windows._lock:  # type: ignore[attr-defined]
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_window_lock)
    holder.start()
    holding.wait(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: record; a reused lock would block forever
        try:
            for i in range(1000):
                gate.record_request_outcome(f"s{i}", True, 0.01)
            health = gate.health_snapshot()
            os._exit(0 if health.canary_requests + health.production_requests == 1000 else 3)
        except BaseException:
            os._exit(4)
    release.set()
    holder.join()
    deadline = time.monotonic() + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child deadlocked on an inherited lock")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def waited(pid: int, seconds: float) -> int:
    """The forked child's exit status (killed, and a failure, after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child did not finish within {seconds} s")
        time.sleep(0.01)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_forked_child_that_only_routes_follows_the_store(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A gate built before the fork (gunicorn --preload), in a child that
    never reads the state itself: a rollback made by another process
    reaches its routing within a second (it once never did: the child
    served the rolled-back canary until it exited)."""
    if store == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = f"sqlite:///{tmp_path}/gate.db"
    config = PromotionConfig(
        name="checkout", environment=Environment.canary(50), min_requests=100_000
    )
    gate = PromotionGate.from_url(url, config)
    OPEN_GATES.append(gate)
    sessions = [f"forked-{n}" for n in range(200)]
    assert any(gate.route_request(s).variant == "canary" for s in sessions)
    ready, go = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: routes only, until every session is stable (or 10 s)
        try:
            os.read(ready, 1)  # the rollback is stored
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if all(gate.route_request(s).variant == "stable" for s in sessions):
                    os._exit(0)
                time.sleep(0.02)
            os._exit(3)
        except BaseException:
            os._exit(4)
    operator = PromotionGate.from_url(url, config)  # another process's, in effect
    OPEN_GATES.append(operator)
    operator.rollback("checkout regressed", actor="ada")
    os.write(go, b"x")
    assert waited(pid, 20.0) == 0, "the forked child kept routing to the rolled-back canary"


def test_gunicorn_preload_workers_route_identically_and_record_their_own() -> None:
    port = free_port()
    args = python(
        "-m",
        "gunicorn",
        "--preload",
        "-w",
        "4",
        "--chdir",
        "tests",
        "--bind",
        f"127.0.0.1:{port}",
        "prefork_app:app",
    )
    sessions = [f"prefork-session-{n:04d}-abcdefgh" for n in range(40)]
    seen: dict[str, set[tuple[str, int]]] = {s: set() for s in sessions}
    recorded_by_pid: dict[int, list[int]] = {}
    with running(args, port) as base:
        for _ in range(10):
            for session in sessions:
                response = httpx.get(
                    base + "/", headers={"Cookie": f"gate_session={session}"}, timeout=5.0
                )
                body = response.json()
                assert body["pid"] != body["built_in"]  # served by a forked worker
                seen[session].add((body["variant"], body["bucket"]))
                recorded_by_pid.setdefault(body["pid"], []).append(body["recorded"])
    assert all(len(answers) == 1 for answers in seen.values())  # every worker agrees
    assert len(recorded_by_pid) >= 2
    for counts in recorded_by_pid.values():
        # Each worker's gate counts its own requests, one more each time.
        assert counts == sorted(counts) and len(set(counts)) == len(counts)
