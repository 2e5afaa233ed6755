"""The SQLite store: one rollout across real worker processes on one host,
through a real file, and a decision that survives recycled workers and
restarts. Store-level behaviour is in tests/test_store_contract.py."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path

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
from gate_middleware.stores.sqlite import SqliteWindowStore, _Database, database_path

from .conftest import OPEN_GATES
from .servers import eventually, free_port, python, running

TOKEN = "redis-admin-token-0123456789"  # tests/shared_app.py's
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/gate.db"


def uvicorn_workers(port: int, workers: int) -> list[str]:
    return python(
        "-m", "uvicorn", "--app-dir", "tests", "shared_app:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--log-level", "warning",
    )  # fmt: skip


def gunicorn_workers(port: int, workers: int, *extra: str) -> list[str]:
    return python(
        "-m", "gunicorn", "-w", str(workers), "--chdir", "tests", "--bind", f"127.0.0.1:{port}",
        "--log-level", "warning", *extra, "shared_app:wsgi",
    )  # fmt: skip


def store_env(url: str, rollout: str, **env: str) -> dict[str, str]:
    return {"GATE_STORE_URL": url, "GATE_ROLLOUT": rollout, **env}


def fresh_answers(base: str, count: int) -> list[dict[str, object]]:
    """``count`` requests from new visitors, each on a new connection (so
    they spread over the workers)."""
    answers = []
    for _ in range(count):
        with httpx.Client(base_url=base, timeout=5.0) as fresh:
            response = fresh.get("/checkout")
            answers.append({**response.json(), "status": response.status_code})
    return answers


def history(base: str) -> list[dict[str, object]]:
    return list(httpx.get(base + "/gate/history", headers=AUTH, timeout=5.0).json()["events"])


# -- every worker, one decision ---------------------------------------------------------


@pytest.mark.serial
def test_an_admin_rollback_holds_in_every_uvicorn_worker_and_after_a_restart(url: str) -> None:
    rollout = f"sqlite-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = store_env(url, rollout)
    with running(uvicorn_workers(port, 4), port, env=env, ready_path="/stats") as base:
        before = fresh_answers(base, 80)
        assert {a["variant"] for a in before} == {"canary", "stable"}
        response = httpx.post(
            base + "/gate/rollback", json={"reason": "bad release"}, headers=AUTH, timeout=5.0
        )
        assert response.status_code == 200
        time.sleep(1.0)  # every worker follows within a second
        after = fresh_answers(base, 120)
        assert len({a["pid"] for a in after}) >= 2  # several workers answered
        wrong = [a for a in after if a["variant"] != "stable" or a["environment"] != "production"]
        assert wrong == []
        assert [e["kind"] for e in history(base)].count("rollback") == 1
    # A full restart on the same file: the rollback and its history hold.
    port = free_port()
    with running(uvicorn_workers(port, 2), port, env=env, ready_path="/stats") as base:
        restarted = fresh_answers(base, 40)
        assert {(a["variant"], a["environment"]) for a in restarted} == {("stable", "production")}
        events = history(base)
        assert [e["kind"] for e in events].count("rollback") == 1
        assert any("bad release" in str(e.get("reason")) for e in events)


@pytest.mark.serial
def test_a_faulty_canary_is_rolled_back_once_by_four_workers(url: str) -> None:
    rollout = f"sqlite-faulty-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = store_env(url, rollout, GATE_FAULTY="1")
    with running(uvicorn_workers(port, 4), port, env=env, ready_path="/stats") as base:
        rolled_back = False
        for _ in range(3000):  # bounded: the judge needs a few hundred requests
            with httpx.Client(base_url=base, timeout=5.0) as fresh:
                fresh.get("/checkout")
            if any(e["kind"] == "rollback" for e in history(base)):
                rolled_back = True
                break
        assert rolled_back, "the faulty canary was never rolled back"
        time.sleep(1.0)
        after = fresh_answers(base, 80)
        assert [a for a in after if a["variant"] != "stable"] == []
        assert len({a["pid"] for a in after}) >= 2
        time.sleep(1.0)  # any worker that would roll back again has had time to
        assert [e["kind"] for e in history(base)].count("rollback") == 1


@pytest.mark.serial
def test_recycled_gunicorn_workers_keep_the_rolled_back_state(url: str) -> None:
    rollout = f"sqlite-recycled-{uuid.uuid4().hex[:8]}"
    port = free_port()
    args = gunicorn_workers(port, 2, "--max-requests", "30")
    with running(args, port, env=store_env(url, rollout), ready_path="/gate/status") as base:
        response = httpx.post(
            base + "/gate/rollback", json={"reason": "recycled"}, headers=AUTH, timeout=5.0
        )
        assert response.status_code == 200
        time.sleep(1.0)
        # 300 requests over two workers that are replaced every 30: about ten
        # new workers, each starting from the file, none from its config.
        after = fresh_answers(base, 300)
        assert len({a["pid"] for a in after}) >= 4
        wrong = [a for a in after if a["variant"] != "stable" or a["environment"] != "production"]
        assert wrong == []
        assert [e["kind"] for e in history(base)].count("rollback") == 1


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
    with pytest.raises(ConfigError, match="store") as raised:
        PromotionConfig(name="checkout", store="mysql://root:pw-SECRET@db/gate")
    assert "pw-SECRET" not in str(raised.value) and "sqlite" in str(raised.value)
    with pytest.raises(ConfigError, match="names the rollout"):
        PromotionGate(PromotionConfig(store=f"sqlite://{tmp_path}/gate.db"))
