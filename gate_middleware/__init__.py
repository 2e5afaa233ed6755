"""gate-middleware: safe canary releases inside a Python web app.

The core knows no web framework: the framework adapters live in
``gate_middleware.integrations`` and are imported only when used.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES

from gate_middleware import moved as _moved
from gate_middleware.domain import routing as _routing
from gate_middleware.domain.clock import Clock, ManualClock, SystemClock
from gate_middleware.domain.config import PromotionConfig, SloConfig
from gate_middleware.domain.environment import Environment
from gate_middleware.domain.routing import RoutingDecision, compute_bucket
from gate_middleware.domain.state import GateState, PromotionEvent, RollbackEvent
from gate_middleware.errors import (
    ConfigError,
    OutcomeUnknownError,
    PromotionError,
    StorePermissionError,
)
from gate_middleware.gate import PromotionGate, PromotionGateManager, Rollouts
from gate_middleware.judge.verdict import CanaryHealth, WindowStats
from gate_middleware.version import __version__
from gate_middleware.web.asgi import GateASGIMiddleware
from gate_middleware.web.context import current_decision
from gate_middleware.web.lifecycle import RequestLifecycle
from gate_middleware.web.wsgi import GateWSGIMiddleware

_moved.install()  # the module paths before the layers, for one release


#: True when the request path runs compiled (a wheel built with mypyc, see
#: setup.py); False for the pure-Python install, which behaves the same.
COMPILED: bool = (_routing.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))

__all__ = [
    "COMPILED",
    "CanaryHealth",
    "Clock",
    "ConfigError",
    "Environment",
    "GateASGIMiddleware",
    "GateState",
    "GateWSGIMiddleware",
    "ManualClock",
    "OutcomeUnknownError",
    "PromotionConfig",
    "PromotionError",
    "PromotionEvent",
    "PromotionGate",
    "PromotionGateManager",
    "RequestLifecycle",
    "RollbackEvent",
    "Rollouts",
    "RoutingDecision",
    "SloConfig",
    "StorePermissionError",
    "SystemClock",
    "WindowStats",
    "__version__",
    "compute_bucket",
    "current_decision",
]
