"""Full in-process requests: bare, with the gate, with OpenTelemetry's own
instrumentation. Starlette over ASGI; Flask and Django over WSGI."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NoOpTracerProvider

from benchmarks.gate_bench import bars
from benchmarks.timing import interleaved, table
from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.metrics import MetricDefinition

COOKIES = [f"gate_session=bench-session-{i:06d}-abcdef".encode() for i in range(1000)]


def sdk() -> MeterProvider:
    return MeterProvider(metric_readers=[InMemoryMetricReader()])


def gate(provider: Any, **config: Any) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(10), feature_flags=["new_api"], **config),
        meter_provider=provider,
    )


METRICS = [MetricDefinition("checkout_completed")]


# -- ASGI ------------------------------------------------------------------------


def starlette_app(track: bool = False) -> Any:
    """The bare app; ``track``: its view reports a business metric on each request."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def index(request: Request) -> PlainTextResponse:
        if track:
            request.state.gate.track("checkout_completed")
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", index)])


def asgi_case(app: Any, cookies: list[bytes] | None = None) -> Callable[[int], None]:
    """``app`` called directly with a scope, ``receive`` and ``send`` (no server,
    no network), each request with one of ``cookies`` (default: ``COOKIES``)."""
    sent = COOKIES if cookies is None else cookies

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def many(number: int) -> None:
        for i in range(number):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/",
                "raw_path": b"/",
                "root_path": "",
                "query_string": b"",
                "headers": [(b"host", b"bench"), (b"cookie", sent[i % len(sent)])],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
            }
            await app(scope, receive, send)

    def run(number: int) -> None:
        asyncio.run(many(number))

    return run


def starlette_cases(shared: bool = True) -> dict[str, Callable[[int], None]]:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from gate_middleware.integrations.starlette import GateMiddleware

    api_only = starlette_app()
    api_only.add_middleware(
        GateMiddleware, gate=gate(NoOpMeterProvider()), meter_provider=NoOpMeterProvider()
    )
    provider = sdk()
    with_sdk = starlette_app()
    with_sdk.add_middleware(GateMiddleware, gate=gate(provider), meter_provider=provider)
    otel = OpenTelemetryMiddleware(
        starlette_app(), meter_provider=sdk(), tracer_provider=NoOpTracerProvider()
    )
    tracking = starlette_app(track=True)
    tracking.add_middleware(
        GateMiddleware,
        gate=gate(NoOpMeterProvider(), metrics=METRICS),
        meter_provider=NoOpMeterProvider(),
    )
    cases = {
        "Starlette, bare": asgi_case(starlette_app()),
        "+ gate middleware, metrics API only": asgi_case(api_only),
        "+ gate middleware and a business metric, track() on each request": asgi_case(tracking),
        "+ gate middleware, OpenTelemetry SDK": asgi_case(with_sdk),
        "+ OpenTelemetry ASGI instrumentation, SDK": asgi_case(otel),
    }
    with_stores = shared
    url = redis_url() if with_stores else None
    if url is not None:
        shared_app = starlette_app()
        shared_gate = PromotionGate.from_url(
            url,
            PromotionConfig(
                environment=Environment.canary(10), feature_flags=["new_api"], name="bench"
            ),
            meter_provider=NoOpMeterProvider(),
        )
        shared_app.add_middleware(
            GateMiddleware, gate=shared_gate, meter_provider=NoOpMeterProvider()
        )
        cases["+ gate middleware on Redis (loopback), metrics API only"] = asgi_case(shared_app)
    if with_stores:
        on_file = starlette_app()
        file_gate = PromotionGate.from_url(
            f"sqlite://{sqlite_directory()}/gate.db",
            PromotionConfig(
                environment=Environment.canary(10), feature_flags=["new_api"], name="bench"
            ),
            meter_provider=NoOpMeterProvider(),
        )
        on_file.add_middleware(GateMiddleware, gate=file_gate, meter_provider=NoOpMeterProvider())
        cases["+ gate middleware on SQLite (a file), metrics API only"] = asgi_case(on_file)
        tracked_file = starlette_app(track=True)
        tracked_gate = PromotionGate.from_url(
            f"sqlite://{sqlite_directory()}/gate-metrics.db",
            PromotionConfig(
                environment=Environment.canary(10),
                feature_flags=["new_api"],
                name="bench-metrics",
                metrics=METRICS,
            ),
            meter_provider=NoOpMeterProvider(),
        )
        tracked_file.add_middleware(
            GateMiddleware, gate=tracked_gate, meter_provider=NoOpMeterProvider()
        )
        cases["+ gate middleware on SQLite and a business metric, track() on each request"] = (
            asgi_case(tracked_file)
        )
    return cases


