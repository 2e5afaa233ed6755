"""A WSGI app for the pre-fork test: the gate is built at import, so
``gunicorn --preload`` builds it once in the master, before forking."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from gate_middleware import Environment, GateWSGIMiddleware, PromotionConfig, PromotionGate

gate = PromotionGate(
    PromotionConfig(environment=Environment.canary(50), auto_rollback_enabled=False)
)
BUILT_IN = os.getpid()
_lock = threading.Lock()
_served = 0


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    global _served
    decision = environ["gate_middleware.decision"]
    with _lock:
        _served += 1
        served = _served
    health = gate.health_snapshot()
    body = json.dumps(
        {
            "pid": os.getpid(),
            "built_in": BUILT_IN,
            "variant": decision.variant,
            "bucket": decision.bucket,
            "served": served,
            "recorded": health.canary_requests + health.production_requests,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


app = GateWSGIMiddleware(_app, gate=gate)
