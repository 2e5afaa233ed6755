"""The SQLite store: one rollout across real worker processes on one host,
through a real file, and a decision that survives recycled workers and
restarts, under uvicorn and gunicorn (sync and uvicorn workers, with and
without --preload, recycled by --max-requests). Store-level behaviour is in
tests/stores/test_store_contract.py."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate_middleware import (
    ConfigError,
    Environment,
    PromotionConfig,
    PromotionEvent,
    PromotionGate,
    RollbackEvent,
)
from gate_middleware.stores.sqlite import SqliteWindowStore, _Database, _Trouble, database_path
from tests.servers import eventually, free_port, python, running
from tests.support import OPEN_GATES

TOKEN = "redis-admin-token-0123456789"  # tests/shared_app.py's
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/gate.db"


WORKERS = 4
UVICORN_WORKER = ("-k", "uvicorn.workers.UvicornWorker")  # the lock file has no uvicorn-worker
RECYCLE = ("--max-requests", "25")  # gunicorn replaces each worker after 25 requests

# Every server a rollout on one file is run under: four workers each, the ASGI
# app (tests/shared_app.py's app) or the WSGI one (its wsgi), with and without
# gunicorn's --preload (the gate built once in the arbiter, then forked), and
# workers recycled (--max-requests) with and without it.
SERVERS: dict[str, tuple[str, ...]] = {
    "uvicorn --workers 4": ("uvicorn",),
    "gunicorn sync": ("gunicorn", "shared_app:wsgi"),
    "gunicorn sync --preload --max-requests": (
        "gunicorn", "--preload", *RECYCLE, "shared_app:wsgi",
    ),
    "gunicorn UvicornWorker --max-requests": (
        "gunicorn", *UVICORN_WORKER, *RECYCLE, "shared_app:app",
    ),
    "gunicorn UvicornWorker --preload": (
        "gunicorn", *UVICORN_WORKER, "--preload", "shared_app:app",
    ),
}  # fmt: skip


def server_command(server: str, port: int) -> list[str]:
    """The command line that runs ``server`` (a key of SERVERS) on ``port``."""
    kind, *options = SERVERS[server]
    if kind == "uvicorn":
        return python(
            "-m", "uvicorn", "--app-dir", "tests", "shared_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(WORKERS), "--log-level", "warning",
        )  # fmt: skip
    return python(
        "-m", "gunicorn", "-w", str(WORKERS), "--chdir", "tests", "--bind", f"127.0.0.1:{port}",
        "--log-level", "warning", *options,
    )  # fmt: skip


@contextmanager
def started(server: str, env: dict[str, str]) -> Iterator[str]:
    """``server`` running on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    with running(server_command(server, port), port, env=env, ready_path="/gate/status") as base:
        yield base


def store_env(url: str, rollout: str, **env: str) -> dict[str, str]:
    return {"GATE_STORE_URL": url, "GATE_ROLLOUT": rollout, **env}


# A connection closed with no answer: what a recycled worker does to those it
# accepted but will not serve (see Visitors).
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError)


class Visitors:
    """New visitors: requests to ``/checkout`` without a cookie, each on a new
    connection, four at a time (so every worker gets some).

    A worker that gunicorn recycles (``--max-requests``) may close
    connections it accepted but never served (a UvicornWorker does, as
    gunicorn's gthread worker does: benoitc/gunicorn#3038): such a request is
    sent again, as a browser or a proxy would, and counted in ``resent``.
    The gate never answers that way: its failures are answers."""

    def __init__(self, base: str, clients: int = 4) -> None:
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        self._clients = [
            httpx.Client(base_url=base, timeout=5.0, limits=no_reuse) for _ in range(clients)
        ]
        self._pool = ThreadPoolExecutor(clients)
        self._lock = threading.Lock()
        self.resent = 0

    def _get(self, client: httpx.Client) -> httpx.Response:
        for _ in range(3):
            client.cookies.clear()
            try:
                return client.get("/checkout")
            except DROPPED:
                with self._lock:
                    self.resent += 1
        client.cookies.clear()
        return client.get("/checkout")

    def _visit(self, client: httpx.Client, count: int) -> list[dict[str, Any]]:
        answers = []
        for _ in range(count):
            response = self._get(client)
            answers.append({**response.json(), "status": response.status_code})
        return answers

    def answers(self, count: int) -> list[dict[str, Any]]:
        """The answers to ``count`` such requests."""
        share, extra = divmod(count, len(self._clients))
        counts = [share + (i < extra) for i in range(len(self._clients))]
        return [a for part in self._pool.map(self._visit, self._clients, counts) for a in part]

    def __enter__(self) -> Visitors:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()
        for client in self._clients:
            client.close()


