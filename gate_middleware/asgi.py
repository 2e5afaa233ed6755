"""``GateASGIMiddleware``: the gate for any ASGI 3 app.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``)::

    app = GateASGIMiddleware(app, gate=gate, secret="...")

For each ``http`` request it identifies and routes the session, puts the
decision in ``scope["state"]["gate"]`` (which Starlette and FastAPI show as
``request.state.gate``) and behind ``gate_middleware.current_decision()``,
adds the ``Set-Cookie`` header to ``http.response.start`` when it minted an
id (with ``Vary: Cookie`` and ``Cache-Control: private``), and records the
outcome when the final ``http.response.body`` message has been sent: the
time covers the whole response, streamed bodies included. An exception from
the app is recorded as a failure (with status 500 when it came before the
response started: the server answers 500) and re-raised unchanged.
``websocket`` connections are routed (the decision is there) but not timed;
``lifespan`` and other scopes pass straight through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import MeterProvider

from gate_middleware import context
from gate_middleware.gate import PromotionGate
from gate_middleware.lifecycle import (
    COOKIE_MAX_AGE,
    OVERRIDE_TOKEN_HEADER,
    OVERRIDE_VARIANT_HEADER,
    IsSuccess,
    RequestLifecycle,
    SessionKey,
    private_response_headers,
)
from gate_middleware.types import ASGIApp, Message, Receive, Scope, Send

_COOKIE = b"cookie"
_OVERRIDE_VARIANT = OVERRIDE_VARIANT_HEADER.encode("latin-1")
_OVERRIDE_TOKEN = OVERRIDE_TOKEN_HEADER.encode("latin-1")


class GateASGIMiddleware:
    """Route, inject, time and record every HTTP request of an ASGI app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        gate: PromotionGate,
        cookie_name: str = "gate_session",
        secret: str | bytes | None = None,
        secret_fallbacks: Iterable[str | bytes] = (),
        cookie_max_age: int | None = COOKIE_MAX_AGE,
        cookie_secure: bool | None = None,
        session_key: SessionKey | None = None,
        override_token: str | None = None,
        is_success: IsSuccess | None = None,
        exclude_paths: Iterable[str] = (),
        meter_provider: MeterProvider | None = None,
    ) -> None:
        # The options are spelt out (not **options) so that a type checker
        # sees them through Starlette's add_middleware, and a misspelt one is
        # a TypeError naming it when the middleware is built.
        self.app = app
        self.lifecycle = RequestLifecycle(
            gate,
            cookie_name=cookie_name,
            secret=secret,
            secret_fallbacks=secret_fallbacks,
            cookie_max_age=cookie_max_age,
            cookie_secure=cookie_secure,
            session_key=session_key,
            override_token=override_token,
            is_success=is_success,
            exclude_paths=exclude_paths,
            meter_provider=meter_provider,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or self.lifecycle.is_excluded(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        lifecycle = self.lifecycle
        cookies: list[str] = []
        variant = token = None
        for name, value in scope.get("headers", ()):
            if name == _COOKIE:
                cookies.append(value.decode("latin-1"))
            elif name == _OVERRIDE_VARIANT:
                variant = value.decode("latin-1")
            elif name == _OVERRIDE_TOKEN:
                token = value.decode("latin-1")
        cookie = cookies[0] if len(cookies) == 1 else "; ".join(cookies) if cookies else None
        request = lifecycle.begin(
            method=scope.get("method", "GET") if kind == "http" else "GET",
            cookie_header=cookie,
            https=scope.get("scheme") in ("https", "wss"),
            request=self.session_key_input(scope) if lifecycle.wants_request else None,
            override_variant=variant,
            override_token=token,
            set_cookie=kind == "http",
        )
        decision = request.decision
        if "state" not in scope:
            scope["state"] = {}
        scope["state"]["gate"] = decision
        entered = context.enter(decision)
        if kind == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                context.leave(entered)
            return

        set_cookie = request.set_cookie

        async def send_and_time(message: Message) -> None:
            message_type = message["type"]
            if message_type == "http.response.start":
                request.status = message["status"]
                if set_cookie is not None:
                    headers = [
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in private_response_headers(
                            [
                                (name.decode("latin-1"), value.decode("latin-1"))
                                for name, value in message.get("headers", ())
                            ]
                        )
                    ]
                    headers.append((b"set-cookie", set_cookie.encode("latin-1")))
                    message = {**message, "headers": headers}
                await send(message)
            elif message_type == "http.response.body" and not message.get("more_body", False):
                await send(message)
                lifecycle.finish(request, route=self.route_template(scope))
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_and_time)
        except BaseException as exc:
            lifecycle.finish(request, exception=exc, route=self.route_template(scope))
            raise
        finally:
            # A client that went away mid-stream: the app returned without a
            # final body message. Still exactly one outcome.
            if not request.finished:
                lifecycle.finish(request, route=self.route_template(scope))
            context.leave(entered)

    def session_key_input(self, scope: Scope) -> Any:
        """What a ``session_key`` callable receives: the scope (adapters pass their request)."""
        return scope

    def route_template(self, scope: Scope) -> str | None:
        """The matched route's template (``/items/{item_id}``), if the router left it in the scope."""
        path = getattr(scope.get("route"), "path", None)
        return path if isinstance(path, str) else None
