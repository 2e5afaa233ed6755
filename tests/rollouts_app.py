"""The multi-process test app of several rollouts: "checkout" and "search",
each at 50 %, both in the store at GATE_STORE_URL (SQLite or Redis), served
together by one middleware (``Rollouts``), with any rollout created in the
store's catalog while it runs. ``/`` answers which process
served it, the flags the request got and each rollout's own variant; ``app``
is the ASGI app, ``wsgi`` the WSGI one.
"""

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gate_middleware import (
    Environment,
    GateWSGIMiddleware,
    PromotionConfig,
    Rollouts,
    RoutingDecision,
    current_decision,
)
from gate_middleware.integrations.starlette import GateMiddleware

SECRET = "rollouts-app-secret-0123456789"
FLAGS = {"checkout": "new_checkout_flow", "search": "new_search"}


def config(name: str) -> PromotionConfig:
    return PromotionConfig(
        name=name,
        environment=Environment.canary(50),
        feature_flags=[FLAGS[name]],
        min_requests=100_000,  # only the operator moves these rollouts
    )


# Imported by the test for its constants only (no GATE_STORE_URL): an empty set.
URL = os.environ.get("GATE_STORE_URL")
# Opened on the store: a rollout another process creates (``Rollouts.create``)
# is served here too, within the catalog's refresh.
rollouts = Rollouts.from_url(URL, [config(name) for name in FLAGS]) if URL else Rollouts()


def describe(decision: RoutingDecision) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "flags": sorted(decision.enabled_features),
        "variants": {name: part.variant for name, part in decision.rollouts.items()},
    }


async def index(request: Request) -> JSONResponse:
    return JSONResponse(describe(request.state.gate))


app = Starlette(routes=[Route("/", index)])
app.add_middleware(GateMiddleware, gate=rollouts, secret=SECRET)


def _wsgi_index(environ: dict[str, object], start_response: object) -> list[bytes]:
    import json

    decision = current_decision()
    assert decision is not None
    body = json.dumps(describe(decision)).encode()
    start_response("200 OK", [("Content-Type", "application/json")])  # type: ignore[operator]
    return [body]


wsgi = GateWSGIMiddleware(_wsgi_index, gate=rollouts, secret=SECRET)
