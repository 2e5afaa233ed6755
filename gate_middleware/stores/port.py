"""The store port: every method a store has, declared.

A gate keeps two things in stores: its ``GateState`` (environment, flags,
history, plan position) in a **state store**, and the outcomes it judges by
(the two sliding windows and each step's evidence) in a **window store**.
The gate calls only the methods below and never probes a store for what it
may have: each is either required or has a default here.

Two ways to write a store, as OpenFeature declares its providers:

- subclass ``StateStoreBase`` / ``WindowStoreBase``: implement the abstract
  methods, and override the optional ones (no-op defaults) where the store
  has something to do;
- or write any class with every member of the ``StateStore`` /
  ``WindowStore`` protocol (``mypy --strict`` checks it; the gate checks it
  at run time and names what is missing).

A store that also keeps business metrics is a ``TrackingWindowStore``
(``tracks_metrics``, ``track``, ``step_began``): only a rollout with
``PromotionConfig.metrics`` needs one, so a window store written before
them still serves every other rollout.

``tests/stores/test_store_contract.py`` is the conformance suite every store runs:
the in-memory stores, the Redis stores, and each new backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from gate_middleware.stores.outbox import MemoryOutbox, Outbox

if TYPE_CHECKING:
    from gate_middleware.domain.state import GateState
    from gate_middleware.judge.evidence import Evidence
    from gate_middleware.judge.verdict import WindowStats

#: How a store is doing: ``ok``; ``unreachable`` (its server stopped
#: answering; the gate serves from what it last knew); ``forbidden`` (its
#: server refuses a command the store needs to this client's user, such as
#: a Redis ACL without ``EVALSHA`` or ``TIME``: the detail names the command
#: and the rule that grants it); ``corrupt`` (it held data that did not
#: decode; repaired or ignored, and logged). A window store that is
#: ``unreachable`` or ``forbidden`` may not be delivering outcomes: the
#: verdict then never reads HEALTHY.
StoreCondition = Literal["ok", "unreachable", "forbidden", "corrupt"]

#: The seconds a state change keeps retrying lost compare-and-set races
#: before it gives up with ``PromotionError``.
TRANSITION_TIMEOUT_SECONDS = 5.0


@runtime_checkable
class StateStore(Protocol):
    """Where a gate keeps its ``GateState``."""

    @property
    def remote(self) -> bool:
        """True when the store is shared with other processes over the network:
        the gate then keeps its writes (an automatic rollback) off the
        request's thread, and reports the store's condition in its status."""
        ...

    @property
    def transition_timeout(self) -> float:
        """Seconds of lost compare-and-set races before a change gives up."""
        ...

    def load(self) -> GateState:
        """The current state. Its version never goes back: a store that lost
        its data writes back the newest state it holds (a gate never takes
        up a state older than its own)."""
        ...

    def compare_and_set(
        self, expected_version: int, new_state: GateState, *, expected_transition: str | None = None
    ) -> bool:
        """Store ``new_state`` if the stored version is still ``expected_version``
        (and its transition id ``expected_transition``, when given)."""
        ...

    def subscribe(self, listener: Callable[[GateState], None]) -> None:
        """Call ``listener`` with each state another process stores."""
        ...

    def clock(self, local: Callable[[], float]) -> Callable[[], float]:
        """The wall clock (Unix seconds) a rollout's times are read on, given
        this process's ``local`` one: bake starts, plan deadlines and event
        timestamps, so that a process whose clock is off neither shortens
        nor stretches a step. A store on this host returns ``local`` (every
        process on a host shares its clock); a store on a server returns
        ``local`` corrected by the offset to the server's clock."""
        ...

    def outbox(self) -> Outbox:
        """Where the rollout's webhook deliveries wait (the same object on
        every call): a durable one is shared by the rollout's processes and
        outlives them (``gate_middleware.stores.outbox``)."""
        ...

    def status(self) -> tuple[StoreCondition, str]:
        """The store's condition and, unless ``ok``, what is wrong."""
        ...

    def after_fork(self) -> None:
        """In a forked child: replace locks, threads and connections."""
        ...

    def close(self) -> None:
        """Stop background work and release connections."""
        ...


@runtime_checkable
class WindowStore(Protocol):
    """Where the gate keeps its two windows (``"canary"`` and ``"stable"``)
    and each step's evidence."""

    @property
    def remote(self) -> bool:
        """True when the store is shared with other processes over the network."""
        ...

    def record(
        self,
        variant: str,
        success: bool,
        good: bool,
        duration: float,
        now: float,
        cluster: int = 0,
        evidence: bool = True,
        route: str | None = None,
        session: int | None = None,
    ) -> None:
        """Count one outcome at time ``now`` (seconds of the gate's clock).

        ``cluster`` is the session's routing bucket (it groups the evidence
        by session); ``evidence=False`` counts it in the window only (the
        step's warm-up); ``route`` is the request's route template, when
        known (the evidence counts it in its route slot: ``Evidence.add``);
        ``session`` is the session's sample key, when the rollout judges
        business metrics (``Evidence.sample``: the session is exposed).
        """
        ...

    def stats(self, variant: str, now: float) -> WindowStats:
        """The variant's window as of ``now``."""
        ...

    def evidence(self, variant: str) -> Evidence:
        """A copy of the variant's evidence since the step began."""
        ...

    def clear(self) -> None:
        """Forget every outcome: a new step began (a release started, its
        share changed, it was promoted or rolled back)."""
        ...

    def flush(self) -> None:
        """Send outcomes held back for batching now (a shared store)."""
        ...

    def status(self) -> tuple[StoreCondition, str]:
        """The store's condition and, unless ``ok``, what is wrong."""
        ...

    def after_fork(self) -> None:
        """In a forked child: replace locks, threads and connections."""
        ...

    def close(self) -> None:
        """Stop background work and release connections."""
        ...


