"""The gate's shared state: environment, flags, baseline and history.

``GateState`` is immutable; every change makes a new one with the next
``version``. ``StateStore`` is the small interface the gate changes it
through (read, then compare-and-set on the version), so that a store shared
between processes can replace ``InMemoryStateStore`` without touching
routing: two processes that make the same change at the same moment cannot
both succeed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, ClassVar, Protocol

from gate_middleware.environment import Environment
from gate_middleware.health import CanaryHealth
from gate_middleware.window import WindowStats

MAX_HISTORY = 1000


@dataclass(frozen=True)
class RollbackEvent:
    """A rollback: of the whole release (``feature == "all"``) or of one flag.

    ``environment`` is the environment rolled back from; ``health`` holds
    the health figures at that moment.
    """

    kind: ClassVar[str] = "rollback"

    reason: str
    timestamp: datetime
    environment: Environment
    feature: str = "all"
    health: CanaryHealth | None = None
    automatic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "timestamp": self.timestamp.isoformat(),
            "environment": self.environment.to_dict(),
            "feature": self.feature,
            "automatic": self.automatic,
            "health": self.health.to_dict() if self.health else None,
        }


@dataclass(frozen=True)
class PromotionEvent:
    """A promotion, a traffic change or the start of a release."""

    kind: ClassVar[str] = "promotion"

    from_environment: Environment
    to_environment: Environment
    timestamp: datetime
    action: str = "promote"  # "promote", "set_traffic" or "start_canary"
    forced: bool = False
    health: CanaryHealth | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "action": self.action,
            "from_environment": self.from_environment.to_dict(),
            "to_environment": self.to_environment.to_dict(),
            "timestamp": self.timestamp.isoformat(),
            "forced": self.forced,
            "health": self.health.to_dict() if self.health else None,
        }


GateEvent = RollbackEvent | PromotionEvent


@dataclass(frozen=True)
class GateState:
    """Everything the gate decides by, as one immutable value.

    ``stable_flags`` are on for every session; ``release_flags`` are on for
    sessions on the canary path only. ``release`` numbers the release in
    progress (it changes with every ``start_canary``), ``baseline`` is the
    production window captured when the canary was promoted to staging.
    """

    environment: Environment
    stable_flags: frozenset[str] = frozenset()
    release_flags: frozenset[str] = frozenset()
    history: tuple[GateEvent, ...] = ()
    baseline: WindowStats | None = None
    release: int = 0
    version: int = 0

    def evolve(self, event: GateEvent | None = None, **changes: Any) -> GateState:
        """A copy with ``changes`` applied, ``event`` appended and the next version."""
        history = self.history
        if event is not None:
            history = (*history, event)[-MAX_HISTORY:]
        return replace(self, history=history, version=self.version + 1, **changes)


class StateStore(Protocol):
    """Where a gate keeps its ``GateState``."""

    def load(self) -> GateState:
        """The current state."""

    def compare_and_set(self, expected_version: int, new_state: GateState) -> bool:
        """Store ``new_state`` if the stored version is still ``expected_version``."""


@dataclass
class InMemoryStateStore:
    """The state of one process's gate."""

    state: GateState
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self) -> GateState:
        return self.state

    def compare_and_set(self, expected_version: int, new_state: GateState) -> bool:
        with self._lock:
            if self.state.version != expected_version:
                return False
            self.state = new_state
            return True
