"""FastAPI: the Starlette adapter, and the decision as a dependency.

::

    from gate_middleware.integrations.fastapi import GateDecision, GateMiddleware

    app.add_middleware(GateMiddleware, gate=gate, secret=SECRET)

    @app.get("/checkout")
    async def checkout(decision: GateDecision) -> dict[str, str]:
        return {"variant": decision.variant}

``GateDecision`` is ``Annotated[RoutingDecision, Depends(gate_decision)]``;
the decision is also ``request.state.gate``.
"""

from __future__ import annotations

from typing import Annotated

try:
    from fastapi import Depends
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gate_middleware.integrations.fastapi needs FastAPI: pip install "gate-middleware[fastapi]"'
    ) from exc

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.integrations.starlette import GateMiddleware, gate_decision

__all__ = ["GateDecision", "GateMiddleware", "gate_decision"]

GateDecision = Annotated[RoutingDecision, Depends(gate_decision)]