def sqlite_directory() -> str:
    """A directory of our own for the SQLite case's file, removed at exit."""
    import atexit
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="gate-bench-")
    atexit.register(shutil.rmtree, directory, True)
    return directory


def redis_url() -> str | None:
    """A redis-server of our own on 127.0.0.1 for the shared-gate case (None without one)."""
    import atexit
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(server.terminate)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    return None


# -- WSGI ------------------------------------------------------------------------


def wsgi_case(app: Any, cookies: list[str] | None = None) -> Callable[[int], None]:
    """Returning visitors: ``cookies`` (default: unsigned ones, for a gate
    without a secret) are valid session cookies, so no response sets one."""

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    cookies = cookies or [c.decode() for c in COOKIES]

    def run(number: int) -> None:
        for i in range(number):
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/",
                "SCRIPT_NAME": "",
                "QUERY_STRING": "",
                "SERVER_NAME": "bench",
                "SERVER_PORT": "80",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "HTTP_HOST": "bench",
                "HTTP_COOKIE": cookies[i % 1000],
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": sys.stderr,
                "wsgi.version": (1, 0),
                "wsgi.multithread": False,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            }
            body = app(environ, start_response)
            for _ in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return run


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/")
    def index() -> str:
        return "ok"

    return app


def flask_cases() -> dict[str, Callable[[int], None]]:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    from gate_middleware.integrations.flask import GateExtension

    api_only = flask_app()
    GateExtension(gate=gate(NoOpMeterProvider()), meter_provider=NoOpMeterProvider()).init_app(
        api_only
    )
    provider = sdk()
    with_sdk = flask_app()
    GateExtension(gate=gate(provider), meter_provider=provider).init_app(with_sdk)
    otel = flask_app()
    otel.wsgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign]
        otel.wsgi_app, meter_provider=sdk(), tracer_provider=NoOpTracerProvider()
    )
    return {
        "Flask, bare": wsgi_case(flask_app()),
        "+ gate extension, metrics API only": wsgi_case(api_only),
        "+ gate extension, OpenTelemetry SDK": wsgi_case(with_sdk),
        "+ OpenTelemetry WSGI instrumentation, SDK": wsgi_case(otel),
    }


def django_cases() -> dict[str, Callable[[int], None]]:
    import django
    from django.conf import settings
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="bench",
            ROOT_URLCONF="benchmarks.django_urls",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    middleware = ["gate_middleware.integrations.django.GateMiddleware"]

    def handler(provider: Any | None) -> WSGIHandler:
        if provider is None:
            return WSGIHandler()
        options = {"GATE": gate(provider), "METER_PROVIDER": provider}
        with override_settings(MIDDLEWARE=middleware, GATE_MIDDLEWARE=options):
            return WSGIHandler()

    otel = OpenTelemetryMiddleware(
        WSGIHandler(), meter_provider=sdk(), tracer_provider=NoOpTracerProvider()
    )
    # Django signs the cookie with a secret derived from SECRET_KEY: the
    # visitors return with cookies signed by it (unsigned ones would make
    # every request a new visitor, a Set-Cookie on every response).
    from gate_middleware.integrations.django import derived_secret
    from gate_middleware.web.session import SessionCookie

    signer = SessionCookie(secret=derived_secret(settings.SECRET_KEY))
    cookies = [
        f"gate_session={signer.value_for(cookie.decode().split('=', 1)[1])}" for cookie in COOKIES
    ]
    return {
        "Django, bare": wsgi_case(handler(None), cookies),
        "+ gate middleware, metrics API only": wsgi_case(handler(NoOpMeterProvider()), cookies),
        "+ gate middleware, OpenTelemetry SDK": wsgi_case(handler(sdk()), cookies),
        "+ OpenTelemetry WSGI instrumentation, SDK": wsgi_case(otel, cookies),
    }


def run(quick: bool) -> list[str]:
    number, repeat = (500, 7) if quick else (3_000, 15)
    sections = []
    for title, cases in (
        ("In-process request: Starlette over ASGI", starlette_cases()),
        ("In-process request: Flask over WSGI", flask_cases()),
        ("In-process request: Django over WSGI", django_cases()),
    ):
        results = interleaved(cases, number, repeat)
        sections.append(table(title, results, next(iter(cases)), overhead=True))
        for store in ("Redis (loopback)", "SQLite (a file)"):
            shared = results.get(f"+ gate middleware on {store}, metrics API only")
            if shared is None:
                continue
            base = results[next(iter(cases))].median
            in_memory = results["+ gate middleware, metrics API only"].median - base
            sections.append(
                bars(
                    [
                        (
                            f"{store.split()[0]} store overhead <= 1.2x the in-memory gate's",
                            (shared.median - base) / in_memory,
                            1.2,
                        )
                    ]
                )
            )
    return sections
