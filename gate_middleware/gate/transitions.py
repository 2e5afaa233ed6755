"""How the gate's state changes: ``Transitions`` and the ``AfterChange`` effects.

Every change (a promotion, a rollback, a plan's step, a flag) is a function
from the current ``GateState`` to the next one and its event, applied by
``Transitions.apply`` through the state store's compare-and-set, so two
threads or processes that make the same change at the same moment make it
once. What follows a change this process made (fresh windows for a new
split, the counters, the callbacks, the webhooks) is ``AfterChange``,
written once for every kind of change.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from gate_middleware.domain.environment import PRODUCTION, STAGING
from gate_middleware.domain.state import (
    CarriedEvidence,
    GateEvent,
    GateState,
    MetricView,
    PromotionEvent,
    RollbackEvent,
)
from gate_middleware.errors import ConfigError, OutcomeUnknownError, PromotionError
from gate_middleware.gate.telemetry import GateTelemetry
from gate_middleware.gate.webhooks import Webhook
from gate_middleware.judge.statistics import carry
from gate_middleware.stores import StateStore, WindowStore

logger = logging.getLogger("gate_middleware")

Event = TypeVar("Event", RollbackEvent, PromotionEvent, None)


def event_time(wall_clock: Callable[[], float]) -> datetime:
    """The time an event is stamped with: ``wall_clock`` (the store's) in UTC."""
    return datetime.fromtimestamp(wall_clock(), UTC)


class AfterChange:
    """What follows each change this process made (another process's
    changes are its own to report): a new split's windows start empty
    (fresh evidence); a rollback, or a release reaching staging or
    production, is counted and its callbacks called; the webhooks are told
    of every event."""

    def __init__(
        self,
        rollout: str,
        windows: WindowStore,
        telemetry: GateTelemetry,
        metric_figures: Callable[[], tuple[MetricView, ...]] = tuple,
    ) -> None:
        self._rollout = rollout
        self._windows = windows
        self._telemetry = telemetry
        self._metric_figures = metric_figures  # the business metrics, for a rollback's webhooks
        self.rollback_callbacks: list[Callable[[RollbackEvent], Any]] = []
        self.promotion_callbacks: list[Callable[[PromotionEvent], Any]] = []
        self.webhooks: list[Webhook] = []

    def add_webhook(self, webhook: Webhook, store: StateStore) -> Webhook:
        if not isinstance(webhook, Webhook):
            raise ConfigError("webhook", webhook, "a gate_middleware.gate.webhooks.Webhook")
        webhook.attach(store.outbox())
        self.webhooks.append(webhook)
        return webhook

    def __call__(self, event: GateEvent, state: GateState) -> None:
        """Carry out what follows ``event``, which made ``state``."""
        metrics: tuple[MetricView, ...] = ()
        if isinstance(event, RollbackEvent):
            if event.feature == "all":
                if self.webhooks:  # the step's business metrics, before they are cleared
                    metrics = self._figures()
                self._windows.clear()
            self._telemetry.count_rollback(event.environment.name, event.automatic)
            self._notify(self.rollback_callbacks, event)
        elif event.from_environment != event.to_environment:
            self._windows.clear()
            if event.to_environment.name in (STAGING, PRODUCTION):
                self._telemetry.count_promotion(event.to_environment.name)
                self._notify(self.promotion_callbacks, event)
        self._announce(event, state, metrics)

    def _figures(self) -> tuple[MetricView, ...]:
        try:
            return self._metric_figures()
        except Exception:  # a webhook's extra figures must not stop a rollback
            logger.exception("The business metrics' figures could not be read for the webhooks")
            return ()

    def _announce(
        self, event: GateEvent, state: GateState, metrics: tuple[MetricView, ...] = ()
    ) -> None:
        if not self.webhooks:
            return
        extra: dict[str, Any] = {
            "environment": state.environment.to_dict(),
            "plan": None if state.plan is None else state.plan.to_dict(),
        }
        if metrics:
            extra["metrics"] = [dict(metric) for metric in metrics]
        payload = event.to_dict()
        for webhook in list(self.webhooks):
            try:
                webhook.send(self._rollout, payload, extra)
            except Exception:
                logger.exception("A webhook could not be queued; the gate carries on")

    @staticmethod
    def _notify(callbacks: list[Callable[[Any], Any]], event: GateEvent) -> None:
        for callback in list(callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("A %s callback raised; the gate carries on", event.kind)

    def close(self) -> None:
        for webhook in self.webhooks:
            webhook.close()

    def after_fork(self) -> None:
        for webhook in self.webhooks:
            webhook.after_fork()


class Transitions:
    """The gate's state: the snapshot this process last saw, and the one way
    to change it. ``adopted(state, new_step)`` is called with every newer
    state this process takes up (its own changes and, through the store's
    subscription, other processes'); then each of ``state_callbacks`` with
    ``(previous, state)``, fail-safe (``PromotionGate.on_state_change``)."""

    def __init__(
        self,
        store: StateStore,
        adopted: Callable[[GateState, bool], None],
        after_change: AfterChange,
        step_evidence: Callable[[GateState], float],
    ) -> None:
        self._store = store
        self._adopted = adopted
        self._after_change = after_change
        self._step_evidence = step_evidence
        self.state = store.load()
        # Guards taking up a state: a request thread, the store's follower and
        # a change of this process's own can each bring one, in any order.
        self._adopt_lock = threading.Lock()
        self.state_callbacks: list[Callable[[GateState, GateState], Any]] = []
        # Changes sent to a shared store that stopped answering, by
        # transition id: reported if they turn up applied. Replaced, never
        # mutated in place (the follower's thread reads it).
        self.unknown_outcomes: dict[str, GateEvent] = {}

    def current(self) -> GateState:
        """The newest of the store's state now and the one this process holds
        (the store's is taken up when newer)."""
        state = self._store.load()
        if state is not self.state:
            self._adopt(state)
        return self.state

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's follower may have held it)."""
        self._adopt_lock = threading.Lock()

    def adopt_if_newer(self, state: GateState) -> None:
        """The store's subscription: another process stored ``state``."""
        if state is not self.state:
            self._adopt(state)
        if self.unknown_outcomes:
            self._report_if_applied(state)

    def _adopt(self, state: GateState) -> None:
        """Take up ``state`` if it supersedes the one held (``GateState.supersedes``):
        a state delivered late (the follower's, read before a change this
        process made) never puts an older one back."""
        with self._adopt_lock:
            previous = self.state
            if not state.supersedes(previous):
                return
            self.state = state
            self._adopted(state, state.step != previous.step)
        for callback in list(self.state_callbacks):
            try:
                callback(previous, state)
            except Exception:
                logger.exception("A state-change callback raised; the gate carries on")

    def _report_if_applied(self, state: GateState) -> None:
        """A change whose outcome was unknown turned up in the shared state:
        report it now, once (the follower's thread calls this)."""
        recent = state.history[-50:]
        for transition, event in list(self.unknown_outcomes.items()):
            if event not in recent or transition not in self.unknown_outcomes:
                continue
            self.unknown_outcomes = {
                k: v for k, v in self.unknown_outcomes.items() if k != transition
            }
            logger.warning("A change whose outcome was unknown was applied after all: %s", event)
            self._after_change(event, state)

    def _carry(self, old: GateState, new: GateState) -> GateState:
        """``new`` with what the release's steps so far carry into its next
        step: every change of step within a release carries the evidence of
        the step it ends (``step_evidence``), so that the false-rollback rate
        holds for the release's whole life; a new release or production
        starts from nothing."""
        if new.release != old.release or new.environment.name == PRODUCTION:
            return replace(new, carried=None) if new.carried is not None else new
        if new.step == old.step or old.environment.name == PRODUCTION:
            return new
        step = old.release_step + 1
        carried = carry(old.carried_log_evidence, self._step_evidence(old), step)
        return replace(new, carried=CarriedEvidence(carried, step))

    def apply(
        self, change: Callable[[GateState], tuple[GateState, Event] | None]
    ) -> tuple[GateState, Event] | None:
        """Apply ``change`` atomically; ``None`` from it means nothing to do.

        Each attempt carries a new random transition id. An attempt that the
        store holds after all (its reply was lost, and a retry re-read it) is
        this transition, reported once. Bounded: after the store's
        ``transition_timeout`` (5 s) of lost races, ``PromotionError``.
        """
        timeout = self._store.transition_timeout
        deadline = time.monotonic() + timeout
        attempts: dict[str, tuple[GateState, Event]] = {}
        pause = 0.001
        while True:
            state = self.current()
            made = attempts.get(state.transition)
            if made is not None:
                return made
            result = change(state)
            if result is None:
                return None
            new_state = replace(self._carry(state, result[0]), transition=secrets.token_hex(8))
            attempts[new_state.transition] = (new_state, result[1])
            try:
                done = self._store.compare_and_set(
                    state.version, new_state, expected_transition=state.transition
                )
            except OutcomeUnknownError:
                event = result[1]
                if event is not None:  # reported when the follower sees it applied
                    self.unknown_outcomes = {
                        **dict(list(self.unknown_outcomes.items())[-15:]),
                        new_state.transition: event,
                    }
                    self._report_if_applied(self._store.load())  # the follower may have seen it
                raise
            if done:
                self._adopt(new_state)
                if result[1] is not None:
                    self._after_change(result[1], new_state)
                return new_state, result[1]
            if time.monotonic() >= deadline:
                raise PromotionError(
                    f"nothing changed: the shared state changed under each of {len(attempts)} "
                    f"attempts in {timeout:g} s (another process keeps changing it); try again"
                )
            time.sleep(pause)  # let the other writer finish; never a busy loop
            pause = min(pause * 2, 0.05)
