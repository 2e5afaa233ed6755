"""One worker of the shared-gate plan test: records healthy outcomes into the
shared gate, lets the plan's timer run, and announces what it did itself to
a webhook at ``sys.argv[3]``; exits once the release is in production."""

from __future__ import annotations

import sys
import time

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.gate.webhooks import Webhook

SECRET = "a-webhook-secret-of-some-length"  # tests/gate/test_webhooks.py's receiver checks it


def main(redis_url: str, rollout: str, hook: str) -> int:
    plan = RolloutPlan(steps=(5, 10, 25), bake_seconds=0.5, staging_bake_seconds=0.5)
    config = PromotionConfig(
        name=rollout, min_requests=50, evaluation_interval_seconds=0.05, plan=plan
    )
    # Patient: a receiver slowed by a loaded machine must not make it give up.
    webhook = Webhook(hook, secret=SECRET, backoff_seconds=0.05, max_attempts=100)
    gate = PromotionGate.from_url(redis_url, config, webhooks=[webhook])
    deadline = time.monotonic() + 60
    i = 0
    seen_release = False
    while time.monotonic() < deadline:
        environment = gate.environment
        seen_release = seen_release or environment != Environment.PRODUCTION
        if seen_release and environment == Environment.PRODUCTION:
            break
        for _ in range(20):
            i += 1
            gate.record_request_outcome(f"s{i}", i % 50 != 0, 0.02, variant="stable")
            gate.record_request_outcome(f"c{i}", i % 50 != 0, 0.02, variant="canary")
        time.sleep(0.01)
    # The step this process made may still be on its way out: the gate takes
    # the new state first and announces it just after, on the plan's thread,
    # and a process that exits in between loses the delivery (a pending
    # webhook lives in memory only). Let that thread finish.
    time.sleep(1.0)
    # A step whose reply was lost is announced when the follower sees it
    # applied, just after the environment turns: let that finish first.
    settle = time.monotonic() + 10
    while gate._unknown_outcomes and time.monotonic() < settle:
        time.sleep(0.01)
    ok = webhook.wait_idle(20) and webhook.status()["failed"] == 0
    gate.close()
    return 0 if ok and gate.environment == Environment.PRODUCTION else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
