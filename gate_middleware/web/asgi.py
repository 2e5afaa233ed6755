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

Options that cannot build the lifecycle raise from ``__init__``, except in
an adapter whose framework builds its middleware on its first ASGI call
(``built_on_first_call``: Starlette and FastAPI, on the lifespan's startup
message). There an exception is what uvicorn's and hypercorn's default
lifespan mode read as "no lifespan support": they would start and answer
every request 500. Instead the middleware keeps the error and answers the
lifespan itself with ``lifespan.startup.failed`` and the error's message,
which both servers log before they exit; any other call raises the error.
"""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Unpack

from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.types import ASGIApp, Message, Receive, Scope, Send, mypyc_attr
from gate_middleware.web import context
from gate_middleware.web.lifecycle import (
    OVERRIDE_TOKEN_HEADER,
    OVERRIDE_VARIANT_HEADER,
    GateRequest,
    LifecycleOptions,
    RequestLifecycle,
    check_option_names,
)

_COOKIE = b"cookie"
_OVERRIDE_VARIANT = OVERRIDE_VARIANT_HEADER.encode("latin-1")
_OVERRIDE_TOKEN = OVERRIDE_TOKEN_HEADER.encode("latin-1")


@mypyc_attr(allow_interpreted_subclasses=True)
class GateASGIMiddleware:
    """Route, inject, time and record every HTTP request of an ASGI app."""

    def __init__(
        self, app: ASGIApp, *, gate: PromotionGate | Rollouts, **options: Unpack[LifecycleOptions]
    ) -> None:
        # Typed by LifecycleOptions: a type checker sees each option through
        # Starlette's add_middleware, and a misspelt one is a TypeError naming
        # it when the middleware is built.
        self.app = app
        #: Why the options could not build the lifecycle, kept (only when
        #: ``built_on_first_call``) to fail the startup and every call with.
        self._build_error: Exception | None = None
        self._build_traceback: TracebackType | None = None
        try:
            check_option_names(options, f"{type(self).__name__}()")
            self.lifecycle = RequestLifecycle(gate, **options)
        except Exception as exc:
            if not self.built_on_first_call:
                raise
            self._build_error = exc
            self._build_traceback = exc.__traceback__

    #: A scope key that receives ``scope["app"]`` (the outermost app) before
    #: the app runs, for an adapter's ``route_template``; ``None``: none.
    top_app_key: ClassVar[str | None] = None

    #: ``True`` in an adapter whose framework builds the middleware on its
    #: first ASGI call (the lifespan's startup): options that cannot build
    #: it fail that startup instead of raising from ``__init__``.
    built_on_first_call: ClassVar[bool] = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._build_error is not None:
            await self._refuse_to_start(self._build_error, scope, receive, send)
        kind = scope["type"]
        lifecycle = self.lifecycle
        if (kind != "http" and kind != "websocket") or (
            lifecycle.exclude_paths and lifecycle.is_excluded(scope.get("path", ""))
        ):
            await self.app(scope, receive, send)
            return
        if self.top_app_key is not None:
            scope[self.top_app_key] = scope.get("app")
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
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["gate"] = decision
        entered = context.enter(decision)
        if kind == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                context.leave(entered)
            return
        try:
            await self.app(scope, receive, _TimedSend(self, scope, request, send))
        except BaseException as exc:
            lifecycle.finish(request, exception=exc, route=self.route_template(scope))
            raise
        finally:
            # A client that went away mid-stream: the app returned without a
            # final body message. Still exactly one outcome.
            if not request.finished:
                lifecycle.finish(request, route=self.route_template(scope))
            context.leave(entered)

    async def _refuse_to_start(
        self, error: Exception, scope: Scope, receive: Receive, send: Send
    ) -> NoReturn:
        """Answer the lifespan's startup with ``lifespan.startup.failed`` and
        the error's message, then raise the error (as Starlette's router does
        with an error of its own lifespan); any other scope: raise it."""
        if scope["type"] == "lifespan" and (await receive())["type"] == "lifespan.startup":
            message = f"{type(self).__name__} could not be built: {type(error).__name__}: {error}"
            await send({"type": "lifespan.startup.failed", "message": message})
        # The traceback of the build each time, not one that grows per call.
        raise error.with_traceback(self._build_traceback)

    def session_key_input(self, scope: Scope) -> Any:
        """What a ``session_key`` callable receives: the scope (adapters pass their request)."""
        return scope

    def route_template(self, scope: Scope) -> str | None:
        """The matched route's template (``/items/{item_id}``), if the router left it in the scope."""
        route = scope.get("route")
        if route is None:  # no router (getattr's default would raise and catch inside)
            return None
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else None


class _TimedSend:
    """The ``send`` the app gets: it notes the status, adds the cookie headers
    to the one response that sets the cookie, and records the outcome once
    the final body message is sent.

    Not a coroutine function: every message but the final body goes to the
    server's ``send`` with no frame of ours in between (the app awaits what
    the server's ``send`` returned).
    """

    __slots__ = ("_middleware", "_scope", "_request", "_send")

    def __init__(
        self, middleware: GateASGIMiddleware, scope: Scope, request: GateRequest, send: Send
    ) -> None:
        self._middleware = middleware
        self._scope = scope
        self._request = request
        self._send = send

    def __call__(self, message: Message) -> Awaitable[None]:
        message_type = message["type"]
        if message_type == "http.response.body":
            if message.get("more_body", False):
                return self._send(message)
            return self._send_final(message)
        if message_type == "http.response.start":
            request = self._request
            request.status = message["status"]
            if request.set_cookie is not None:
                headers = self._middleware.lifecycle.response_headers(
                    request, message.get("headers", ()), raw=True
                )
                if headers is not None:
                    message = {**message, "headers": headers}
        return self._send(message)

    async def _send_final(self, message: Message) -> None:
        await self._send(message)
        middleware = self._middleware
        middleware.lifecycle.finish(self._request, route=middleware.route_template(self._scope))
