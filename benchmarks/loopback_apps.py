"""The apps wrk loads: bare; with the gate when GATE_BENCH_WITH_GATE is
set; with a middleware that does nothing but wrap ``send`` (ASGI) or the
body (WSGI) when it is ``passthrough``: the floor any middleware pays; with
a middleware that burns N µs of CPU per request when it is ``burn:N``: what
a middleware of known in-process cost costs the loaded server."""

import os
import time

from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gate_middleware import Environment, PromotionConfig, PromotionGate

MODE = os.environ.get("GATE_BENCH_WITH_GATE", "")
gate = PromotionGate(PromotionConfig(environment=Environment.canary(10), feature_flags=["new_api"]))


async def index(request):  # type: ignore[no-untyped-def]
    return PlainTextResponse("ok")


starlette_app = Starlette(routes=[Route("/", index)])
flask_app = Flask(__name__)


@flask_app.get("/")
def flask_index() -> str:
    return "ok"


class PassthroughASGI:
    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        async def wrapped(message):  # type: ignore[no-untyped-def]
            await send(message)

        await self.app(scope, receive, wrapped)


class PassthroughWSGI:
    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.app = app

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        yield from self.app(environ, start_response)


class BurnASGI:
    """Spins for ``seconds`` per request (on a warm cache: it touches no memory)."""

    def __init__(self, app, seconds):  # type: ignore[no-untyped-def]
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        await self.app(scope, receive, send)


class BurnWSGI:
    def __init__(self, app, seconds):  # type: ignore[no-untyped-def]
        self.app = app
        self.seconds = seconds

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return self.app(environ, start_response)


if MODE.startswith("burn:"):
    seconds = float(MODE.removeprefix("burn:")) * 1e-6
    starlette_app.add_middleware(BurnASGI, seconds=seconds)
    flask_app.wsgi_app = BurnWSGI(flask_app.wsgi_app, seconds)  # type: ignore[method-assign]
elif MODE == "passthrough":
    starlette_app.add_middleware(PassthroughASGI)
    flask_app.wsgi_app = PassthroughWSGI(flask_app.wsgi_app)  # type: ignore[method-assign]
elif MODE:
    from gate_middleware.integrations.flask import GateExtension
    from gate_middleware.integrations.starlette import GateMiddleware

    starlette_app.add_middleware(GateMiddleware, gate=gate)
    GateExtension(gate=gate).init_app(flask_app)
