"""The shared gate under faults: each numbered case of issue 11, on a real redis-server.

Restarts, lost and late replies, garbage in the keys, a slow Redis under
an ASGI worker, two apps on one Redis, and clocks that disagree. The
faults come from ``tests/faults.py`` (a TCP proxy) and ``redis-cli``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from gate_middleware import (
    ConfigError,
    Environment,
    OutcomeUnknownError,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    RollbackEvent,
)
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.integrations.starlette import GateMiddleware
from gate_middleware.operate.admin import AdminAPI, AdminASGIApp
from gate_middleware.stores.redis import RedisWindowStore, connect
from tests.faults import RedisProxy
from tests.servers import RedisClusterServers, RedisSentinelSet, RedisServer, eventually, serving
from tests.support import OPEN_GATES, metric_points

TOKEN = "redis-admin-token-0123456789"
AUTH = f"Bearer {TOKEN}"


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    faulty = RedisProxy(redis_server.port)
    try:
        yield faulty
    finally:
        faulty.close()


def shared(url: str, rollout: str, **settings: object) -> PromotionGate:
    options = {
        k: settings.pop(k) for k in ("meter_provider", "transition_timeout") if k in settings
    }
    config = {
        "environment": Environment.canary(50),
        "feature_flags": ["new_api"],
        "name": rollout,
        "min_requests": 20,
        **settings,
    }
    gate = PromotionGate.from_url(url, PromotionConfig(**config), **options)  # type: ignore[arg-type]
    OPEN_GATES.append(gate)
    return gate


def pause(gate: PromotionGate) -> None:
    """Stop a gate's state follower: a process paused (SIGSTOP, a GC pause, a slow host)."""
    gate._store._follower.close()  # type: ignore[attr-defined]
    time.sleep(0.5)  # its last step ends


def resume(gate: PromotionGate) -> None:
    follower = gate._store._follower  # type: ignore[attr-defined]
    follower._closed = False  # a closed thread never starts again: reopen it
    follower._pid = -1
    follower.ensure()


def rollout_name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


# -- 1. a stale process re-seeds an empty Redis ------------------------------------------


def test_a_stale_process_reconnecting_first_cannot_undo_a_rollback(
    redis_server: RedisServer,
) -> None:
    rollout = rollout_name("stale")
    stale, current = shared(redis_server.url, rollout), shared(redis_server.url, rollout)
    pause(stale)
    current.rollback("checkout totals are wrong")
    assert stale.environment == Environment.canary(50)  # it never saw the rollback
    pause(current)
    redis_server.stop()
    redis_server.start()  # empty
    resume(stale)  # the stale process reconnects first and seeds its old state
    assert eventually(lambda: redis_server.cli("KEYS", "*:state") != "")  # seeded
    resume(current)
    assert eventually(
        lambda: stale.environment == current.environment == Environment.PRODUCTION, 1.0
    )
    assert [stale.route_request(f"s{i}").variant for i in range(200)] == ["stable"] * 200
    history = stale.get_history()
    assert [e.kind for e in history].count("rollback") == 1
    assert history[-1].kind == "promotion" and history[-1].action == "restore"  # type: ignore[union-attr]
    assert stale.state.transition == current.state.transition


def test_two_configs_for_one_rollout_converge_on_the_first_and_log_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = rollout_name("configs")
    first = shared(redis_server.url, rollout)
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        second = shared(
            redis_server.url, rollout, environment=Environment.canary(10), feature_flags=["other"]
        )
        time.sleep(0.6)  # a few follower steps: still logged once
    assert second.environment == first.environment == Environment.canary(50)
    assert second.is_feature_enabled("new_api") and not second.is_feature_enabled("other")
    differences = [r.getMessage() for r in caplog.records if "config differs" in r.getMessage()]
    assert len(differences) == 1
    assert "environment, release_flags" in differences[0]
    # ... and the audit trail says so once, for whoever reads the history.
    assert eventually(lambda: len(first.get_history()) == 1, 2.0)
    [event] = first.get_history()
    assert event.action == "config_difference" and event.actor == "gate"  # type: ignore[union-attr]
    assert "another environment, release_flags" in event.reason
    assert first.environment == Environment.canary(50)  # the shared state stays as it was


# -- 2. the compare-and-set loop never ends ------------------------------------------


