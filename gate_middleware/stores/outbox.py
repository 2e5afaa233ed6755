"""The outbox: where a rollout's webhook deliveries wait until they are made.

A webhook puts each event into its gate's outbox, in the process that made
the change, and a sender thread in every process that runs the webhook
takes the oldest delivery that is due, posts it and marks it done (or due
again later, with one more attempt counted). Taking a delivery leases it
to one process for a while, so two processes never post it at once; a
process that dies holding it lets the lease run out and another one (or the
same after a restart) posts it again: each event is delivered at least once
(receivers drop repeats by their ``X-Gate-Delivery`` id), in order per
receiver.

The in-memory outbox below is one process's and dies with it; a durable
store's outbox (``SqliteStateStore.outbox()``) is shared by every process on
the host and outlives them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Delivery:
    """One event waiting for one receiver."""

    delivery: str  # the X-Gate-Delivery id
    action: str  # the X-Gate-Event
    body: bytes
    attempts: int = 0  # made so far
    due: float = 0.0  # Unix seconds: not posted before


@runtime_checkable
class Outbox(Protocol):
    """Deliveries per receiver (a webhook's ``receiver`` key), oldest first."""

    @property
    def durable(self) -> bool:
        """True when deliveries outlive this process and are shared with the
        other processes of the rollout (their senders take them too)."""
        ...

    def put(self, receiver: str, delivery: Delivery, max_pending: int) -> int:
        """Add ``delivery`` last; drop the oldest beyond ``max_pending``, and
        return how many were dropped."""
        ...

    def take(self, receiver: str, owner: str, lease_seconds: float) -> Delivery | None:
        """The oldest delivery if it is due and no other owner's lease on it
        runs, leased to ``owner`` for ``lease_seconds``; else ``None`` (the
        order holds: a later one waits for the oldest)."""
        ...

    def done(self, receiver: str, delivery: str) -> None:
        """Remove ``delivery`` (posted, or given up)."""
        ...

    def retry(self, receiver: str, delivery: str, attempts: int, due: float) -> None:
        """Release ``delivery``'s lease: ``attempts`` made, due again at ``due``."""
        ...

    def pending(self, receiver: str) -> int:
        """How many deliveries wait for ``receiver``."""
        ...


class MemoryOutbox:
    """One process's outbox: lost with the process (see the module's documentation)."""

    durable = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Delivery]] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # delivery -> (owner, until)

    def put(self, receiver: str, delivery: Delivery, max_pending: int) -> int:
        with self._lock:
            queue = self._queues.setdefault(receiver, deque())
            queue.append(delivery)
            dropped = 0
            while len(queue) > max_pending:
                self._leases.pop(queue.popleft().delivery, None)
                dropped += 1
            return dropped

    def take(self, receiver: str, owner: str, lease_seconds: float) -> Delivery | None:
        now = time.time()
        with self._lock:
            queue = self._queues.get(receiver)
            if not queue or queue[0].due > now:
                return None
            head = queue[0]
            holder, until = self._leases.get(head.delivery, (owner, 0.0))
            if holder != owner and until > now:
                return None
            self._leases[head.delivery] = (owner, now + lease_seconds)
            return head

    def done(self, receiver: str, delivery: str) -> None:
        with self._lock:
            queue = self._queues.get(receiver, deque())
            self._queues[receiver] = deque(d for d in queue if d.delivery != delivery)
            self._leases.pop(delivery, None)

    def retry(self, receiver: str, delivery: str, attempts: int, due: float) -> None:
        with self._lock:
            queue = self._queues.get(receiver, deque())
            self._queues[receiver] = deque(
                replace(d, attempts=attempts, due=due) if d.delivery == delivery else d
                for d in queue
            )
            self._leases.pop(delivery, None)

    def pending(self, receiver: str) -> int:
        with self._lock:
            return len(self._queues.get(receiver, ()))

    def after_fork(self) -> None:
        self._lock = threading.Lock()
