"""Guarantee 11: pre-fork servers. Every worker routes identically and records
its own outcomes; nothing the gate made before the fork is reused after it."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable
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
    assert exit_code(pid, 5.0, "the forked child deadlocked on an inherited lock") == 0


def exit_code(pid: int, seconds: float, deadlocked: str) -> int:
    """The forked child ``pid``'s exit code; killed, and ``deadlocked``
    raised, if it has not exited within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(deadlocked)
        time.sleep(0.01)


def test_the_state_locks_held_at_fork_time_do_not_deadlock_the_child(tmp_path: Path) -> None:
    """The gate's and the SQLite store's locks around taking up a state: a
    child forked while another thread held them still changes the state."""
    gate = PromotionGate.from_url(
        f"sqlite:///{tmp_path / 'gate.db'}", PromotionConfig(name="fork-locks"), plan_timer=False
    )
    OPEN_GATES.append(gate)
    gate.start_canary(50.0, ["f"])
    holding = threading.Event()
    release = threading.Event()

    def hold_the_state_locks() -> None:
        with gate._transitions._adopt_lock, gate._store._hold_lock:  # type: ignore[attr-defined]
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_state_locks)
    holder.start()
    assert holding.wait(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: a reused lock would block the rollback forever
        try:
            gate.rollback("rolled back in the forked child")
            os._exit(0 if gate.state.environment == Environment.PRODUCTION else 3)
        except BaseException:
            os._exit(4)
    release.set()
    holder.join()
    assert exit_code(pid, 10.0, "the forked child deadlocked on an inherited state lock") == 0


def forked(
    child: Callable[[Callable[[], None]], str], *, seconds: float = 20.0
) -> tuple[Callable[[], None], Callable[[], str]]:
    """Fork a child that runs ``child(wait_for_go)`` and reports the string
    it returns. Returns ``(go, result)``: ``go()`` lets the child past its
    ``wait_for_go()`` (bounded: 10 s), ``result()`` reads its report (the
    child is killed, and the test fails, after ``seconds``)."""
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        try:

            def wait_for_go() -> None:
                if not select.select([go_read], [], [], 10.0)[0]:
                    raise TimeoutError("the parent never said go")
                os.read(go_read, 1)

            os.write(report_write, child(wait_for_go).encode())
            os._exit(0)
        except BaseException as exc:
            os.write(report_write, f"the child failed: {exc!r}".encode())
            os._exit(4)
    os.close(go_read)
    os.close(report_write)

    def go() -> None:
        os.write(go_write, b"x")

    def result() -> str:
        try:
            deadline = time.monotonic() + seconds
            while not select.select([report_read], [], [], 0.1)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    raise AssertionError(f"the forked child did not report within {seconds} s")
            report = os.read(report_read, 4096).decode()
            os.waitpid(pid, 0)
            return report
        finally:
            os.close(report_read)
            os.close(go_write)

    return go, result


def until_all_stable(gate: PromotionGate, sessions: list[str], seconds: float = 10.0) -> str:
    """In a child: route ``sessions`` until every one is stable (bounded);
    the seconds it took, or "never"."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if all(gate.route_request(s).variant == "stable" for s in sessions):
            return f"{time.monotonic() - started:.3f}"
        time.sleep(0.02)
    return "never"


def canary_config() -> PromotionConfig:
    return PromotionConfig(
        name="checkout", environment=Environment.canary(50), min_requests=100_000
    )


SESSIONS = [f"forked-{n}" for n in range(200)]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_forked_child_that_only_routes_follows_the_store(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A gate built before the fork (gunicorn --preload), in a child that
    never reads the state itself: a rollback made by another process after
    the fork reaches its routing within the follower's refresh (0.25 s;
    bounded at 10 s for CI's noise). It once never did: the child served the
    rolled-back canary until it exited."""
    if store == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = f"sqlite:///{tmp_path}/gate.db"
    gate = PromotionGate.from_url(url, canary_config())
    OPEN_GATES.append(gate)
    assert any(gate.route_request(s).variant == "canary" for s in SESSIONS)

    def child(wait_for_go: Callable[[], None]) -> str:
        wait_for_go()  # the rollback is stored
        return until_all_stable(gate, SESSIONS)

    go, result = forked(child)
    operator = PromotionGate.from_url(url, canary_config())  # another process's, in effect
    OPEN_GATES.append(operator)
    operator.rollback("checkout regressed", actor="ada")
    go()
    took = result()
    assert took != "never", "the forked child kept routing to the rolled-back canary"
    assert float(took) < 10.0, took


def test_a_child_forked_from_a_process_behind_the_store_reads_it_at_once(
    tmp_path: Path,
) -> None:
    """The parent has not read the file since a rollback (its follower
    waits an hour); a child forked from it reads the file at once on its own
    follower's thread, so it does not serve the parent's stale state until
    its first refresh (here an hour away)."""
    from gate_middleware.stores.sqlite import SqliteStateStore, _Database
    from gate_middleware.stores.windows import InMemoryWindowStore

    url = f"sqlite:///{tmp_path}/gate.db"
    operator = PromotionGate.from_url(url, canary_config())
    OPEN_GATES.append(operator)
    database = _Database(tmp_path / "gate.db")
    behind = PromotionGate(
        canary_config(),
        state_store=SqliteStateStore(database, "checkout", operator.state, refresh_seconds=3600.0),
        window_store=InMemoryWindowStore(300.0),
    )
    OPEN_GATES.append(behind)
    time.sleep(0.3)  # its follower's first read is done: the next is an hour away
    operator.rollback("checkout regressed", actor="ada")
    time.sleep(0.3)
    assert any(behind.route_request(s).variant == "canary" for s in SESSIONS)  # behind

    def child(wait_for_go: Callable[[], None]) -> str:
        return until_all_stable(behind, SESSIONS)

    _, result = forked(child)
    try:
        took = result()
        assert took != "never", "the child served its parent's stale state"
        assert float(took) < 10.0, took
        assert any(behind.route_request(s).variant == "canary" for s in SESSIONS)  # still behind
    finally:
        database.close()


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
