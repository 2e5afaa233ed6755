"""The in-memory state store: one process's gate state, which dies with
the process (the in-memory window store is ``gate_middleware.stores.windows``),
and the in-memory catalog of rollouts added at run time, as short-lived."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from gate_middleware.domain.state import GateState
from gate_middleware.stores.port import StateStoreBase


@dataclass
class InMemoryStateStore(StateStoreBase):
    """The state of one process's gate: it dies with the process, and no other
    process sees it."""

    state: GateState
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self) -> GateState:
        return self.state

    def compare_and_set(
        self, expected_version: int, new_state: GateState, *, expected_transition: str | None = None
    ) -> bool:
        with self._lock:
            if self.state.version != expected_version:
                return False
            if expected_transition is not None and self.state.transition != expected_transition:
                return False
            self.state = new_state
            return True

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the inherited one may be held)."""
        self._lock = threading.Lock()


class InMemoryCatalog:
    """The rollouts this process added while it runs: no other process sees
    them, and they are gone after a restart (``shared`` is False, and the
    set says so when one is added)."""

    shared = False

    def __init__(self) -> None:
        self._entries: dict[str, str] = {}
        self._lock = threading.Lock()

    def entries(self) -> dict[str, str]:
        return dict(self._entries)

    def add(self, name: str, entry: str) -> bool:
        with self._lock:
            if name in self._entries:
                return False
            self._entries = {**self._entries, name: entry}
            return True

    def close(self) -> None:
        """Nothing to release."""