@runtime_checkable
class TrackingWindowStore(WindowStore, Protocol):
    """A window store that also keeps business metrics: what a rollout with
    ``PromotionConfig.metrics`` needs (the gate refuses any other for it).
    A ``WindowStoreBase`` has both members (``tracks_metrics`` false unless
    the store sets it)."""

    @property
    def tracks_metrics(self) -> bool:
        """Whether ``track`` keeps what it is given."""
        ...

    def track(self, variant: str, session: int, metric: str, amount: int) -> None:
        """Add ``amount`` (millionths) to the session's (its sample key's) total
        of ``metric`` in ``variant``'s evidence (``SessionSample.track``)."""
        ...

    def step_began(self) -> None:
        """Another process began a new step: forget what this process holds
        of the last one (its unwritten outcomes, the sample it read back)."""
        ...


class StateStoreBase(ABC):
    """A state store's required methods, and no-op defaults for the rest."""

    remote: bool = False
    transition_timeout: float = TRANSITION_TIMEOUT_SECONDS

    @abstractmethod
    def load(self) -> GateState:
        """The current state."""

    @abstractmethod
    def compare_and_set(
        self, expected_version: int, new_state: GateState, *, expected_transition: str | None = None
    ) -> bool:
        """Store ``new_state`` if the stored version is still ``expected_version``."""

    def subscribe(self, listener: Callable[[GateState], None]) -> None:  # noqa: B027
        """No other process writes to this store: nothing to follow."""

    def clock(self, local: Callable[[], float]) -> Callable[[], float]:
        """A store on this host reads times on the host's clock."""
        return local

    def outbox(self) -> Outbox:
        """This process's memory: deliveries die with the process."""
        outbox: Outbox | None = self.__dict__.get("_memory_outbox")
        if outbox is None:
            outbox = self.__dict__.setdefault("_memory_outbox", MemoryOutbox())
        return outbox

    def status(self) -> tuple[StoreCondition, str]:
        return ("ok", "")

    def after_fork(self) -> None:  # noqa: B027
        """Nothing to replace."""

    def close(self) -> None:  # noqa: B027
        """Nothing to stop."""


class WindowStoreBase(ABC):
    """A window store's required methods, and no-op defaults for the rest."""

    remote: bool = False
    tracks_metrics: bool = False

    @abstractmethod
    def record(
        self,
        variant: str,
        success: bool,
        good: bool,
        duration: float,
        now: float,
        cluster: int = 0,
        evidence: bool = True,
        route: str | None = None,
        session: int | None = None,
    ) -> None:
        """Count one outcome at time ``now``."""

    @abstractmethod
    def stats(self, variant: str, now: float) -> WindowStats:
        """The variant's window as of ``now``."""

    @abstractmethod
    def evidence(self, variant: str) -> Evidence:
        """A copy of the variant's evidence since the step began."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every outcome."""

    def track(self, variant: str, session: int, metric: str, amount: int) -> None:  # noqa: B027
        """Business metrics are not kept (``tracks_metrics`` is false)."""

    def step_began(self) -> None:  # noqa: B027
        """Nothing of another process's steps is held here."""

    def flush(self) -> None:  # noqa: B027
        """Nothing is held back."""

    def status(self) -> tuple[StoreCondition, str]:
        return ("ok", "")

    def after_fork(self) -> None:  # noqa: B027
        """Nothing to replace."""

    def close(self) -> None:  # noqa: B027
        """Nothing to stop."""


@runtime_checkable
class RolloutCatalog(Protocol):
    """The rollouts added while the app runs (``Rollouts.create``, ``POST
    /rollouts``), by name: what every process of a ``Rollouts`` set opened
    on the same store serves beside the rollouts its code declares.

    An entry is an opaque text the set writes and reads (its config, who
    added it and when); it is never changed or taken out (a rollout is
    retired, not deleted), so following a catalog is reading the names not
    yet seen. A store that offers one opens it with ``open_catalog``
    (``gate_middleware.stores.registry``).
    """

    @property
    def shared(self) -> bool:
        """True when other processes read the same entries (False: this
        process's memory only, which dies with it)."""
        ...

    def entries(self) -> dict[str, str]:
        """Every entry, by rollout name. Raises ``PromotionError`` when the
        store cannot be read (the set then keeps what it has)."""
        ...

    def add(self, name: str, entry: str) -> bool:
        """Keep ``entry`` under ``name`` unless the name is taken (``False``:
        another process added it first, and nothing changed). Raises
        ``PromotionError`` when the store cannot be written."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def missing_members(store: object, port: type) -> list[str]:
    """The members of ``port`` (``StateStore`` or ``WindowStore``) that
    ``store`` lacks, in declaration order."""
    names = [
        name
        for name, value in vars(port).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    ]
    return [name for name in names if not hasattr(store, name)]