def rolled_back(answer: dict[str, Any]) -> bool:
    """Whether ``answer`` came from a worker that holds the rolled-back state."""
    return (answer["variant"], answer["environment"], answer["status"]) == (
        "stable",
        "production",
        200,
    )


def until_every_worker_agrees(crowd: Visitors, *, within: float = 5.0) -> tuple[float, int]:
    """Rounds of new visitors from the moment a rollback was made until
    three rounds in a row (48 answers) from at least WORKERS workers are all
    in the rolled-back state. Returns when the old state was last seen
    (seconds from the start, at the end of its round; 0.0 if never) and how
    many answers were in it. Bounded by ``within`` seconds for CI's noise:
    the promise is one second."""
    started_at = time.monotonic()
    last_seen, old, streak = 0.0, 0, []
    while time.monotonic() - started_at < within:
        round_ = crowd.answers(16)
        if all(map(rolled_back, round_)):
            streak += round_
            if len(streak) >= 48 and len({a["pid"] for a in streak}) >= WORKERS:
                return last_seen, old
        else:
            last_seen, streak = time.monotonic() - started_at, []
            old += sum(not rolled_back(a) for a in round_)
    pytest.fail(f"the workers did not all hold the rollback within {within} s ({old} old answers)")


def running_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def history(base: str) -> list[dict[str, Any]]:
    """The admin API's history, asked again if a recycled worker dropped the question."""
    for _ in range(3):
        try:
            response = httpx.get(base + "/gate/history", headers=AUTH, timeout=5.0)
        except DROPPED:
            continue
        return list(response.json()["events"])
    pytest.fail("no worker answered /gate/history")


def roll_back(base: str, reason: str) -> int:
    """POST /gate/rollback; its status. One whose answer was dropped is
    looked up in the history, and sent again only if it is not there."""
    for _ in range(3):
        try:
            return httpx.post(
                base + "/gate/rollback", json={"reason": reason}, headers=AUTH, timeout=5.0
            ).status_code
        except DROPPED:
            if "rollback" in kinds(history(base)):
                return 200
    pytest.fail("no worker answered the rollback")


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [str(event["kind"]) for event in events]


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1 in a thread of the test: it keeps
    ``(X-Gate-Event, X-Gate-Delivery)`` of every POST and answers 204."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                posts.append((self.headers["X-Gate-Event"], self.headers["X-Gate-Delivery"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def deliveries(self, event: str) -> set[str]:
        """The delivery ids received for ``event`` (a retry repeats its id)."""
        return {delivery for kind, delivery in self.posts if kind == event}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def webhooks() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


# -- every worker, one decision ---------------------------------------------------------


@pytest.mark.serial
@pytest.mark.parametrize("server", SERVERS)
def test_an_admin_rollback_holds_in_every_worker_and_after_a_restart(url: str, server: str) -> None:
    env = store_env(url, f"sqlite-{uuid.uuid4().hex[:8]}")
    with started(server, env) as base, Visitors(base) as crowd:
        before = crowd.answers(48)
        assert {a["variant"] for a in before} == {"canary", "stable"}
        assert roll_back(base, "bad release") == 200
        seconds, old = until_every_worker_agrees(crowd)
        after = crowd.answers(160)
        wrong = [a for a in after if not rolled_back(a)]
        assert wrong == []
        pids = {a["pid"] for a in after}
        if "--max-requests" in server:  # workers started after the rollback answered too
            assert pids - {a["pid"] for a in before}
        else:  # every worker answered
            assert len(pids) == WORKERS
        events = history(base)
        assert kinds(events).count("rollback") == 1
        print(
            f"{server}: old state last seen at {seconds:.2f} s ({old} answers), {len(wrong)} "
            f"of {len(after)} after; {len(pids)} workers, {crowd.resent} requests resent"
        )
        if "--max-requests" not in server:
            assert crowd.resent == 0
    # A full restart on the same file: the rollback and its history hold.
    with started(server, env) as base, Visitors(base) as crowd:
        restarted = crowd.answers(48)
        assert [a for a in restarted if not rolled_back(a)] == []
        assert history(base) == events
        assert any("bad release" in str(e.get("reason")) for e in events)