def test_a_version_field_that_disagrees_with_the_json_does_not_spin(
    redis_server: RedisServer,
) -> None:
    rollout = rollout_name("disagree")
    gate = shared(redis_server.url, rollout)
    key = f"gate_middleware:{{{rollout}}}:state"
    # The older layout kept a second copy of the version inside the JSON.
    state = redis_server.cli("HGET", key, "state")
    redis_server.cli("HSET", key, "state", state[:-1] + ',"version":5}', "version", "3")
    done = threading.Event()

    def change() -> None:
        gate.set_traffic_percent(20)
        done.set()

    threading.Thread(target=change, daemon=True).start()
    assert done.wait(2.0), "set_traffic_percent did not finish"
    assert gate.environment == Environment.canary(20)
    assert gate.state.version == 4


# A writer that must outpace every compare-and-set: alone on the machine, so a
# starved writer (both cores busy with other tests) does not let one through.
@pytest.mark.serial
def test_a_state_that_keeps_changing_gives_up_with_the_cause(redis_server: RedisServer) -> None:
    rollout = rollout_name("busy")
    gate = shared(redis_server.url, rollout, transition_timeout=0.5)
    key = f"gate_middleware:{{{rollout}}}:state"
    # Another writer, in its own process, moves the identity thousands of times a second.
    writer = subprocess.Popen(
        [
            "redis-benchmark",
            "-p",
            str(redis_server.port),
            "-c",
            "2",
            "-n",
            "2000000",
            "-r",
            "1000000",
        ]
        + ["HSET", key, "id", "foreign-__rand_int__"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert eventually(lambda: "foreign" in (redis_server.cli("HGET", key, "id") or ""), 5.0)
        calls_before = _evalsha_calls(redis_server)
        with pytest.raises(PromotionError, match="another process keeps changing it"):
            gate.set_traffic_percent(20)
        # It tried more than once, then gave up after a bounded number of tries
        # with back-off between them: no busy loop. (Counted, not timed.)
        assert 2 <= _evalsha_calls(redis_server) - calls_before < 100
    finally:
        writer.kill()
        writer.wait()


def _evalsha_calls(server: RedisServer) -> int:
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# -- 3. a lost reply loses the event -------------------------------------------------


@pytest.mark.parametrize("fault", ["cut", "late"])
def test_a_rollback_whose_reply_was_lost_is_reported_once(
    redis_server: RedisServer, proxy: RedisProxy, fault: str
) -> None:
    rollout = rollout_name("lost")
    made_here = shared(proxy.url, rollout)
    elsewhere = shared(redis_server.url, rollout)
    fired: list[RollbackEvent] = []
    fired_elsewhere: list[RollbackEvent] = []
    made_here.on_rollback(fired.append)
    elsewhere.on_rollback(fired_elsewhere.append)
    elsewhere.set_traffic_percent(40)  # Redis has the script now: the fault hits its run
    assert eventually(lambda: made_here.environment == Environment.canary(40))
    if fault == "cut":
        proxy.cut_reply_to(b"EVALSHA")  # the script runs; its reply never arrives
    else:
        proxy.delay_reply_to(b"EVALSHA", 1.0)  # longer than the client's 0.5 s timeout
    event = made_here.rollback("checkout totals are wrong")
    assert proxy.faults_applied == 1
    assert event.reason == "checkout totals are wrong"
    assert len(fired) == 1
    assert made_here.environment == Environment.PRODUCTION
    assert eventually(lambda: elsewhere.environment == Environment.PRODUCTION)
    with pytest.raises(PromotionError, match="no release in progress"):
        elsewhere.rollback("again")  # the operator's retry finds it done
    assert fired_elsewhere == []
    assert [e.kind for e in elsewhere.get_history()].count("rollback") == 1


# -- 4. garbage in the keys ----------------------------------------------------------


def test_a_corrupt_state_is_reported_and_refused_but_requests_are_served(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = rollout_name("corrupt")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gate = shared(redis_server.url, rollout, meter_provider=provider)
    api = AdminAPI(gate, token=TOKEN)
    key = f"gate_middleware:{{{rollout}}}:state"
    with caplog.at_level(logging.ERROR, logger="gate_middleware"):
        redis_server.cli("HSET", key, "state", "this is not JSON")
        assert eventually(lambda: gate.status().to_dict()["store"]["status"] == "corrupt", 1.5)
        late = shared(redis_server.url, rollout)  # starting on a corrupt key does not raise
        assert late.status().store["status"] == "corrupt"
        time.sleep(0.6)
    assert gate.route_request("someone").variant in ("canary", "stable")
    gate.record_request_outcome("someone", True, 0.01)
    status = api.handle("GET", "/status", AUTH, None)
    assert status.status == 200
    traffic = api.handle("POST", "/traffic", AUTH, b'{"percent": 10}', "application/json")
    assert traffic.status == 409 and b"corrupt" in traffic.body
    assert gate.environment == Environment.canary(50)
    logged = [
        r for r in caplog.records if "is corrupt" in r.getMessage() and "state" in r.getMessage()
    ]
    assert len(logged) == 2  # once per process
    corrupt = metric_points(reader)["gate_middleware.store.corrupt"]
    assert sum(point.value for point in corrupt) >= 1  # type: ignore[attr-defined]
    # Deleting the key lets the processes write back the newest state they hold.
    redis_server.cli("DEL", key)
    assert eventually(lambda: gate.status().store["status"] == "ok")
    assert (
        api.handle("POST", "/traffic", AUTH, b'{"percent": 10}', "application/json").status == 200
    )
    assert eventually(lambda: late.environment == Environment.canary(10))
    provider.shutdown()


def test_a_corrupt_epoch_or_bucket_field_loses_no_outcome(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = rollout_name("garbage")
    a, b = shared(redis_server.url, rollout), shared(redis_server.url, rollout)
    with caplog.at_level(logging.ERROR, logger="gate_middleware"):
        redis_server.cli("SET", f"gate_middleware:{{{rollout}}}:epoch", "not-a-number")
        for i in range(10):
            a.record_request_outcome(f"a{i}", True, 0.01, variant="canary")
            b.record_request_outcome(f"b{i}", True, 0.01, variant="canary")
        assert eventually(lambda: a.health_snapshot().canary_requests == 20, 2.0)
        assert eventually(lambda: b.health_snapshot().canary_requests == 20, 2.0)
        assert a.status().store["status"] == "corrupt"
        # A bucket index out of range in the slice being written.
        for key in redis_server.cli("KEYS", f"gate_middleware:{{{rollout}}}:window:*").split():
            redis_server.cli("HSET", key, "b999999", "1", "r", "x")
        for i in range(10):
            a.record_request_outcome(f"c{i}", True, 0.01, variant="canary")
        assert eventually(lambda: a.health_snapshot().canary_requests >= 10, 2.0)
        time.sleep(0.6)
        assert a.route_request("someone").variant in ("canary", "stable")
    assert a._windows.dropped_outcomes == 0  # type: ignore[attr-defined]
    epoch_logs = [r for r in caplog.records if "epoch" in r.getMessage()]
    assert len(epoch_logs) == 2  # once per process
    assert not [r for r in caplog.records if r.exc_info]  # no tracebacks
    a.rollback("clears the windows, and repairs the epoch")
    assert eventually(lambda: "epoch" not in str(a.status().store["problems"]), 2.0)


# -- 5. Redis I/O on the event loop ------------------------------------------------------


@pytest.mark.serial
def test_admin_writes_and_automatic_rollbacks_do_not_stall_the_event_loop(
    redis_server: RedisServer,
) -> None:
    rollout = rollout_name("loop")
    gate = shared(redis_server.url, rollout, evaluation_interval_seconds=0.05, min_requests=20)

    async def plain(request: Request) -> JSONResponse:
        decision = request.state.gate
        return JSONResponse({}, status_code=500 if decision.is_canary else 200)

    app = Starlette(
        routes=[Route("/plain", plain), Mount("/gate", AdminASGIApp(gate, token=TOKEN))]
    )
    app.add_middleware(GateMiddleware, gate=gate, exclude_paths=["/gate"])
    # Requests answered while Redis sleeps under an admin write: a stalled event
    # loop answers none of them until Redis wakes. (Counted, not timed.)
    awake = threading.Event()
    answered_asleep: list[bool] = []
    with serving(app) as base, httpx.Client(base_url=base, timeout=5.0) as client:
        client.get("/plain")

        async def traffic(seconds: float) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=5.0) as browser:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and not awake.is_set():
                    browser.cookies.clear()
                    await browser.get("/plain")
                    answered_asleep.append(not awake.is_set())

        def admin_post() -> None:
            httpx.post(
                base + "/gate/traffic",
                json={"percent": 60},
                headers={"Authorization": AUTH},
                timeout=10.0,
            )

        def sleep_redis() -> None:
            redis_server.cli("DEBUG", "SLEEP", "1.5")
            awake.set()

        sleeper = threading.Thread(target=sleep_redis)
        sleeper.start()
        time.sleep(0.1)
        poster = threading.Thread(target=admin_post)
        poster.start()  # an admin write waits on the sleeping Redis...
        asyncio.run(traffic(1.2))  # ...and failures trigger an automatic rollback meanwhile
        sleeper.join()
        poster.join()
    assert answered_asleep.count(True) >= 10, answered_asleep
    assert eventually(lambda: gate.environment == Environment.PRODUCTION, 10.0)


# -- 6. two apps on one Redis --------------------------------------------------------------


def test_from_url_needs_a_named_rollout_and_its_keys_share_one_slot(
    redis_server: RedisServer,
) -> None:
    with pytest.raises(ConfigError, match="names the rollout"):
        PromotionGate.from_url(redis_server.url, PromotionConfig())
    with pytest.raises(ConfigError, match="names the rollout"):
        PromotionGate.from_url(redis_server.url)
    orders = shared(redis_server.url, "orders")
    search = PromotionGate.from_url(redis_server.url, PromotionConfig(), key_prefix="search-app:")
    OPEN_GATES.append(search)
    orders.rollback("orders only")
    orders.record_request_outcome("x", True, 0.01)
    time.sleep(0.5)
    assert search.environment == Environment.PRODUCTION  # its own, untouched
    assert search.get_history() == []
    keys = redis_server.cli("KEYS", "*").split()
    assert keys and all("{orders}" in k or "{default}" in k for k in keys)
    assert all(k.startswith("search-app:") for k in keys if "{default}" in k)


# -- 7. clocks that disagree ---------------------------------------------------------------


def test_processes_whose_clocks_are_off_neither_lose_nor_double_outcomes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(redis_server.url)
    rollout = rollout_name("skew")
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        stores = [
            # Clocks 12 s apart around a 6 s window: uncorrected, each would see
            # the others' slices as expired or not yet begun; the window is
            # long enough that a loaded machine's pauses expire nothing.
            RedisWindowStore(client, rollout, 6.0, clock=lambda off=off: time.time() + off)
            for off in (6.0, 0.0, -6.0)
        ]
    for store in stores:
        for _ in range(25):
            store.record("canary", True, True, 0.01, 0.0)
    for store in stores:
        store.flush()
    for store in stores:
        store.flush()
        assert store.stats("canary", 0.0).requests == 75
    skew = [r.getMessage() for r in caplog.records if "off Redis's" in r.getMessage()]
    assert len(skew) == 2  # the two processes beyond the bound, once each
    for store in stores:
        store.close()


def test_a_process_whose_clock_is_fast_cannot_shorten_a_step(redis_server: RedisServer) -> None:
    """The bake is read on Redis's clock: a replica 60 s fast sees a 30 s
    step as just begun, with healthy evidence enough to move on."""
    plan = RolloutPlan(steps=(1, 5), bake_seconds=30, staging_bake_seconds=30)
    config = PromotionConfig(name=rollout_name("bake"), min_requests=100, plan=plan)
    honest = PromotionGate.from_url(redis_server.url, config, plan_timer=False)
    fast = PromotionGate.from_url(
        redis_server.url, config, plan_timer=False, wall_clock=lambda: time.time() + 60
    )
    OPEN_GATES.extend([honest, fast])
    honest.start_canary(feature_flags=["new_checkout"])
    eventually(lambda: fast.environment == Environment.canary(1))
    for variant in ("canary", "stable"):
        for i in range(200):
            fast.record_request_outcome(f"{variant}-{i}", i % 50 != 0, 0.05, variant=variant)
    fast._windows.flush()
    fast.tick()
    assert fast.environment == Environment.canary(1)
    assert honest.environment == Environment.canary(1)
    status = fast.plan_status()
    assert status is not None and status["eta"] is not None
    assert 80 < status["eta"] - time.time() <= 91  # three 30 s bakes left, on Redis's clock
    fast.rollback("the fast replica's own change")
    event = fast.get_history()[-1]
    assert abs(event.timestamp.timestamp() - time.time()) < 5  # stamped on Redis's clock


# -- real topologies ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.cleanup()


def test_two_gates_share_one_rollout_through_a_redis_cluster(
    cluster: RedisClusterServers,
) -> None:
    rollout = rollout_name("cluster")
    first, second = cluster.nodes[0], cluster.nodes[1]
    a = shared(f"redis+cluster://127.0.0.1:{first.port}", rollout)
    b = shared(f"redis+cluster://127.0.0.1:{second.port}", rollout)
    a.set_traffic_percent(25)
    assert eventually(lambda: b.environment == Environment.canary(25))
    for i in range(30):
        a.record_request_outcome(f"a{i}", True, 0.01, variant="stable")
        b.record_request_outcome(f"b{i}", False, 0.01, variant="canary")
    assert eventually(lambda: a.health_snapshot().canary_requests == 30, 2.0)
    assert eventually(lambda: b.health_snapshot().production_requests == 30, 2.0)
    fired: list[RollbackEvent] = []
    a.on_rollback(fired.append)
    b.on_rollback(fired.append)
    barrier = threading.Barrier(2)

    def evaluate(gate: PromotionGate) -> None:
        barrier.wait()
        gate.monitor_canary_health()

    threads = [threading.Thread(target=evaluate, args=(g,)) for g in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fired) == 1
    assert eventually(lambda: a.environment == b.environment == Environment.PRODUCTION)
    keys = [k for n in cluster.nodes for k in n.cli("KEYS", f"*{{{rollout}}}*").split()]
    assert len(keys) >= 3
    assert len({first.cli("CLUSTER", "KEYSLOT", k) for k in keys}) == 1  # one slot
    assert a.status().store["status"] == b.status().store["status"] == "ok"
    a.close()
    b.close()


@pytest.fixture
def sentinels() -> Iterator[RedisSentinelSet]:
    servers = RedisSentinelSet()
    try:
        servers.start()
        yield servers
    finally:
        servers.cleanup()


def test_a_sentinel_failover_mid_traffic_loses_no_acknowledged_transition(
    sentinels: RedisSentinelSet,
) -> None:
    rollout = rollout_name("failover")
    a, b = shared(sentinels.url, rollout), shared(sentinels.url, rollout)
    failed: list[BaseException] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        n = 0
        while not stop.is_set():
            n += 1
            for gate in (a, b):
                try:
                    variant = gate.route_request(f"s{n}").variant
                    gate.record_request_outcome(f"s{n}", True, 0.001, variant=variant)
                    served += 1
                except Exception as exc:  # a failed request
                    failed.append(exc)
            time.sleep(0.001)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        a.set_traffic_percent(30)  # acknowledged: WAIT saw a replica take it
        assert "cmdstat_wait:calls=1" in sentinels.primary.cli("INFO", "commandstats")
        pause(a)
        pause(b)  # nobody may write it back: the new primary must hold it by itself
        sentinels.primary.kill()
        with pytest.raises(PromotionError, match="unreachable"):
            b.set_traffic_percent(40)  # no primary: refused, clearly
        assert eventually(lambda: sentinels.primary_port() == sentinels.replica.port, 10.0)
        key = f"gate_middleware:{{{rollout}}}:state"
        assert sentinels.replica.cli("HGET", key, "version") == str(a.state.version)
        resume(a)
        resume(b)
        assert eventually(lambda: _changes_accepted(b), 5.0)  # the new primary, followed
        assert eventually(lambda: a.environment == Environment.canary(40), 1.0)
    finally:
        stop.set()
        sender.join()
    assert failed == []
    assert served > 100
    assert [e.kind for e in a.get_history()] == ["promotion", "promotion"]


def _changes_accepted(gate: PromotionGate) -> bool:
    try:
        gate.set_traffic_percent(40)
    except PromotionError:
        return False
    return True


def test_a_change_whose_outcome_stayed_unknown_is_reported_once_it_turns_up(
    redis_server: RedisServer, proxy: RedisProxy
) -> None:
    rollout = rollout_name("unknown")
    made_here = shared(proxy.url, rollout, transition_timeout=0.5)
    elsewhere = shared(redis_server.url, rollout)
    fired: list[RollbackEvent] = []
    fired_elsewhere: list[RollbackEvent] = []
    made_here.on_rollback(fired.append)
    elsewhere.on_rollback(fired_elsewhere.append)
    elsewhere.set_traffic_percent(40)  # Redis has the script now: the fault hits its run
    assert eventually(lambda: made_here.environment == Environment.canary(40))
    proxy.cut_reply_to(b"EVALSHA", refuse_seconds=1.0)  # then Redis is out of reach for 1 s
    with pytest.raises(OutcomeUnknownError, match="unknown"):
        made_here.rollback("checkout totals are wrong")
    assert eventually(lambda: len(fired) == 1, 3.0)  # reported once it is seen applied
    assert made_here.environment == Environment.PRODUCTION
    time.sleep(0.5)
    assert len(fired) == 1 and fired_elsewhere == []
    assert [e.kind for e in elsewhere.get_history()].count("rollback") == 1
