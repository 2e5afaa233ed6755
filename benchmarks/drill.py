"""The fault drill every shared store runs: three gates of one rollout
(three processes' worth, each with its own connections), traffic through
each, an operator rolling the canary back during the fault, and the figures
a fault ends in (requests served and failed, the rollback's attempts,
applied and reported, callbacks, seconds until every gate agrees).
``benchmarks.redis_faults`` and ``benchmarks.sqlite_faults`` run it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gate_middleware import Environment, PromotionConfig, PromotionError, PromotionGate


@dataclass
class Figures:
    fault: str
    served: int = 0
    failed: int = 0
    attempts: int = 0
    applied: int = 0
    reported: int = 0
    callbacks: int = 0
    agree_seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"| {self.fault} | {self.served} / {self.failed} | {self.attempts} / {self.applied} / "
            f"{self.reported} | {self.callbacks} | {self.agree_seconds:.2f} |"
        )


class Rollout:
    """Three gates of one rollout, their traffic, and what they report."""

    def __init__(self, urls: list[str]) -> None:
        name = f"faults-{uuid.uuid4().hex[:8]}"
        self.gates = [
            PromotionGate.from_url(
                url,
                PromotionConfig(
                    environment=Environment.canary(50),
                    feature_flags=["new_api"],
                    name=name,
                    min_requests=10**9,  # the operator decides here, not the health checks
                ),
            )
            for url in urls
        ]
        self.callbacks = 0
        for gate in self.gates:
            gate.on_rollback(self._fired)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.served = 0
        self.failed = 0

    def _fired(self, event: object) -> None:
        with self._lock:
            self.callbacks += 1

    @contextmanager
    def traffic(self) -> Iterator[None]:
        def send(gate: PromotionGate, index: int) -> None:
            n = 0
            while not self._stop.is_set():
                n += 1
                session = f"{index}-{n}"
                try:
                    variant = gate.route_request(session).variant
                    gate.record_request_outcome(session, True, 0.002, variant=variant)
                    with self._lock:
                        self.served += 1
                except Exception:
                    with self._lock:
                        self.failed += 1
                time.sleep(0.002)

        self._threads = [
            threading.Thread(target=send, args=(g, i), daemon=True)
            for i, g in enumerate(self.gates)
        ]
        for thread in self._threads:
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join()

    def roll_back(self, figures: Figures, gate: PromotionGate, deadline: float = 15.0) -> None:
        """The operator: retry every 0.2 s until a rollback call succeeds."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            figures.attempts += 1
            try:
                gate.rollback("the fault drill")
                figures.reported += 1
                return
            except PromotionError as exc:
                if "no release in progress" in str(exc) or "ended meanwhile" in str(exc):
                    figures.notes.append("found already rolled back")
                    return
                time.sleep(0.2)

    def agree_seconds(self, limit: float = 10.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit:
            identities = {(g.state.version, g.state.transition) for g in self.gates}
            if len(identities) == 1 and all(
                g.environment == Environment.PRODUCTION for g in self.gates
            ):
                return time.monotonic() - started
            time.sleep(0.01)
        return float("inf")

    def finish(self, figures: Figures) -> Figures:
        figures.served, figures.failed = self.served, self.failed
        figures.callbacks = self.callbacks
        history = self.gates[0].get_history()
        figures.applied = [e.kind for e in history].count("rollback")
        for gate in self.gates:
            gate.close()
        return figures


def print_table(faults: list[Callable[[], Figures]]) -> list[str]:
    """Run each fault, print its row as it ends; the notes, to print after."""
    logging.basicConfig(level=logging.CRITICAL)  # the faults log by design
    print(
        "| fault | requests served / failed | rollback attempts / applied / reported "
        "| callbacks | seconds to agree |"
    )
    print("|---|---|---|---|---|")
    notes = []
    for fault in faults:
        figures = fault()
        print(figures.row(), flush=True)
        notes += [f"{figures.fault}: {note}" for note in figures.notes]
    return notes
