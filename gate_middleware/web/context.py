"""``current_decision()``: the routing decision of the request being served.

The middlewares set it for the duration of a request, so code far from the
view (a template helper, a service layer) can read the session's flags
without the request object. Outside a request it returns ``None``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from gate_middleware.domain.routing import RoutingDecision

_current: ContextVar[RoutingDecision | None] = ContextVar("gate_middleware.decision", default=None)


def current_decision() -> RoutingDecision | None:
    """The decision of the request in progress, or ``None`` outside one."""
    return _current.get()


#: ``enter(decision)`` makes ``decision`` current and returns the token for
#: ``leave``: the ContextVar's own ``set``, with no frame of ours around it.
enter = _current.set


def leave(token: Token[RoutingDecision | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:
        # Left from another context (a WSGI server closing the response in
        # another thread): that context ends anyway; clear this one.
        _current.set(None)
