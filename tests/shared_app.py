"""The multi-process test app: one rollout shared through a store (Redis or SQLite).

Configured by the environment: GATE_STORE_URL (none: in memory), GATE_ROLLOUT, GATE_WINDOW;
GATE_FAULTY makes ``/checkout`` fail on the canary path; GATE_METRIC judges
the business metric ``checkout_completed``, which ``/checkout`` tracks for
every session but, with GATE_BROKEN_CHECKOUT, the canary's (a release that
answers quickly and without an error while no checkout completes). ``/stats`` tells which
process answered and what its gate holds; ``/gate`` is the admin API. For
counting what a rollback sets off across the processes: GATE_CALLBACK_LOG
names a file every rollback callback appends one line to, after
GATE_CALLBACK_SECONDS (default 0), and GATE_WEBHOOK_URL a receiver of the
gate's webhooks.
"""

import json
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gate_middleware import (
    Environment,
    GateWSGIMiddleware,
    PromotionConfig,
    PromotionGate,
    RollbackEvent,
)
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.gate.webhooks import Webhook
from gate_middleware.integrations.starlette import GateMiddleware
from gate_middleware.operate.admin import AdminASGIApp, AdminWSGIApp

TOKEN = "redis-admin-token-0123456789"
CONFIG = PromotionConfig(
    environment=Environment.canary(50),
    feature_flags=["new_checkout_flow"],
    name=os.environ["GATE_ROLLOUT"],
    rollback_window_seconds=float(os.environ.get("GATE_WINDOW", "10")),
    min_requests=20,
    evaluation_interval_seconds=0.2,
    metrics=[MetricDefinition("checkout_completed")] if os.environ.get("GATE_METRIC") else [],
)
# No GATE_STORE_URL: the in-memory gate, each process its own.
URL = os.environ.get("GATE_STORE_URL")
gate = PromotionGate.from_url(URL, CONFIG) if URL else PromotionGate(CONFIG)

CALLBACK_LOG = os.environ.get("GATE_CALLBACK_LOG")
CALLBACK_SECONDS = float(os.environ.get("GATE_CALLBACK_SECONDS", "0"))
if CALLBACK_LOG:

    @gate.on_rollback
    def log_rollback(event: RollbackEvent) -> None:
        time.sleep(CALLBACK_SECONDS)  # a callback that pages someone takes a while
        line = json.dumps({"pid": os.getpid(), "reason": event.reason}) + "\n"
        with open(CALLBACK_LOG, "a") as log:  # one short append: whole lines from every process
            log.write(line)


if os.environ.get("GATE_WEBHOOK_URL"):
    gate.add_webhook(Webhook(os.environ["GATE_WEBHOOK_URL"], secret="shared-app-webhook-secret"))


def complete_checkout(decision: Any) -> None:
    if os.environ.get("GATE_METRIC") and not (
        decision.is_canary and os.environ.get("GATE_BROKEN_CHECKOUT")
    ):
        decision.track("checkout_completed")


async def checkout(request: Request) -> JSONResponse:
    decision = request.state.gate
    complete_checkout(decision)
    body = {
        "pid": os.getpid(),
        "variant": decision.variant,
        "environment": gate.environment.name,
        "version": gate.state.version,
    }
    return JSONResponse(
        body, status_code=500 if decision.is_canary and os.environ.get("GATE_FAULTY") else 200
    )


async def stats(request: Request) -> JSONResponse:
    health = gate.health_snapshot()
    return JSONResponse(
        {
            "pid": os.getpid(),
            "environment": gate.environment.name,
            "version": gate.state.version,
            "requests": health.canary_requests + health.production_requests,
            "dropped": getattr(gate._windows, "dropped_outcomes", 0),
        }
    )


app = Starlette(
    routes=[
        Route("/checkout", checkout),
        Route("/stats", stats),
        Mount("/gate", AdminASGIApp(gate, token=TOKEN)),
    ]
)
app.add_middleware(GateMiddleware, gate=gate, exclude_paths=["/gate", "/stats"])


def _checkout_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    decision = environ["gate_middleware.decision"]
    complete_checkout(decision)
    body = {
        "pid": os.getpid(),
        "variant": decision.variant,
        "environment": gate.environment.name,
        "version": gate.state.version,
    }
    failing = decision.is_canary and os.environ.get("GATE_FAULTY")
    start_response("500 Error" if failing else "200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


# The same app for WSGI servers (gunicorn's sync workers): the admin API beside the gate.
wsgi = DispatcherMiddleware(
    GateWSGIMiddleware(_checkout_wsgi, gate=gate), {"/gate": AdminWSGIApp(gate, token=TOKEN)}
)
