"""One process of the durable-outbox tests: opens the gate of rollout
``checkout`` on the SQLite file at ``sys.argv[1]`` with a webhook to
``sys.argv[2]``, then either rolls the canary back and exits at once
(``rollback``: the delivery is left in the file's outbox, its receiver being
down) or sends what it finds in the outbox and exits once it is empty
(``send``; exit status 1 if it is not within 30 s)."""

from __future__ import annotations

import sys

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.gate.webhooks import Webhook

SECRET = "a-webhook-secret-of-some-length"  # tests/gate/test_webhooks.py's receiver checks it


def main(url: str, hook: str, action: str) -> int:
    webhook = Webhook(hook, secret=SECRET, backoff_seconds=0.05, max_backoff_seconds=0.2)
    config = PromotionConfig(
        name="checkout", environment=Environment.canary(10), feature_flags=["new_checkout"]
    )
    gate = PromotionGate.from_url(url, config, webhooks=[webhook])
    try:
        if action == "rollback":
            gate.rollback("a bad release", actor="alice")
            return 0
        return 0 if webhook.wait_idle(30) else 1
    finally:
        gate.close()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
