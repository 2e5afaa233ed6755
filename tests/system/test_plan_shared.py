"""Four worker processes on one shared gate (a real redis-server) carry out
one plan: each step is made exactly once, by whichever worker gets there
first, and every worker follows."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from tests.servers import ROOT, RedisServer, python
from tests.support import Receiver

WORKERS = 4


def test_four_workers_make_each_step_exactly_once(redis_server: RedisServer) -> None:
    rollout = f"plan-{uuid.uuid4().hex[:8]}"
    plan = RolloutPlan(steps=(5, 10, 25), bake_seconds=0.5, staging_bake_seconds=0.5)
    config = PromotionConfig(
        name=rollout, min_requests=50, evaluation_interval_seconds=0.05, plan=plan
    )
    starter = PromotionGate.from_url(redis_server.url, config, plan_timer=False)
    receiver = Receiver()
    hooks = [f"http://127.0.0.1:{receiver.port}/worker-{n}" for n in range(WORKERS)]
    workers = [
        subprocess.Popen(
            python("-m", "tests.plan_worker", redis_server.url, rollout, hook), cwd=ROOT
        )
        for hook in hooks
    ]
    try:
        time.sleep(1.0)  # every worker up and following
        starter.start_canary(feature_flags=["new_checkout"], actor="release-bot")
        codes = [worker.wait(timeout=90) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        receiver.close()
    assert codes == [0] * WORKERS
    assert starter.environment == Environment.PRODUCTION
    history = starter.get_history()
    steps = [e for e in history if getattr(e, "action", "") == "plan_step"]
    assert [str(e.to_environment) for e in steps] == [
        "canary (10%)",
        "canary (25%)",
        "staging",
        "production",
    ]
    # Each step was announced once, by the worker that made it.
    announced = [r for r in receiver.received if r["event"] == "plan_step"]
    assert len(announced) == 4
    assert len({r["delivery"] for r in announced}) == 4
    assert receiver.bad_signatures == 0
    targets = [r["body"]["event"]["to_environment"]["name"] for r in announced]
    assert sorted(targets) == sorted(["canary", "canary", "staging", "production"])
    by_worker = Counter(r["path"] for r in announced)
    assert sum(by_worker.values()) == 4
    print("steps made by each worker:", dict(sorted(by_worker.items())))
    starter.close()
