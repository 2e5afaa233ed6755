"""The same small app in every framework, for the behaviour suite.

FastAPI reads the endpoints' annotations, so what they name is imported at
module level.

Endpoints: ``/`` (the decision as JSON), ``/flag`` ("new" or "old"),
``/boom`` (raises), ``/canary-fails`` (500 on the canary path),
``/checkout`` (tracks ``checkout_completed``, only on the stable path: a
checkout broken on the canary without an error or a slow response),
``/stream`` (three chunks, 0.1 s apart), ``/healthz`` (excluded),
``/items/{item_id}`` (a route template), ``/public`` (``Cache-Control:
public, max-age=60`` and ``Vary: Accept-Encoding``, the same for every
variant). Any other path is a 404.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

from gate_middleware import PromotionGate, current_decision
from gate_middleware.domain.routing import RoutingDecision

FRAMEWORKS = ["starlette", "fastapi", "flask", "django", "django_asgi"]
FLAG = "new_checkout_flow"
CHUNK_DELAY = 0.1
PUBLIC_HEADERS = {"Cache-Control": "public, max-age=60", "Vary": "Accept-Encoding"}
ROUTES = {
    "starlette": "/items/{item_id}",
    "fastapi": "/items/{item_id}",
    "flask": "/items/<item_id>",
    "django": "items/<str:item_id>",
    "django_asgi": "items/<str:item_id>",
}


def describe(decision: RoutingDecision | None, raw: RoutingDecision | None) -> dict[str, Any]:
    current = current_decision()
    return {
        "variant": decision.variant if decision else None,
        "flags": list(decision.enabled_features) if decision else None,
        "current": current.variant if current else None,
        "raw_is_same": raw is decision,
        "bucket": decision.bucket if decision else None,
    }


# -- Starlette and FastAPI -------------------------------------------------------


def starlette_app(gate: PromotionGate, **options: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from gate_middleware.integrations.starlette import GateMiddleware

    async def index(request: Request) -> JSONResponse:
        return JSONResponse(describe(request.state.gate, request.scope["state"]["gate"]))

    async def flag(request: Request) -> PlainTextResponse:
        return PlainTextResponse("new" if request.state.gate.is_enabled(FLAG) else "old")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def canary_fails(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=500 if request.state.gate.is_canary else 200)

    async def checkout(request: Request) -> PlainTextResponse:
        if not request.state.gate.is_canary:
            request.state.gate.track("checkout_completed")
        return PlainTextResponse("ok")

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(CHUNK_DELAY)
                yield f"chunk{i}\n".encode()

        return StreamingResponse(chunks())

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok" if "gate" not in request.scope.get("state", {}) else "routed")

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def public(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the same for everyone", headers=PUBLIC_HEADERS)

    async def handled(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(f"handled: {type(exc).__name__}", status_code=500)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/flag", flag),
            Route("/boom", boom),
            Route("/canary-fails", canary_fails),
            Route("/checkout", checkout),
            Route("/stream", stream),
            Route("/healthz", healthz),
            Route("/items/{item_id}", item),
            Route("/public", public),
        ],
        exception_handlers={Exception: handled},
    )
    app.add_middleware(GateMiddleware, gate=gate, **options)
    return app


def fastapi_app(gate: PromotionGate, **options: Any) -> Any:
    from fastapi import FastAPI

    from gate_middleware.integrations.fastapi import GateMiddleware

    app = FastAPI()

    @app.get("/")
    async def index(request: Request) -> JSONResponse:
        return JSONResponse(describe(request.state.gate, request.scope["state"]["gate"]))

    @app.get("/flag", response_class=PlainTextResponse)
    async def flag(request: Request) -> str:
        return "new" if request.state.gate.is_enabled(FLAG) else "old"

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/canary-fails")
    async def canary_fails(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=500 if request.state.gate.is_canary else 200)

    @app.get("/checkout")
    async def checkout(request: Request) -> PlainTextResponse:
        if not request.state.gate.is_canary:
            request.state.gate.track("checkout_completed")
        return PlainTextResponse("ok")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(CHUNK_DELAY)
                yield f"chunk{i}\n".encode()

        return StreamingResponse(chunks())

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz(request: Request) -> str:
        return "ok" if "gate" not in request.scope.get("state", {}) else "routed"

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    @app.get("/public")
    async def public() -> PlainTextResponse:
        return PlainTextResponse("the same for everyone", headers=PUBLIC_HEADERS)

    @app.exception_handler(Exception)
    async def handled(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(f"handled: {type(exc).__name__}", status_code=500)

    app.add_middleware(GateMiddleware, gate=gate, **options)
    return app


# -- Flask -------------------------------------------------------------------------


def flask_app(gate: PromotionGate, **options: Any) -> Any:
    from flask import Flask, Response, g, jsonify, request
    from werkzeug.exceptions import HTTPException

    from gate_middleware.integrations.flask import GateExtension

    app = Flask(__name__)

    @app.get("/")
    def index() -> Any:
        return jsonify(describe(g.gate, request.environ.get("gate_middleware.decision")))

    @app.get("/flag")
    def flag() -> str:
        return "new" if g.gate.is_enabled(FLAG) else "old"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/canary-fails")
    def canary_fails() -> Any:
        return ("x", 500 if g.gate.is_canary else 200)

    @app.get("/checkout")
    def checkout() -> str:
        if not g.gate.is_canary:
            g.gate.track("checkout_completed")
        return "ok"

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            for i in range(3):
                time.sleep(CHUNK_DELAY)
                yield f"chunk{i}\n".encode()

        return Response(chunks())

    @app.get("/healthz")
    def healthz() -> str:
        return "ok" if g.get("gate") is None else "routed"

    @app.get("/items/<item_id>")
    def item(item_id: str) -> Any:
        return jsonify({"item_id": item_id})

    @app.get("/public")
    def public() -> Any:
        return ("the same for everyone", 200, PUBLIC_HEADERS)

    @app.errorhandler(Exception)
    def handled(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):  # a 404 stays a 404
            return exc
        return (f"handled: {type(exc).__name__}", 500)

    GateExtension(gate=gate, **options).init_app(app)
    return app


# -- Django --------------------------------------------------------------------------


def configure_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="behaviour-suite-only",
            ROOT_URLCONF="tests.django_urls",
            MIDDLEWARE=["gate_middleware.integrations.django.GateMiddleware"],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()


def django_app(gate: PromotionGate, asgi: bool = False, **options: Any) -> Any:
    configure_django()
    from django.test.utils import override_settings

    settings_value = {"GATE": gate, **{key.upper(): value for key, value in options.items()}}
    override = override_settings(GATE_MIDDLEWARE=settings_value)
    override.enable()
    try:
        if asgi:
            from django.core.handlers.asgi import ASGIHandler

            return ASGIHandler(), override
        from django.core.handlers.wsgi import WSGIHandler

        return WSGIHandler(), override
    except BaseException:
        override.disable()
        raise


def app_for(framework: str, gate: PromotionGate, **options: Any) -> tuple[Any, str, Any]:
    """(app, "asgi" or "wsgi", cleanup) for the framework's app wrapped with the gate."""
    from werkzeug.middleware.lint import LintMiddleware

    if framework == "starlette":
        return starlette_app(gate, **options), "asgi", None
    if framework == "fastapi":
        return fastapi_app(gate, **options), "asgi", None
    if framework == "flask":
        return LintMiddleware(flask_app(gate, **options)), "wsgi", None
    if framework == "django":
        handler, override = django_app(gate, **options)
        return LintMiddleware(handler), "wsgi", override.disable
    if framework == "django_asgi":
        handler, override = django_app(gate, asgi=True, **options)
        return handler, "asgi", override.disable
    raise ValueError(framework)


def client_for(framework: str, gate: PromotionGate, **options: Any) -> tuple[httpx.Client, Any]:
    """(client, cleanup): Starlette's TestClient for ASGI apps, httpx over WSGI otherwise."""
    from starlette.testclient import TestClient

    app, protocol, cleanup = app_for(framework, gate, **options)
    if protocol == "asgi":
        return TestClient(app, raise_server_exceptions=False), cleanup
    transport = httpx.WSGITransport(app=app)
    return httpx.Client(transport=transport, base_url="http://testserver"), cleanup
