"""When an outcome is recorded, and under which route template.

A WSGI body is recorded when it is exhausted or closed, whichever comes
first, exactly once: the test clients of Flask, Werkzeug and Django read the
body without a ``with`` block and still record. A mounted Starlette or
FastAPI sub-app's requests carry the whole route template.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import Environment, GateWSGIMiddleware, PromotionConfig, PromotionGate
from tests.support import metric_points


def make_gate(meter_provider: MeterProvider) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(50), feature_flags=["new_api"]),
        meter_provider=meter_provider,
    )


def outcomes(gate: PromotionGate) -> int:
    snapshot = gate.health_snapshot()
    return snapshot.canary_requests + snapshot.production_requests


def requests_counted(reader: InMemoryMetricReader) -> int:
    return sum(int(p.value) for p in metric_points(reader).get("gate_middleware.requests", []))


def test_flask_test_client_records_without_with(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    from flask import Flask

    from gate_middleware.integrations.flask import GateExtension

    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    gate = make_gate(meter_provider)
    GateExtension(app, gate=gate, meter_provider=meter_provider)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/").text == "ok"
    assert outcomes(gate) == 3
    assert requests_counted(metric_reader) == 3


def test_django_test_client_records(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    from django.test import Client

    from tests.apps import django_app

    gate = make_gate(meter_provider)
    _, override = django_app(gate, meter_provider=meter_provider)
    try:
        # Each Client loads its own middleware: both count on the one meter.
        assert Client().get("/items/7").status_code == 200
        gc.collect()  # the first client's middleware is gone: its count must stay
        streamed: Any = Client().get("/stream")
        assert b"".join(streamed.streaming_content) == b"chunk0\nchunk1\nchunk2\n"
        del streamed
        gc.collect()
    finally:
        override.disable()
    assert outcomes(gate) == 2
    assert requests_counted(metric_reader) == 2


class Body:
    """A response iterable that counts its close() calls."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    def close(self) -> None:
        self.closed += 1