class UnreportedRollback(Exception):
    """A rollback is in the history, but its callback or its webhook never came."""


# A gunicorn worker recycled by --max-requests exits right after its last
# request, maybe while its background evaluation is reporting a rollback it
# has just stored; no other process would report it, as it is not theirs.
# The exiting process waits for that work (gate_middleware.background); a
# callback that takes a while (GATE_CALLBACK_SECONDS) makes the race certain.


@pytest.mark.serial
@pytest.mark.parametrize(
    "server",
    [pytest.param(server) for server in SERVERS],
)
def test_a_faulty_canary_is_rolled_back_once_by_four_workers(
    url: str, server: str, tmp_path: Path, webhooks: WebhookReceiver
) -> None:
    """One rollback event, one callback and one webhook delivery, whichever
    of the workers saw the failures first."""
    callbacks = tmp_path / "callbacks.jsonl"
    env = store_env(
        url,
        f"sqlite-faulty-{uuid.uuid4().hex[:8]}",
        GATE_FAULTY="1",
        GATE_CALLBACK_LOG=str(callbacks),
        GATE_CALLBACK_SECONDS="1",  # a callback that pages someone: the exit waits for it
        GATE_WEBHOOK_URL=webhooks.url,
    )
    with started(server, env) as base, Visitors(base) as crowd:
        for _ in range(150):  # bounded: the judge needs a few hundred requests
            crowd.answers(20)
            if "rollback" in kinds(history(base)):
                break
        else:
            pytest.fail("the faulty canary was never rolled back")
        seconds, old = until_every_worker_agrees(crowd)
        after = crowd.answers(80)
        assert [a for a in after if not rolled_back(a)] == []
        # The callback takes a second; a second rollback, callback or delivery
        # would come within another.
        eventually(lambda: webhooks.deliveries("rollback") and callbacks.exists(), 3.0)
        time.sleep(1.0)
        rollbacks = [e for e in history(base) if e["kind"] == "rollback"]
        lines = callbacks.read_text().splitlines() if callbacks.exists() else []
        delivered = webhooks.deliveries("rollback")
        maker = int(str(rollbacks[0].get("process", "?:0")).rsplit(":", 1)[-1])
        figures = (
            f"{server}: {len(rollbacks)} rollback events, {len(lines)} callbacks, "
            f"{len(delivered)} webhook deliveries ({len(webhooks.posts)} posts); made by "
            f"{'a running' if running_process(maker) else 'an exited'} worker; old state last "
            f"seen at {seconds:.2f} s ({old} answers); {crowd.resent} requests resent"
        )
        print(figures)
        if "--max-requests" not in server:
            assert crowd.resent == 0
        assert len(rollbacks) == 1
        assert len(lines) <= 1 and len(delivered) <= 1 and len(webhooks.posts) <= 1
        if not (lines and delivered):
            raise UnreportedRollback(figures)


@pytest.mark.serial
def test_a_broken_checkout_is_rolled_back_by_its_metric_across_four_workers(url: str) -> None:
    """Each of four gunicorn workers sees a share of the sessions; the store
    merges their samples, and the guardrail rolls the release back once,
    naming the metric, though every response was quick and successful."""
    env = store_env(
        url, f"sqlite-metric-{uuid.uuid4().hex[:8]}", GATE_METRIC="1", GATE_BROKEN_CHECKOUT="1"
    )
    with started("gunicorn sync", env) as base, Visitors(base) as crowd:
        for _ in range(150):  # bounded: a few hundred sessions, and a sample read every 5 s
            answers = crowd.answers(20)
            assert all(answer["status"] == 200 for answer in answers)
            if "rollback" in kinds(history(base)):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the broken checkout was never rolled back")
        until_every_worker_agrees(crowd)
        rollbacks = [e for e in history(base) if e["kind"] == "rollback"]
    assert len(rollbacks) == 1
    assert "metric checkout_completed (sessions converting)" in rollbacks[0]["reason"]


# -- one gate object per process, two processes' worth in one test -------------------------


