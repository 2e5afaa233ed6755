"""``GateWSGIMiddleware``: the gate for any PEP 3333 WSGI app.

::

    app.wsgi_app = GateWSGIMiddleware(app.wsgi_app, gate=gate, secret="...")

For each request it identifies and routes the session, puts the decision in
``environ["gate_middleware.decision"]`` and behind
``gate_middleware.current_decision()``, adds ``Set-Cookie`` to the response
headers when it minted an id, and wraps the response iterable: the outcome
is recorded when the body is exhausted or closed, whichever comes first
(still exactly once), so the time covers the whole response, streamed
bodies included, and a test client that reads the body without closing it
(Flask's and Werkzeug's ``client.get()``) records too. A response neither
read to its end nor closed (``client.get("/").status_code`` alone) is
recorded when it is dropped, timed to then (``RequestLifecycle.abandon``).
The wrapped iterable's own ``close()`` is called exactly once. An exception
from the app (or from its body) is recorded as a failure and re-raised
unchanged. A body that is not an iterable of bytes (``None``, a ``str``, a
``str`` chunk: PEP 3333 forbids them, and the server answers 500) is
recorded as a failure with status 500. A response that sets the cookie also
gets ``Vary: Cookie`` and ``Cache-Control: private`` (unless
``cacheable="public"`` leaves it cacheable, without the cookie). A framework that
knows the matched route template may put it in
``environ["gate_middleware.route"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextvars import Token
from typing import Any, Unpack

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.types import (
    Environ,
    StartResponse,
    WSGIApp,
    mypyc_attr,
)
from gate_middleware.web import context
from gate_middleware.web.lifecycle import (
    GateRequest,
    LifecycleOptions,
    RequestLifecycle,
    check_option_names,
)

DECISION_KEY = "gate_middleware.decision"
ROUTE_KEY = "gate_middleware.route"


@mypyc_attr(allow_interpreted_subclasses=True)
class GateWSGIMiddleware:
    """Route, inject, time and record every request of a WSGI app."""

    def __init__(
        self, app: WSGIApp, *, gate: PromotionGate | Rollouts, **options: Unpack[LifecycleOptions]
    ) -> None:
        # Typed by LifecycleOptions: a type checker sees each option, and a
        # misspelt one is a TypeError naming it when the middleware is built.
        check_option_names(options, f"{type(self).__name__}()")
        self.app = app
        # Set once the server said wsgi.multiprocess (and the gate was told):
        # from then on the request path skips that look-up.
        self._multiprocess_noted = False
        self.lifecycle = RequestLifecycle(gate, **options)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        lifecycle = self.lifecycle
        if not self._multiprocess_noted and environ.get("wsgi.multiprocess") is True:
            self._multiprocess_noted = True
            lifecycle.gate.note_several_processes("the WSGI server says wsgi.multiprocess")
        if lifecycle.is_excluded(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        request = lifecycle.begin(
            method=environ.get("REQUEST_METHOD", "GET"),
            cookie_header=environ.get("HTTP_COOKIE"),
            https=environ.get("wsgi.url_scheme") == "https",
            request=self.session_key_input(environ) if lifecycle.wants_request else None,
            override_variant=environ.get("HTTP_X_GATE_VARIANT"),
            override_token=environ.get("HTTP_X_GATE_OVERRIDE_TOKEN"),
        )
        environ[DECISION_KEY] = request.decision
        entered = context.enter(request.decision)
        set_cookie = request.set_cookie

        # Typed loosely on purpose: the app's arguments go to the server as
        # they came (a tuple of headers, say), and the compiled build would
        # raise on anything but the exact annotated types.
        def start_and_time(status: Any, headers: Any, exc_info: Any = None) -> Any:
            try:
                request.status = int(status[:3])
            except (ValueError, TypeError):
                request.status = None
            if set_cookie is not None:
                changed = lifecycle.response_headers(request, headers)
                if changed is not None:
                    headers = changed
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start_and_time)
        except BaseException as exc:
            lifecycle.finish(request, exception=exc, route=environ.get(ROUTE_KEY))
            context.leave(entered)
            raise
        if (
            body is None
            or isinstance(body, (str, bytes, bytearray))
            or not hasattr(body, "__iter__")
        ):
            # The server fails on it and answers 500; the gate must see that.
            error = TypeError(
                f"the app returned {type(body).__name__}, not an iterable of bytes (PEP 3333)"
            )
            lifecycle.finish(request, status=500, exception=error, route=environ.get(ROUTE_KEY))
            context.leave(entered)
            return body
        return _TimedBody(body, lifecycle, request, environ, entered)

    def session_key_input(self, environ: Environ) -> Any:
        """What a ``session_key`` callable receives: the environ (adapters pass their request)."""
        return environ


class _TimedBody:
    """The app's response iterable; the outcome is recorded at its end or in ``close()``."""

    __slots__ = (
        "_body",
        "_iterator",
        "_lifecycle",
        "_request",
        "_environ",
        "_entered",
        "_error",
        "_closed",
        "_chunks",
        "_left",
    )

    def __init__(
        self,
        body: Iterable[bytes],
        lifecycle: RequestLifecycle,
        request: GateRequest,
        environ: Environ,
        entered: Token[RoutingDecision | None],
    ) -> None:
        self._body = body
        # Typed loosely on purpose: a misbehaving app's chunks are checked
        # below, and the compiled build would raise on a non-bytes one here.
        self._iterator: Iterator[Any] | None = None
        self._lifecycle = lifecycle
        self._request = request
        self._environ = environ
        self._entered = entered
        self._error: BaseException | None = None
        self._closed = False
        self._chunks = 0
        self._left = False

    # An iterator, not a generator: a generator's ``yield from`` would close
    # the app's iterable a second time when the server drops it early.
    def __iter__(self) -> Iterator[bytes]:
        self._iterator = iter(self._body)
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._body)
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._finish()  # the whole body is out: record now, close() may never come
            raise
        except BaseException as exc:
            self._error = exc
            raise
        if not isinstance(chunk, bytes) and self._error is None:
            self._error = TypeError(
                f"the app's body yielded {type(chunk).__name__}, not bytes (PEP 3333)"
            )
            if not self._chunks:  # nothing sent yet: the server answers 500
                self._request.status = 500
        self._chunks += 1
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            self._error = self._error or exc
            raise
        finally:
            self._finish()

    def __del__(self) -> None:
        # Dropped neither exhausted nor closed: a client that never closes
        # (a test client's unread response). PEP 3333 servers always close.
        if not self._request.finished:
            self._lifecycle.abandon(
                self._request, exception=self._error, route=self._environ.get(ROUTE_KEY)
            )

    def _finish(self) -> None:
        if not self._request.finished:  # the body ran out, then close(): once
            self._lifecycle.finish(
                self._request, exception=self._error, route=self._environ.get(ROUTE_KEY)
            )
        if not self._left:
            self._left = True
            context.leave(self._entered)
