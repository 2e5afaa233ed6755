"""The apps wrk loads: bare, or with the gate when GATE_BENCH_WITH_GATE is set."""

import os

from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gate_middleware import Environment, PromotionConfig, PromotionGate

WITH_GATE = bool(os.environ.get("GATE_BENCH_WITH_GATE"))
gate = PromotionGate(PromotionConfig(environment=Environment.canary(10), feature_flags=["new_api"]))


async def index(request):  # type: ignore[no-untyped-def]
    return PlainTextResponse("ok")


starlette_app = Starlette(routes=[Route("/", index)])
flask_app = Flask(__name__)


@flask_app.get("/")
def flask_index() -> str:
    return "ok"


if WITH_GATE:
    from gate_middleware.integrations.flask import GateExtension
    from gate_middleware.integrations.starlette import GateMiddleware

    starlette_app.add_middleware(GateMiddleware, gate=gate)
    GateExtension(gate=gate).init_app(flask_app)
