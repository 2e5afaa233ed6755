"""The multi-process test app: one rollout shared through a store (Redis or SQLite).

Configured by the environment: GATE_STORE_URL (none: in memory), GATE_ROLLOUT, GATE_WINDOW.
``/checkout`` fails on the canary path; ``/stats`` tells which process
answered and what its gate holds; ``/gate`` is the admin API.
"""

import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gate_middleware import Environment, GateWSGIMiddleware, PromotionConfig, PromotionGate
from gate_middleware.admin import AdminASGIApp, AdminWSGIApp
from gate_middleware.integrations.starlette import GateMiddleware

TOKEN = "redis-admin-token-0123456789"
CONFIG = PromotionConfig(
    environment=Environment.canary(50),
    feature_flags=["new_checkout_flow"],
    name=os.environ["GATE_ROLLOUT"],
    rollback_window_seconds=float(os.environ.get("GATE_WINDOW", "10")),
    min_requests=20,
    evaluation_interval_seconds=0.2,
)
# No GATE_STORE_URL: the in-memory gate, each process its own.
URL = os.environ.get("GATE_STORE_URL")
gate = PromotionGate.from_url(URL, CONFIG) if URL else PromotionGate(CONFIG)


async def checkout(request: Request) -> JSONResponse:
    decision = request.state.gate
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