def test_exhausted_then_closed_records_once(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    body = Body()

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    gate = make_gate(meter_provider)
    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    response: Any = middleware(environ, lambda status, headers, exc_info=None: None)
    assert list(response) == [b"a", b"b"]
    assert outcomes(gate) == 1  # recorded at the end of the body, before close()
    response.close()
    response.close()
    assert outcomes(gate) == 1 and body.closed == 1
    assert requests_counted(metric_reader) == 1


def test_closed_early_records_once(meter_provider: MeterProvider) -> None:
    body = Body()

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return body

    gate = make_gate(meter_provider)
    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    response: Any = middleware(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"},
        lambda status, headers, exc_info=None: None,
    )
    assert next(iter(response)) == b"a"
    assert outcomes(gate) == 0
    response.close()
    assert outcomes(gate) == 1 and body.closed == 1


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_a_mounted_sub_app_gets_the_whole_route_template(
    framework: str, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    from gate_middleware.integrations.starlette import GateMiddleware

    async def thing(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["thing_id"])

    async def top(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["n"])

    inner = Starlette(routes=[Route("/things/{thing_id}", thing)])
    app: Any
    if framework == "fastapi":
        from fastapi import FastAPI

        app = FastAPI()
        app.mount("/legacy", inner)
        app.get("/top/{n}")(lambda n: n)
    else:
        app = Starlette(
            routes=[
                Mount("/v{version}", routes=[Mount("/legacy", inner)]),
                Mount("/legacy", inner),
                Route("/top/{n}", top),
            ]
        )
    gate = make_gate(meter_provider)
    app.add_middleware(GateMiddleware, gate=gate, meter_provider=meter_provider)
    with TestClient(app) as client:
        assert client.get("/legacy/things/42").status_code == 200
        assert client.get("/top/1").status_code == 200
        if framework == "starlette":
            assert client.get("/v2/legacy/things/43").status_code == 200
    routes = {
        p.attributes.get("http.route")
        for p in metric_points(metric_reader)["gate_middleware.requests"]
    }
    expected = {"/legacy/things/{thing_id}", "/top/{n}"}
    if framework == "starlette":
        expected.add("/v{version}/legacy/things/{thing_id}")
    assert routes == expected


# -- a response its client never reads nor closes -----------------------------------


def flask_gate_app(gate: PromotionGate, meter_provider: MeterProvider) -> Any:
    from flask import Flask, Response

    from gate_middleware.integrations.flask import GateExtension

    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    @app.get("/stream")
    def stream() -> Response:
        return Response(f"chunk{i}\n".encode() for i in range(3))

    GateExtension(app, gate=gate, meter_provider=meter_provider)
    return app


def test_flask_test_client_records_an_unread_response_when_it_is_dropped(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    gate = make_gate(meter_provider)
    client = flask_gate_app(gate, meter_provider).test_client()
    for _ in range(3):
        assert client.get("/").status_code == 200  # the body never read, never closed
    assert outcomes(gate) == 3
    held = client.get("/")
    assert outcomes(gate) == 3  # not over while the test holds it
    held.close()
    assert outcomes(gate) == 4
    dropped = client.get("/stream")
    del dropped
    assert outcomes(gate) == 5
    del held
    gc.collect()
    assert outcomes(gate) == 5 and requests_counted(metric_reader) == 5


def test_a_response_dropped_in_a_garbage_collection_is_recorded_by_the_next_request(
    meter_provider: MeterProvider,
) -> None:
    # The collector may run anywhere, even inside the gate's own locks on
    # this thread: a finaliser it runs must not take them.
    gate = make_gate(meter_provider)
    client = flask_gate_app(gate, meter_provider).test_client()
    cycle: list[Any] = [client.get("/")]
    cycle.append(cycle)
    del cycle
    gc.collect()
    assert outcomes(gate) == 0
    assert client.get("/").text == "ok"
    assert outcomes(gate) == 2


def test_a_real_server_records_each_response_once(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    import threading

    import httpx
    from werkzeug.serving import make_server

    from tests.servers import eventually

    gate = make_gate(meter_provider)
    server = make_server("127.0.0.1", 0, flask_gate_app(gate, meter_provider), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
            for _ in range(5):
                assert http.get("/").text == "ok"
            assert http.head("/").status_code == 200
            with http.stream("GET", "/stream") as streamed:
                assert next(streamed.iter_raw())  # then the client goes away
            assert http.get("/stream").text == "chunk0\nchunk1\nchunk2\n"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert eventually(lambda: outcomes(gate) == 8, seconds=5.0)
    gc.collect()
    assert outcomes(gate) == 8 and requests_counted(metric_reader) == 8


def test_django_test_client_records_an_unread_stream(meter_provider: MeterProvider) -> None:
    from django.test import Client

    from tests.apps import django_app

    gate = make_gate(meter_provider)
    _, override = django_app(gate, meter_provider=meter_provider)
    try:
        assert Client().get("/stream").status_code == 200  # never read, never closed
        gc.collect()  # Django's test response is in a cycle: dropped by the collector
        assert Client().get("/items/7").status_code == 200  # it records the dropped one too
        assert outcomes(gate) == 2
        closed = Client().get("/stream")
        closed.close()
        assert outcomes(gate) == 3
    finally:
        override.disable()


# -- http.route only when a route matched -------------------------------------------


@pytest.mark.parametrize("middleware", ["adapter", "asgi"])
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_a_404_under_a_mount_at_the_root_has_no_http_route(
    framework: str,
    middleware: str,
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
) -> None:
    # Mount("/") is a route whose template is "": a 404 inside it matched nothing.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    from gate_middleware import GateASGIMiddleware
    from gate_middleware.integrations.starlette import GateMiddleware

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    inner = Starlette(routes=[Route("/page", page)])
    app: Any
    if framework == "fastapi":
        from fastapi import FastAPI

        app = FastAPI()
        app.mount("/", inner)
    else:
        app = Starlette(routes=[Mount("/", inner)])
    gate = make_gate(meter_provider)
    wrapper = GateMiddleware if middleware == "adapter" else GateASGIMiddleware
    app.add_middleware(wrapper, gate=gate, meter_provider=meter_provider)
    with TestClient(app) as client:
        assert client.get("/nothing-here").status_code == 404
        assert client.get("/page").status_code == 200
    routes = {
        p.attributes.get("http.route", "<absent>"): p.attributes["http.response.status_code"]
        for p in metric_points(metric_reader)["gate_middleware.requests"]
    }
    assert routes == {"<absent>": 404, "/page": 200}


def test_plain_wsgi_an_empty_route_is_no_route(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["gate_middleware.route"] = ""
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"none"]

    gate = make_gate(meter_provider)
    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.url_scheme": "http"}
    body: Any = middleware(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(body) == b"none"
    body.close()
    [point] = metric_points(metric_reader)["gate_middleware.requests"]
    assert "http.route" not in point.attributes  # type: ignore[attr-defined]
