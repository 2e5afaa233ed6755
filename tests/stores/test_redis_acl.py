"""The shared gate under a Redis ACL, on a real redis-server.

Each test makes a user (``ACL SETUSER``) that lacks one command the stores
use, and checks that the gate says so: a ``forbidden`` store status and a
``StorePermissionError`` that name the command and the rule to add, never
"corrupt" and never "unreachable"; and that a window store that cannot
deliver outcomes never lets the verdict read HEALTHY.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import (
    Environment,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    StorePermissionError,
)
from gate_middleware.judge.statistics import HEALTHY
from gate_middleware.operate.admin import AdminAPI
from gate_middleware.stores.redis import ACL_COMMANDS
from tests.servers import RedisServer, eventually
from tests.support import OPEN_GATES, metric_points

TOKEN = "redis-admin-token-0123456789"
AUTH = f"Bearer {TOKEN}"
PASSWORD = "pw-acl-SECRET"

#: The ACL a gate's user needs (keys and channels under the default prefix),
#: as the README lists it.
DOCUMENTED_ACL = ("~gate_middleware:*", "&gate_middleware:*", *ACL_COMMANDS.split())


def user_url(server: RedisServer, name: str, *rules: str) -> str:
    """The URL of a new user ``name`` on ``server`` with every command,
    key and channel, less ``rules`` (``-time``...)."""
    server.cli("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", "~*", "&*", "+@all", *rules)
    return f"redis://{name}:{PASSWORD}@127.0.0.1:{server.port}/0"


def shared(
    url: str, rollout: str, meter_provider: MeterProvider | None = None, **settings: object
) -> PromotionGate:
    config = {
        "environment": Environment.canary(50),
        "feature_flags": ["new_api"],
        "name": rollout,
        "min_requests": 20,
        **settings,
    }
    gate = PromotionGate.from_url(
        url,
        PromotionConfig(**config),  # type: ignore[arg-type]
        meter_provider=meter_provider,
    )
    OPEN_GATES.append(gate)
    return gate


def rollout_name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def store(gate: PromotionGate) -> dict[str, object]:
    return dict(gate.status().to_dict()["store"])


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_user_without_evalsha_is_told_to_grant_it_not_that_the_state_is_corrupt(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = rollout_name("noeval")
    url = user_url(redis_server, "noeval", "-evalsha")
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        gate = shared(url, rollout)
        api = AdminAPI(gate, token=TOKEN)
        with pytest.raises(StorePermissionError) as raised:
            gate.set_traffic_percent(10)
        assert isinstance(raised.value, PromotionError)
        message = str(raised.value)
        assert "EVALSHA" in message and "+evalsha" in message and "noeval" in message
        assert "nothing changed" in message and "corrupt" not in message
        assert gate.environment == Environment.canary(50)
        status = api.handle("GET", "/status", AUTH, None)
        assert (
            status.status == 200 and b'"forbidden"' in status.body and b"corrupt" not in status.body
        )
        assert store(gate)["status"] == "forbidden"
        assert "+evalsha" in str(store(gate)["problems"])
        refused = api.handle("POST", "/traffic", AUTH, b'{"percent": 10}', "application/json")
        assert refused.status == 409 and b"+evalsha" in refused.body
        time.sleep(0.6)  # the follower tries the seed again: still one line
        # Granted: the follower seeds the state, and a change goes through.
        redis_server.cli("ACL", "SETUSER", "noeval", "+evalsha")
        assert eventually(lambda: store(gate)["status"] == "ok", 2.0)
        assert gate.set_traffic_percent(10) == Environment.canary(10)
    logged = messages(caplog)
    assert not [m for m in logged if "corrupt" in m]
    assert len([m for m in logged if "refuses EVALSHA" in m]) == 1
    assert not [m for m in logged if PASSWORD in m]


def test_a_user_without_publish_neither_flaps_nor_loses_a_change(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = rollout_name("nopub")
    url = user_url(redis_server, "nopub", "-publish")
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        a, b = shared(url, rollout), shared(url, rollout)
        # b never wrote: its follower asks at its first step.
        assert eventually(lambda: store(a)["status"] == store(b)["status"] == "forbidden", 1.0)
        seen: set[object] = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            seen |= {store(a)["status"], store(b)["status"]}
            time.sleep(0.02)
        assert seen == {"forbidden"}  # steadily: never "corrupt", never "ok"
        assert "PUBLISH" in str(store(a)["problems"]) and "+publish" in str(store(a)["problems"])
        # A change is made (the write stands), and the other process follows it by polling.
        assert a.set_traffic_percent(20) == Environment.canary(20)
        assert eventually(lambda: b.environment == Environment.canary(20), 1.5)
        assert redis_server.cli("HGET", f"gate_middleware:{{{rollout}}}:state", "version") == "1"
        # Granted: the next change publishes, and the status clears.
        redis_server.cli("ACL", "SETUSER", "nopub", "+publish")
        assert a.set_traffic_percent(30) == Environment.canary(30)
        assert eventually(lambda: store(a)["status"] == "ok", 1.0)
        assert eventually(lambda: store(b)["status"] == "ok", 6.0)  # b asks again every 4 s
    logged = messages(caplog)
    assert not [m for m in logged if "corrupt" in m or "decodes again" in m]
    assert len([m for m in logged if "refuses PUBLISH" in m]) <= 2  # at most once a process


def test_a_user_without_subscribe_follows_by_polling_and_no_key_is_called_corrupt(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = rollout_name("nosub")
    url = user_url(redis_server, "nosub", "-subscribe")
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        admin = shared(redis_server.url, rollout)
        follower = shared(url, rollout)
        assert eventually(lambda: store(follower)["status"] == "forbidden", 1.5)
        problems = str(store(follower)["problems"])
        assert "SUBSCRIBE" in problems and "+subscribe" in problems and "polling" in problems
        admin.set_traffic_percent(30)
        assert eventually(lambda: follower.environment == Environment.canary(30), 1.5)
        time.sleep(0.5)
        assert store(follower)["status"] == "forbidden"
    logged = messages(caplog)
    assert not [m for m in logged if "corrupt" in m]
    assert len([m for m in logged if "refuses SUBSCRIBE" in m]) == 1


def test_a_user_without_time_is_reported_and_the_verdict_never_reads_healthy(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
) -> None:
    """Without TIME no outcome reaches Redis: every process judges an empty
    (or its own) window. The store says so, and no verdict reads HEALTHY."""
    rollout = rollout_name("notime")
    url = user_url(redis_server, "notime", "-time")
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        a, b = shared(url, rollout), shared(url, rollout, meter_provider=meter_provider)
        idle = shared(url, rollout + "-production", environment=Environment.PRODUCTION)
        for i in range(400):
            a.record_outcome("canary", True, 0.01, -1, i)
            a.record_outcome("stable", True, 0.01, -1, i)
            idle.record_outcome("stable", True, 0.01, -1, i)
        for gate in (a, b, idle):
            assert eventually(lambda gate=gate: store(gate)["status"] == "forbidden", 1.5)  # type: ignore[misc]
            problems = str(store(gate)["problems"])
            assert "TIME" in problems and "+time" in problems
        time.sleep(0.6)
        assert b.health_snapshot().canary_requests == 0  # nothing was flushed
        for gate in (a, b, idle):
            health = gate.health_snapshot()
            assert health.verdict != HEALTHY, health.recommendation
            assert not health.sufficient_data
        assert "TIME" in idle.health_snapshot().recommendation
        api = AdminAPI(b, token=TOKEN)
        status = api.handle("GET", "/status", AUTH, None)
        assert b'"forbidden"' in status.body and b"+time" in status.body
        # ... and in the metrics, for an alert.
        shown = {
            p.attributes["gate.store.status"]: p.value
            for p in metric_points(metric_reader)["gate_middleware.store.status"]
        }
        assert shown == {"ok": 0, "unreachable": 0, "forbidden": 1, "corrupt": 0}
        # Granted: the outcomes held in a's buffer are flushed and every process sees them.
        redis_server.cli("ACL", "SETUSER", "notime", "+time")
        assert eventually(lambda: b.health_snapshot().canary_requests == 400, 3.0)
        assert eventually(lambda: store(a)["status"] == "ok", 6.0)  # TIME is asked every 4 s
        assert eventually(lambda: a.health_snapshot().verdict == HEALTHY, 2.0)
    logged = messages(caplog)
    assert not [m for m in logged if "corrupt" in m or "unreachable" in m]


def test_the_documented_acl_is_enough(redis_server: RedisServer) -> None:
    """A user with exactly the README's ACL seeds, changes, flushes and clears: no refusal."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    documented = readme[readme.index("ACL SETUSER gate on") :].split("`", 1)[0].split()
    assert documented[5:] == list(DOCUMENTED_ACL)
    rollout = rollout_name("least")
    redis_server.cli("ACL", "SETUSER", "least", "reset", "on", f">{PASSWORD}", *DOCUMENTED_ACL)
    url = f"redis://least:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    a, b = shared(url, rollout), shared(url, rollout)
    for i in range(50):
        a.record_outcome("canary", True, 0.01, -1, i)
        b.record_outcome("stable", True, 0.01, -1, i)
    assert eventually(lambda: a.health_snapshot().production_requests == 50, 2.0)
    a.set_traffic_percent(25)  # a new step: the windows are cleared everywhere
    assert eventually(lambda: b.environment == Environment.canary(25), 1.0)
    assert eventually(lambda: b.health_snapshot().canary_requests == 0, 2.0)
    time.sleep(4.5)  # the follower's clock and publish checks run every 4 s
    assert store(a)["status"] == "ok" and store(b)["status"] == "ok", (store(a), store(b))
