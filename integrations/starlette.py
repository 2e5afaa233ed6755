"""Starlette and FastAPI: ``app.add_middleware(GateMiddleware, gate=gate, ...)``.

The decision is ``request.state.gate`` in every endpoint (and
``gate_middleware.current_decision()`` anywhere in the request);
``gate_decision(request)`` returns it typed, as a ``RoutingDecision``. The
options are those of ``gate_middleware.web.lifecycle.RequestLifecycle``; a
``session_key`` callable receives the ``starlette.requests.Request``. The
``http.route`` of a request served by a mounted app is the whole template
(``/legacy/things/{thing_id}`` for ``app.mount("/legacy", sub)``), as
OpenTelemetry's own instrumentation reports it.

Starlette builds the middleware when the server starts the app (the
lifespan's startup): options that cannot build it fail that startup, with
the error's message in the server's log, and uvicorn and hypercorn exit.
"""

from __future__ import annotations

from typing import Any

try:
    from starlette.requests import Request
    from starlette.routing import BaseRoute, Match, Mount
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gate_middleware.integrations.starlette needs Starlette: "
        'pip install "gate-middleware[starlette]"'
    ) from exc

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.types import Scope
from gate_middleware.web.asgi import GateASGIMiddleware

__all__ = ["GateMiddleware", "gate_decision"]

_TOP_APP = "gate_middleware.app"


class GateMiddleware(GateASGIMiddleware):
    """The ASGI middleware, handing ``session_key`` a Starlette ``Request``."""

    # The outermost app, before a mounted Starlette app puts itself there.
    top_app_key = _TOP_APP
    # Starlette builds its middleware stack on its first ASGI call (the
    # lifespan's startup): bad options fail that startup, not raise there.
    built_on_first_call = True

    def session_key_input(self, scope: Scope) -> Any:
        return Request(scope)

    def route_template(self, scope: Scope) -> str | None:
        app_root = scope.get("app_root_path")
        if app_root is None or scope.get("root_path", "") == app_root:
            # No mount matched: the route is whole (the base class's lookup, inlined).
            path = getattr(scope.get("route"), "path", None)
            return path if isinstance(path, str) else None
        # The router keeps only the innermost route: match again from the
        # top, as the request was before any mount changed its root_path.
        routes = getattr(scope.get(_TOP_APP), "routes", None)
        if not isinstance(routes, list):
            return super().route_template(scope)
        pristine = {**scope, "root_path": app_root, "path_params": {}}
        return _template(routes, pristine)


def gate_decision(request: Request) -> RoutingDecision:
    """The request's decision (``request.state.gate``), typed.

    ``RuntimeError`` on a path the gate excludes or in an app without the
    middleware. FastAPI takes it as a dependency:
    ``Annotated[RoutingDecision, Depends(gate_decision)]`` (that is
    ``gate_middleware.integrations.fastapi.GateDecision``).
    """
    decision = request.scope.get("state", {}).get("gate")
    if not isinstance(decision, RoutingDecision):
        raise RuntimeError("no gate decision: an excluded path, or the app has no GateMiddleware")
    return decision


def _template(routes: list[BaseRoute], scope: Scope) -> str | None:
    """The matched route's template through every ``Mount`` on the way
    (a partial match, a 405, as Starlette's router falls back to it)."""
    partial: tuple[BaseRoute, Scope] | None = None
    for route in routes:
        match, child_scope = route.matches(scope)
        if match is Match.FULL:
            return _route_path(route, {**scope, **child_scope})
        if match is Match.PARTIAL and partial is None:
            partial = (route, {**scope, **child_scope})
    return None if partial is None else _route_path(*partial)


def _route_path(route: BaseRoute, scope: Scope) -> str | None:
    if isinstance(route, Mount):
        inner = _template(route.routes, scope)
        return None if inner is None else route.path + inner
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None