def test_two_gates_on_one_file_share_state_windows_and_evidence(url: str) -> None:
    config = PromotionConfig(
        environment=Environment.canary(50), name="checkout", auto_rollback_enabled=False
    )
    a, b = PromotionGate.from_url(url, config), PromotionGate.from_url(url, config)
    OPEN_GATES.extend([a, b])
    a.set_traffic_percent(25)
    assert eventually(lambda: b.environment == Environment.canary(25), 2.0)
    for i in range(30):
        a.record_request_outcome(f"a{i}", True, 0.01, variant="canary")
        b.record_request_outcome(f"b{i}", i % 10 != 0, 0.02, variant="canary")
    assert eventually(lambda: a.health_snapshot().canary_requests == 60, 3.0)
    assert eventually(lambda: b.health_snapshot().canary_requests == 60, 3.0)
    b.enable_feature("dark_mode")
    assert eventually(lambda: a.is_feature_enabled("dark_mode"), 2.0)
    # Several rollouts in one file, each its own.
    other = PromotionGate.from_url(url, PromotionConfig(name="search"))
    OPEN_GATES.append(other)
    assert other.environment == Environment.PRODUCTION
    assert other.get_history() == []


def test_the_file_stays_the_windows_size_however_long_the_rollout_runs(tmp_path: Path) -> None:
    """Rows grow with the window's slices, not with traffic or time."""
    now = [1_000_000.0]
    database = _Database(tmp_path / "gate.db")
    store = SqliteWindowStore(database, "long", 60.0, clock=lambda: now[0])

    def run(seconds: int) -> int:
        for _ in range(seconds):
            for i in range(20):
                store.record("canary", i % 7 != 0, True, 0.005 + i / 1000, 0.0, cluster=i)
                store.record("stable", True, True, 0.004 + i / 1000, 0.0, cluster=i)
            now[0] += 1.0
            store.flush()
        with database.locked() as db:
            return int(db.execute("SELECT COUNT(*) FROM gate_window").fetchone()[0])

    after_short, after_long = run(120), run(1200)  # 10x the time and the traffic
    assert after_long <= after_short * 1.1
    assert store.stats("canary", 0.0).requests <= 20 * 61  # the window: about 60 s of it
    assert store.evidence("canary").requests == 20 * 1320  # the step's evidence: all of it
    store.close()


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("sqlite://", "sqlite:///absolute/path.db"),
        ("sqlite:///:memory:", "not shared between processes"),
        ("sqlite://somehost/x.db", "a file on this host"),
        ("sqlite:///no/such/directory/gate.db", "existing directory"),
    ],
)
def test_a_bad_sqlite_url_is_a_config_error(bad: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PromotionGate.from_url(bad, PromotionConfig(name="checkout"))


def test_a_redis_option_is_refused_by_name(url: str) -> None:
    with pytest.raises(ConfigError, match="key_prefix"):
        PromotionGate.from_url(url, PromotionConfig(name="checkout"), key_prefix="app:")


def test_a_relative_path_is_the_working_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert database_path("sqlite:gate.db") == Path("gate.db")
    assert database_path(f"sqlite://{tmp_path}/gate.db") == tmp_path / "gate.db"


def test_a_locked_file_refuses_a_change_and_serves_on(url: str) -> None:
    """Another process holds the write lock past the busy timeout: the change
    is refused with PromotionError naming the store, routing goes on from the
    last known state, and the change goes through once the lock is gone."""
    gate = PromotionGate.from_url(url, PromotionConfig(name="locked"))
    OPEN_GATES.append(gate)
    gate.start_canary(20, ["new_checkout"])
    path = database_path(url)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        with pytest.raises(Exception, match="refused the change") as raised:
            gate.set_traffic_percent(40)
        assert type(raised.value).__name__ == "PromotionError"
        assert gate.route_request("a-session-id-0123456789").variant in ("canary", "stable")
        assert gate.environment == Environment.canary(20)
        assert gate.status().to_dict()["store"]["status"] == "unreachable"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    gate.set_traffic_percent(40)
    assert gate.environment == Environment.canary(40)
    assert gate.status().to_dict()["store"]["status"] == "ok"


def test_a_failure_older_than_the_last_success_is_not_the_trouble() -> None:
    """A write that waited out the busy timeout while another thread's write
    went through must not mark the file as failing after that success (the
    status read "unreachable" right after a change went through)."""
    trouble = _Trouble("rollout 'x' windows")
    started = time.monotonic()
    trouble.recovered()
    trouble.failed(sqlite3.OperationalError("database is locked"), started)
    assert trouble.problem == ""
    trouble.failed(sqlite3.OperationalError("database is locked"), time.monotonic())
    assert trouble.problem == "OperationalError: database is locked"
    trouble.recovered()
    trouble.failed(sqlite3.OperationalError("disk I/O error"))  # no start given: it counts
    assert trouble.problem == "OperationalError: disk I/O error"


def test_state_written_by_another_process_is_read_back_whole(url: str) -> None:
    first = PromotionGate.from_url(url, PromotionConfig(name="whole"))
    OPEN_GATES.append(first)
    first.start_canary(10, ["a", "b"])
    first.rollback("because", actor="alice")
    second = PromotionGate.from_url(url, PromotionConfig(name="whole"))
    OPEN_GATES.append(second)
    assert (second.state.version, second.state.transition) == (
        first.state.version,
        first.state.transition,
    )
    assert second.environment == Environment.PRODUCTION
    assert second.get_history() == first.get_history()
    start, rollback = second.get_history()
    assert isinstance(start, PromotionEvent) and start.action == "start_canary"
    assert isinstance(rollback, RollbackEvent) and rollback.actor == "alice"
    assert os.path.getsize(database_path(url)) > 0


def test_the_store_url_in_a_config_file_shares_the_rollout(tmp_path: Path) -> None:
    scenarios = tmp_path / "promotion.toml"
    scenarios.write_text(
        "[scenarios.checkout]\n"
        'name = "checkout"\n'
        'promotion_environment = "canary"\n'
        "promotion_traffic_percent = 10\n"
        "auto_rollback_enabled = true\n"
        "slo_threshold = 0.99\n"
        f'store = "sqlite://{tmp_path}/gate.db"\n'
    )
    config = PromotionConfig.from_toml(scenarios)
    assert "gate.db" not in repr(config)  # a URL may hold a password: not in the repr
    one, two = PromotionGate(config), PromotionGate(config)
    OPEN_GATES.extend([one, two])
    assert one.shared and two.shared
    one.rollback("from the config file's store")
    assert eventually(lambda: two.environment == Environment.PRODUCTION, 2.0)


def test_a_bad_store_in_a_config_is_refused_without_its_password(tmp_path: Path) -> None:
    # The config checks the URL's shape; the store registry, when the gate
    # opens it, whether a backend serves its scheme.
    with pytest.raises(ConfigError, match="store"):
        PromotionConfig(name="checkout", store="gate.db")
    config = PromotionConfig(name="checkout", store="mysql://root:pw-SECRET@db/gate")
    with pytest.raises(ConfigError, match="url") as raised:
        PromotionGate(config)
    assert "pw-SECRET" not in str(raised.value) and "sqlite" in str(raised.value)
    with pytest.raises(ConfigError, match="names the rollout"):
        PromotionGate(PromotionConfig(store=f"sqlite://{tmp_path}/gate.db"))


def test_a_process_with_another_config_leaves_one_event_in_the_trail(url: str) -> None:
    """Workers started with different configs for one rollout: the first
    config wins, and the audit trail says once that they disagree."""
    first = PromotionGate.from_url(
        url, PromotionConfig(name="configs", environment=Environment.canary(50))
    )
    OPEN_GATES.append(first)
    assert first.get_history() == []
    same = PromotionGate.from_url(
        url, PromotionConfig(name="configs", environment=Environment.canary(50))
    )
    OPEN_GATES.append(same)
    assert same.get_history() == []  # the same config: nothing to record
    others = [
        PromotionGate.from_url(
            url,
            PromotionConfig(
                name="configs", environment=Environment.canary(10), feature_flags=["other"]
            ),
        )
        for _ in range(2)
    ]
    OPEN_GATES.extend(others)
    assert all(gate.environment == Environment.canary(50) for gate in others)
    assert eventually(lambda: len(first.get_history()) == 1, 3.0)  # one, not two
    [event] = first.get_history()
    assert event.action == "config_difference"  # type: ignore[union-attr]
    assert "another environment, release_flags" in event.reason
