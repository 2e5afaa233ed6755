"""Where a gate keeps its state and outcomes: the store port every backend
implements (``port``) and the table that opens a backend by URL scheme
(``registry``). The backends: the in-memory stores (one process), Redis
(``gate_middleware.redis_store``)."""

from __future__ import annotations

from gate_middleware.stores.port import (
    TRANSITION_TIMEOUT_SECONDS,
    StateStore,
    StateStoreBase,
    StoreCondition,
    WindowStore,
    WindowStoreBase,
    missing_members,
)
from gate_middleware.stores.registry import open_stores, register_store, schemes

__all__ = [
    "TRANSITION_TIMEOUT_SECONDS",
    "StateStore",
    "StateStoreBase",
    "StoreCondition",
    "WindowStore",
    "WindowStoreBase",
    "missing_members",
    "open_stores",
    "register_store",
    "schemes",
]
