"""The shared gate on a real redis-server: one rollout across processes."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from gate_middleware import (
    Environment,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    RollbackEvent,
)
from tests.servers import RedisServer, eventually, free_port, python, running
from tests.support import OPEN_GATES

TOKEN = "redis-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def shared(url: str, rollout: str, **config: object) -> PromotionGate:
    settings = {
        "environment": Environment.canary(50),
        "feature_flags": ["new_api"],
        "name": rollout,
        "min_requests": 20,
        **config,
    }
    gate = PromotionGate.from_url(url, PromotionConfig(**settings))  # type: ignore[arg-type]
    OPEN_GATES.append(gate)
    return gate


def test_two_gates_share_state_and_windows(redis_server: RedisServer) -> None:
    rollout = f"shared-{uuid.uuid4().hex[:8]}"
    a, b = shared(redis_server.url, rollout), shared(redis_server.url, rollout)
    a.set_traffic_percent(25)
    assert eventually(lambda: b.environment == Environment.canary(25), 1.0)
    sessions = [f"s{i}" for i in range(400)]
    assert [a.route_request(s).variant for s in sessions] == [
        b.route_request(s).variant for s in sessions
    ]
    for i in range(30):
        a.record_request_outcome(f"a{i}", True, 0.01, variant="canary")
        b.record_request_outcome(f"b{i}", True, 0.01, variant="canary")
    assert eventually(lambda: b.health_snapshot().canary_requests == 60, 2.0)
    assert eventually(lambda: a.health_snapshot().canary_requests == 60, 2.0)
    b.enable_feature("dark_mode")
    assert eventually(lambda: a.is_feature_enabled("dark_mode"), 1.0)


def test_the_step_evidence_is_merged_across_processes(redis_server: RedisServer) -> None:
    """The judge of every process reads the evidence of all of them, and the
    sketch and session groups survive the trip through Redis."""
    rollout = f"evidence-{uuid.uuid4().hex[:8]}"
    a, b = shared(redis_server.url, rollout), shared(redis_server.url, rollout)
    for i in range(150):
        a.record_outcome("canary", i >= 3, 0.01 * (1 + i % 7), -1, i)
        b.record_outcome("canary", i >= 2, 0.02, -1, i + 1)
        b.record_outcome("stable", True, 0.02, -1, i)

    def merged(gate: PromotionGate) -> bool:
        evidence = gate.health_snapshot().evidence
        return evidence["canary_requests"] == 300 and evidence["baseline_requests"] == 150

    assert eventually(lambda: merged(a) and merged(b), 2.0)
    local = a._windows.evidence("canary")
    assert local.failures == 5 and sum(local.cluster_requests) == 300
    assert sum(local.latency) == 300
    a.set_traffic_percent(60)  # a new step: fresh evidence everywhere
    assert eventually(lambda: b.health_snapshot().evidence["canary_requests"] == 0, 2.0)
    a.close()
    b.close()


def test_two_gates_detecting_the_same_failure_roll_back_once(redis_server: RedisServer) -> None:
    rollout = f"once-{uuid.uuid4().hex[:8]}"
    gates = [shared(redis_server.url, rollout) for _ in range(4)]
    fired: list[RollbackEvent] = []
    for gate in gates:
        gate.on_rollback(fired.append)
    for i in range(100):
        gates[i % 4].record_request_outcome(f"s{i}", True, 0.01, variant="stable")
        gates[i % 4].record_request_outcome(f"c{i}", False, 0.01, variant="canary")
    assert eventually(lambda: all(g.health_snapshot().canary_requests == 100 for g in gates), 2.0)
    barrier = threading.Barrier(len(gates))

    def evaluate(gate: PromotionGate) -> None:
        barrier.wait()
        gate.monitor_canary_health()

    threads = [threading.Thread(target=evaluate, args=(g,)) for g in gates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fired) == 1
    assert eventually(lambda: all(g.environment == Environment.PRODUCTION for g in gates), 1.0)
    assert all(len(g.get_rollback_history()) == 1 for g in gates)


def test_a_gate_that_never_reached_redis_starts_from_its_config() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    gate = shared(closed, "offline")
    assert gate.environment == Environment.canary(50)
    assert gate.route_request("someone").variant in ("canary", "stable")
    gate.record_request_outcome("someone", True, 0.01)  # buffered; never raises
    with pytest.raises(PromotionError, match="unreachable"):
        gate.set_traffic_percent(10)
    assert gate.environment == Environment.canary(50)


def worker_app(
    redis_server: RedisServer, port: int, workers: int, rollout: str, **env: str
) -> tuple[list[str], dict[str, str]]:
    args = python(
        "-m",
        "uvicorn",
        "--app-dir",
        "tests",
        "shared_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    )
    return args, {"GATE_STORE_URL": redis_server.url, "GATE_ROLLOUT": rollout, **env}


@pytest.mark.serial
def test_four_workers_roll_back_once_and_follow_promotions(redis_server: RedisServer) -> None:
    port = free_port()
    args, env = worker_app(
        redis_server, port, 4, f"workers-{uuid.uuid4().hex[:8]}", GATE_FAULTY="1"
    )
    with (
        running(args, port, env=env, ready_path="/stats") as base,
        httpx.Client(base_url=base, timeout=5.0) as client,
    ):
        deadline = time.monotonic() + 30
        rollback_seen_at = None
        while time.monotonic() < deadline:
            client.cookies.clear()
            client.get("/checkout")
            events = client.get("/gate/history", headers=AUTH).json()["events"]
            if any(e["kind"] == "rollback" for e in events):
                rollback_seen_at = time.monotonic()
                break
        assert rollback_seen_at is not None, "the faulty canary was never rolled back"
        time.sleep(1.0)  # every process follows within a second
        pids = set()
        for _ in range(120):
            with httpx.Client(base_url=base, timeout=5.0) as fresh:
                body = fresh.get("/checkout").json()
            pids.add(body["pid"])
            assert body["variant"] == "stable" and body["environment"] == "production"
        assert len(pids) >= 2
        events = client.get("/gate/history", headers=AUTH).json()["events"]
        assert [e["kind"] for e in events].count("rollback") == 1

        # A release started through one process's admin API is seen by all.
        assert (
            client.post(
                "/gate/canary", json={"percent": 30, "flags": ["search_v2"]}, headers=AUTH
            ).status_code
            == 200
        )
        time.sleep(1.0)
        seen = set()
        for _ in range(60):
            with httpx.Client(base_url=base, timeout=5.0) as fresh:
                stats = fresh.get("/stats").json()
            seen.add((stats["pid"], stats["environment"]))
        assert {environment for _, environment in seen} == {"canary"}


def test_redis_stopped_mid_traffic_then_back(redis_server: RedisServer) -> None:
    port = free_port()
    args, env = worker_app(redis_server, port, 2, f"outage-{uuid.uuid4().hex[:8]}", GATE_WINDOW="2")
    failures: list[int] = []
    stop = threading.Event()

    def traffic(base: str) -> None:
        while not stop.is_set():  # a new connection each time: both workers get traffic
            response = httpx.get(base + "/checkout", timeout=5.0)
            if response.status_code != 200:
                failures.append(response.status_code)

    with (
        running(args, port, env=env, ready_path="/stats") as base,
        httpx.Client(base_url=base, timeout=5.0) as client,
    ):
        before = client.get("/gate/status", headers=AUTH).json()["environment"]
        sender = threading.Thread(target=traffic, args=(base,))
        sender.start()
        try:
            time.sleep(1.0)
            redis_server.stop()
            time.sleep(3.5)  # longer than the 2 s window: buffered slices leave it
            during = [httpx.get(base + "/stats", timeout=5.0).json() for _ in range(20)]
            assert all(s["environment"] == before["name"] for s in during)  # the last state
            assert any(s["dropped"] > 0 for s in during)  # the loss counter says so
            redis_server.start()  # empty: the processes seed it and resynchronise
            time.sleep(1.5)
        finally:
            stop.set()
            sender.join(timeout=10)
        assert failures == []
        assert client.post("/gate/traffic", json={"percent": 10}, headers=AUTH).status_code == 200
        time.sleep(1.0)
        environments = {
            httpx.get(base + "/stats", timeout=5.0).json()["environment"] for _ in range(20)
        }
        assert environments == {"canary"}
        assert client.get("/gate/status", headers=AUTH).json()["traffic_percent"] == 10
