"""FastAPI: the Starlette adapter, under the name FastAPI users look for.

::

    from gate_middleware.integrations.fastapi import GateMiddleware
    app.add_middleware(GateMiddleware, gate=gate)

The decision is ``request.state.gate``.
"""

from __future__ import annotations

from gate_middleware.integrations.starlette import GateMiddleware

__all__ = ["GateMiddleware"]
