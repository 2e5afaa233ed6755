"""Starlette and FastAPI: ``app.add_middleware(GateMiddleware, gate=gate, ...)``.

The decision is ``request.state.gate`` in every endpoint (and
``gate_middleware.current_decision()`` anywhere in the request). The
options are those of ``gate_middleware.lifecycle.RequestLifecycle``; a
``session_key`` callable receives the ``starlette.requests.Request``.
"""

from __future__ import annotations

from typing import Any

try:
    from starlette.requests import Request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gate_middleware.integrations.starlette needs Starlette: "
        'pip install "gate-middleware[starlette]"'
    ) from exc

from gate_middleware.asgi import GateASGIMiddleware
from gate_middleware.types import Scope

__all__ = ["GateMiddleware"]


class GateMiddleware(GateASGIMiddleware):
    """The ASGI middleware, handing ``session_key`` a Starlette ``Request``."""

    def session_key_input(self, scope: Scope) -> Any:
        return Request(scope)
