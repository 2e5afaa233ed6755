"""The shared gate under faults, in figures: ``python -m benchmarks.redis_faults``.

Each fault runs against real redis-server processes on 127.0.0.1 (started
here, as the tests start them) with three gates of one rollout standing for
three processes, each with its own connections. During the fault a thread
per gate sends requests through the gate's API (``route_request`` then
``record_request_outcome``) and an operator rolls the canary back, retrying
every 0.2 s until a call succeeds. The table shows, per fault: requests
served / failed, the rollback's attempts / applied (rollback events in the
shared history) / reported (calls that returned an event), callbacks fired
across the gates, and the seconds until every gate holds the same state
(version and transition id) once Redis answers again.

Needs redis-server and redis-cli (``./dev bench`` installs them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from benchmarks.drill import Figures, Rollout, print_table
from gate_middleware import PromotionError, PromotionGate
from tests.faults import RedisProxy
from tests.servers import RedisClusterServers, RedisSentinelSet, RedisServer


def pause(gate: PromotionGate) -> None:
    gate._store._follower.close()  # type: ignore[attr-defined]


def resume(gate: PromotionGate) -> None:
    follower = gate._store._follower  # type: ignore[attr-defined]
    follower._pid = -1
    follower.ensure()


def restart_empty() -> Figures:
    figures = Figures("Redis restarted empty")
    with single() as server:
        rollout = Rollout([server.url] * 3)
        with rollout.traffic():
            time.sleep(0.3)
            server.stop()
            time.sleep(0.5)
            server.start()
            rollout.roll_back(figures, rollout.gates[0])
            figures.agree_seconds = rollout.agree_seconds()
        return rollout.finish(figures)


def restart_with_a_stale_worker() -> Figures:
    figures = Figures("restarted empty, a stale worker first")
    with single() as server:
        rollout = Rollout([server.url] * 3)
        stale = rollout.gates[2]
        with rollout.traffic():
            time.sleep(0.3)
            pause(stale)
            time.sleep(0.3)
            rollout.roll_back(figures, rollout.gates[0])
            for gate in rollout.gates[:2]:
                pause(gate)
            time.sleep(0.3)
            server.stop()
            server.start()
            resume(stale)  # reconnects first, holding the old canary
            time.sleep(0.3)
            for gate in rollout.gates[:2]:
                resume(gate)
            figures.agree_seconds = rollout.agree_seconds()
        return rollout.finish(figures)


def lost_reply() -> Figures:
    figures = Figures("reply to the rollback cut")
    with single() as server:
        proxy = RedisProxy(server.port)
        rollout = Rollout([proxy.url, server.url, server.url])
        with rollout.traffic():
            rollout.gates[1].set_traffic_percent(40)  # Redis caches the script first
            time.sleep(0.3)
            proxy.cut_reply_to(b"EVALSHA")
            rollout.roll_back(figures, rollout.gates[0])
            figures.agree_seconds = rollout.agree_seconds()
        proxy.close()
        return rollout.finish(figures)


def slow_redis() -> Figures:
    figures = Figures("slow Redis (DEBUG SLEEP 1)")
    with single() as server:
        rollout = Rollout([server.url] * 3)
        with rollout.traffic():
            time.sleep(0.3)
            sleeper = threading.Thread(target=server.cli, args=("DEBUG", "SLEEP", "1"))
            sleeper.start()
            time.sleep(0.05)
            rollout.roll_back(figures, rollout.gates[0])
            sleeper.join()
            figures.agree_seconds = rollout.agree_seconds()
        return rollout.finish(figures)


def corrupt_keys() -> Figures:
    figures = Figures("corrupt state and epoch")
    with single() as server:
        rollout = Rollout([server.url] * 3)
        name = rollout.gates[0].name
        with rollout.traffic():
            time.sleep(0.3)
            server.cli("HSET", f"gate_middleware:{{{name}}}:state", "state", "garbage")
            server.cli("SET", f"gate_middleware:{{{name}}}:epoch", "garbage")
            time.sleep(1.2)  # every process notices
            statuses = {g.status().store["status"] for g in rollout.gates}
            figures.notes.append(f"status while corrupt: {sorted(statuses)}")
            figures.attempts += 1  # refused: corrupt
            try:
                rollout.gates[0].rollback("refused while corrupt")
                figures.reported += 1
            except PromotionError:
                pass
            server.cli("DEL", f"gate_middleware:{{{name}}}:state")  # the operator repairs it
            rollout.roll_back(figures, rollout.gates[0])
            figures.agree_seconds = rollout.agree_seconds()
        return rollout.finish(figures)


def failover() -> Figures:
    figures = Figures("Sentinel failover (primary killed)")
    servers = RedisSentinelSet()
    try:
        servers.start()
        rollout = Rollout([servers.url] * 3)
        with rollout.traffic():
            time.sleep(0.3)
            servers.primary.kill()
            rollout.roll_back(figures, rollout.gates[0])
            figures.agree_seconds = rollout.agree_seconds()
        return rollout.finish(figures)
    finally:
        servers.cleanup()


def cluster() -> Figures:
    figures = Figures("Redis Cluster, 3 masters, 3 gates at once")
    servers = RedisClusterServers()
    try:
        servers.start()
        urls = [f"redis+cluster://127.0.0.1:{node.port}" for node in servers.nodes]
        rollout = Rollout(urls)
        with rollout.traffic():
            time.sleep(0.3)
            barrier = threading.Barrier(3)

            def operator(gate: PromotionGate) -> None:
                barrier.wait()
                rollout.roll_back(figures, gate)

            threads = [threading.Thread(target=operator, args=(g,)) for g in rollout.gates]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            figures.agree_seconds = rollout.agree_seconds()
        return rollout.finish(figures)
    finally:
        servers.cleanup()


def restart_race(trials: int = 20) -> str:
    """Roll back, then restart Redis empty at once, with no pause: the race
    in which whichever process reconnects first used to win."""
    newest = 0
    with single() as server:
        for _ in range(trials):
            rollout = Rollout([server.url] * 3)
            rollout.gates[0].rollback("the race drill")
            server.stop()
            server.start()
            if rollout.agree_seconds(5.0) < 5.0:
                newest += 1
            rollout.finish(Figures("race"))
    return f"restart empty right after a rollback: all converged on the rollback in {newest} of {trials} trials"


@contextmanager
def single() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


FAULTS: list[Callable[[], Figures]] = [
    restart_empty,
    restart_with_a_stale_worker,
    lost_reply,
    slow_redis,
    corrupt_keys,
    failover,
    cluster,
]


def main() -> None:
    notes = print_table(FAULTS)
    notes.append(restart_race())
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
