"""Where a gate keeps its state and outcomes: the store port every backend
implements (``port``) and the table that opens a backend by URL scheme
(``registry``), and the outbox where webhook deliveries wait (``outbox``).
The backends: the in-memory stores (one process), SQLite
(``gate_middleware.stores.sqlite``: every process on a host), Redis
(``gate_middleware.stores.redis``: every process that reaches it)."""

from __future__ import annotations

from gate_middleware.stores.outbox import Delivery, MemoryOutbox, Outbox
from gate_middleware.stores.port import (
    TRANSITION_TIMEOUT_SECONDS,
    RolloutCatalog,
    StateStore,
    StateStoreBase,
    StoreCondition,
    TrackingWindowStore,
    WindowStore,
    WindowStoreBase,
    missing_members,
)
from gate_middleware.stores.registry import (
    open_catalog,
    open_stores,
    register_catalog,
    register_store,
    schemes,
)

__all__ = [
    "Delivery",
    "MemoryOutbox",
    "Outbox",
    "TRANSITION_TIMEOUT_SECONDS",
    "RolloutCatalog",
    "StateStore",
    "StateStoreBase",
    "StoreCondition",
    "TrackingWindowStore",
    "WindowStore",
    "WindowStoreBase",
    "missing_members",
    "open_catalog",
    "open_stores",
    "register_catalog",
    "register_store",
    "schemes",
]
