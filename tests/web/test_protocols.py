"""Guarantees 8, 9 and 10: WSGI close(), ASGI streaming and disconnects,
Django's async path stays async."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from werkzeug.middleware.lint import LintMiddleware

from gate_middleware import (
    Environment,
    GateASGIMiddleware,
    GateWSGIMiddleware,
    PromotionConfig,
    PromotionGate,
)
from tests.apps import client_for, configure_django
from tests.support import FakeClock, metric_points


@pytest.fixture
def gate(clock: FakeClock, meter_provider: Any) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(50), auto_rollback_enabled=False),
        clock=clock,
        meter_provider=meter_provider,
    )


def outcomes(gate: PromotionGate) -> tuple[int, int]:
    """(requests, failures) recorded in both windows."""
    health = gate.health_snapshot()
    requests = health.canary_requests + health.production_requests
    failures = round(
        health.canary_error_rate * health.canary_requests
        + health.production_error_rate * health.production_requests
    )
    return requests, failures


# -- 8: WSGI close() ----------------------------------------------------------------


class Body:
    """A response iterable that counts its close() calls."""

    def __init__(self, chunks: int, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.delay = delay
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("the body broke")
            time.sleep(self.delay)
            yield b"chunk"

    def close(self) -> None:
        self.closed += 1


def run_wsgi(app: Any, consume: int | None) -> None:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["QUERY_STRING"] = ""
    result = app(environ, lambda status, headers, exc_info=None: None)
    try:
        for n, _ in enumerate(result):
            if consume is not None and n + 1 >= consume:
                break
    finally:
        result.close()


@pytest.mark.parametrize("checker", ["wsgiref.validate", "werkzeug lint"])
@pytest.mark.parametrize(
    ("case", "chunks", "consume", "fail_at"),
    [
        ("fully consumed", 3, None, None),
        ("closed after one chunk", 3, 1, None),
        ("raising mid-iteration", 3, None, 1),
    ],
)
def test_wsgi_close_is_called_once_and_one_outcome_is_recorded(
    gate: PromotionGate,
    metric_reader: Any,
    meter_provider: Any,
    case: str,
    chunks: int,
    consume: int | None,
    fail_at: int | None,
    checker: str,
) -> None:
    body = Body(chunks, fail_at=fail_at)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    # The checker on both sides of the middleware: what the server sees, and
    # what the app sees.
    check: Any = validator if checker == "wsgiref.validate" else LintMiddleware
    wrapped = check(GateWSGIMiddleware(check(app), gate=gate, meter_provider=meter_provider))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lint reports by warning
        if fail_at is None:
            run_wsgi(wrapped, consume)
        else:
            with pytest.raises(RuntimeError, match="the body broke"):
                run_wsgi(wrapped, consume)
    assert body.closed == 1
    assert outcomes(gate) == (1, 1 if fail_at is not None else 0)
    [point] = metric_points(metric_reader)["gate_middleware.requests"]
    assert point.value == 1


def test_a_slow_wsgi_body_is_timed_whole(
    gate: PromotionGate, metric_reader: Any, meter_provider: Any
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body(1, delay=0.2)

    run_wsgi(GateWSGIMiddleware(app, gate=gate, meter_provider=meter_provider), None)
    [point] = metric_points(metric_reader)["gate_middleware.request.duration"]
    assert point.sum >= 0.2
    assert (
        gate.health_snapshot().canary_p99_latency + gate.health_snapshot().production_p99_latency
        >= 0.2 * 0.99
    )


# -- 9: ASGI streaming and disconnects -----------------------------------------------

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def http_scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "scheme": "http", "headers": []}


async def receive_request() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_an_asgi_stream_is_timed_to_its_last_chunk(
    gate: PromotionGate, metric_reader: Any, meter_provider: Any
) -> None:
    seen_after_send: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request_id.set("r-1")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(5):
            await asyncio.sleep(0.1)
            await send({"type": "http.response.body", "body": b"x", "more_body": i < 4})
            seen_after_send.append(request_id.get())

    async def send(message: Any) -> None:
        pass

    middleware = GateASGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    asyncio.run(middleware(http_scope(), receive_request, send))
    [point] = metric_points(metric_reader)["gate_middleware.request.duration"]
    assert point.count == 1 and point.sum >= 0.5
    assert seen_after_send == ["r-1"] * 5  # the endpoint's ContextVar survives our send


@pytest.mark.parametrize("how", ["send raises", "app returns early"])
def test_a_client_that_disconnects_mid_stream_yields_one_outcome(
    gate: PromotionGate, metric_reader: Any, meter_provider: Any, how: str
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(5):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            if how == "app returns early" and (await receive())["type"] == "http.disconnect":
                return

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)
        if how == "send raises" and len(sent) == 2:
            raise OSError("the client went away")

    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    middleware = GateASGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    if how == "send raises":
        with pytest.raises(OSError):
            asyncio.run(middleware(http_scope(), receive, send))
    else:
        asyncio.run(middleware(http_scope(), receive, send))
    assert outcomes(gate)[0] == 1
    [point] = metric_points(metric_reader)["gate_middleware.requests"]
    assert point.value == 1


# -- 10: Django's async path stays async -----------------------------------------------


def test_django_async_stays_async_and_sync_records_the_same(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    configure_django()
    from django.test.utils import override_settings

    recorded = {}
    for framework in ("django_asgi", "django"):
        gate = PromotionGate(
            PromotionConfig(environment=Environment.canary(50), auto_rollback_enabled=False),
            clock=clock,
        )
        caplog.clear()
        # Django logs its adaptations (with DEBUG on) when it builds the chain.
        with override_settings(DEBUG=True), caplog.at_level(logging.DEBUG, "django.request"):
            client, cleanup = client_for(framework, gate)
            try:
                for _ in range(5):
                    client.cookies.clear()
                    assert client.get("/").status_code == 200
                assert client.get("/boom").status_code == 500
            finally:
                client.close()
                if cleanup:
                    cleanup()
        adapted = [
            r.getMessage()
            for r in caplog.records
            if "adapted for middleware" in r.getMessage() and "GateMiddleware" in r.getMessage()
        ]
        if framework == "django_asgi":
            assert adapted == []  # no sync/async adaptation of our middleware
        recorded[framework] = outcomes(gate)
    assert recorded["django_asgi"] == recorded["django"] == (6, 1)


# -- misbehaving apps: what the server answers is what the gate records -----------------


def _bad_body(kind: str) -> Any:
    if kind == "None":
        return None
    if kind == "str":
        return "a str, not bytes"
    if kind == "bytes":
        return b"bytes, not an iterable of bytes"
    if kind == "a str chunk":
        return ["a str chunk"]
    if kind == "an int":
        return 42
    raise ValueError(kind)


BAD_BODIES = ["None", "str", "bytes", "a str chunk", "an int"]


@pytest.mark.parametrize("kind", BAD_BODIES)
def test_a_wsgi_body_that_is_not_bytes_is_a_failure(
    gate: PromotionGate, metric_reader: Any, meter_provider: Any, kind: str
) -> None:
    # PEP 3333: the app returns an iterable of bytes. The server fails on
    # anything else and answers 500; the gate recorded a success before.
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import httpx

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _bad_body(kind)

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    server = make_server("127.0.0.1", 0, middleware, handler_class=Quiet)
    server.base_environ["wsgi.errors"] = open(os.devnull, "w")  # noqa: SIM115 - the traceback
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            response = httpx.get(f"http://127.0.0.1:{server.server_port}/")
            assert response.status_code == 500
    finally:
        server.shutdown()
        server.server_close()
        server.base_environ["wsgi.errors"].close()
        thread.join(timeout=10)
    assert outcomes(gate) == (3, 3)
    points = metric_points(metric_reader)["gate_middleware.request.duration"]
    assert {p.attributes["http.response.status_code"] for p in points} == {500}  # type: ignore[attr-defined]
    assert {p.attributes["error.type"] for p in points} == {"TypeError"}  # type: ignore[attr-defined]


def test_an_unhandled_exception_in_a_starlette_view_is_recorded_as_500(
    gate: PromotionGate, metric_reader: Any, meter_provider: Any
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gate_middleware.integrations.starlette import GateMiddleware

    async def boom(request: Any) -> PlainTextResponse:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/boom", boom)])  # no handler: ServerErrorMiddleware's 500
    app.add_middleware(GateMiddleware, gate=gate, meter_provider=meter_provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
    [point] = metric_points(metric_reader)["gate_middleware.request.duration"]
    assert point.attributes["http.response.status_code"] == 500  # type: ignore[attr-defined]
    assert point.attributes["error.type"] == "RuntimeError"  # type: ignore[attr-defined]
    assert outcomes(gate) == (1, 1)


def test_asgi_headers_as_lists_get_the_cookie_headers(
    gate: PromotionGate, meter_provider: Any
) -> None:
    # ASGI allows each header as a list of two byte strings; a new visitor's
    # response is the one the gate edits (Set-Cookie, Vary, Cache-Control).
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [[b"content-type", b"text/plain"], [b"cache-control", b"public, max-age=60"]]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    middleware = GateASGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    asyncio.run(middleware(http_scope(), receive_request, send))
    names = [bytes(name) for name, _ in sent[0]["headers"]]
    values = {bytes(name): bytes(value) for name, value in sent[0]["headers"]}
    assert names[:2] == [b"content-type", b"cache-control"] and b"set-cookie" in names
    assert values[b"cache-control"] == b"private, max-age=60" and values[b"vary"] == b"Cookie"
    assert outcomes(gate) == (1, 0)


def test_wsgi_headers_as_a_tuple_get_the_cookie_headers(
    gate: PromotionGate, meter_provider: Any
) -> None:
    # PEP 3333 asks for a list of tuples; servers take any sequence of pairs,
    # and the gate passes on what it was given.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", (["Content-Type", "text/plain"],))
        return [b"ok"]

    seen: list[Any] = []
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    middleware = GateWSGIMiddleware(app, gate=gate, meter_provider=meter_provider)
    body = middleware(environ, lambda status, headers, exc_info=None: seen.append(headers))
    assert b"".join(body) == b"ok"
    body.close()  # type: ignore[attr-defined]
    names = [name for name, _ in seen[0]]
    assert names == ["Content-Type", "Vary", "Cache-Control", "Set-Cookie"]
    assert outcomes(gate) == (1, 0)
