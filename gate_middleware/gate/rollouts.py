"""Several rollouts served by one middleware: ``Rollouts``, one gate per rollout name.

::

    rollouts = Rollouts([
        PromotionGate.from_url(url, PromotionConfig(name="checkout", feature_flags=["new_checkout"])),
        PromotionGate.from_url(url, PromotionConfig(name="search", feature_flags=["new_search"])),
    ])
    app = GateASGIMiddleware(app, gate=rollouts, secret="...")

Each rollout keeps its own config, plan, judge, history and cohort salt:
one session cookie serves them all, and each rollout hashes it with its own
name (``compute_bucket(name, session)``), so a session's assignments are
independent across rollouts and each stays sticky and monotone. The
request's decision (``request.state.gate``) answers ``is_enabled`` for
every rollout's flags; ``decision.for_rollout(name)`` is one rollout's own
decision. Each outcome is recorded in every rollout with that rollout's
own decision, so each judge compares its own canary with its own
production; a rollback, pause or promotion of one leaves the others alone.

A flag belongs to one rollout: a config that declares a flag another
rollout of the set declares is a ``ConfigError`` naming both. ``retire``
stops serving a rollout in every process that shares its store (its flags
off, nothing judged) until ``reinstate``, both recorded in its history;
``add`` and ``remove`` change this process's set while it serves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from gate_middleware.domain.environment import Environment
from gate_middleware.domain.routing import VARIANTS, RoutingDecision, combine_decisions
from gate_middleware.domain.state import GateState, PromotionEvent
from gate_middleware.errors import ConfigError
from gate_middleware.gate.autopilot import API_ACTOR
from gate_middleware.gate.front import PromotionGate

#: ``callback(gate, previous, state)``: a rollout of the set took up a newer state.
SetCallback = Callable[[PromotionGate, GateState, GateState], None]


class Rollouts:
    """An ordered set of ``PromotionGate``s, one per rollout name, served together.

    Give it to any middleware as ``gate=``. Lookup by name
    (``rollouts["checkout"]``), iteration in the order added, ``len`` and
    ``in`` work as on a mapping. ``name`` names the set itself in the
    middleware's fault metrics.
    """

    def __init__(self, gates: Iterable[PromotionGate] = (), *, name: str = "rollouts") -> None:
        if isinstance(gates, PromotionGate):
            raise ConfigError("gates", gates, "an iterable of PromotionGate (a list of gates)")
        self.name = name
        self._lock = threading.Lock()
        #: Read by every request without the lock: replaced whole on a change.
        self._gates: tuple[PromotionGate, ...] = ()
        self._by_name: dict[str, PromotionGate] = {}
        self._owners: dict[str, str] = {}
        self._metric_names: dict[str, frozenset[str]] = {}
        self._state_callbacks: list[SetCallback] = []
        #: (gate, callback) pairs already registered: a gate added again is not told twice.
        self._registered: set[tuple[int, int]] = set()
        for gate in gates:
            self.add(gate)

    # -- the set --------------------------------------------------------------

    def add(self, gate: PromotionGate) -> PromotionGate:
        """Serve ``gate``'s rollout beside the others from the next request on.

        A ``ConfigError`` (and no change) when the name is taken or one of
        its declared flags belongs to another rollout of the set.
        """
        if not isinstance(gate, PromotionGate):
            raise ConfigError("gate", gate, "a PromotionGate")
        with self._lock:
            if gate.name in self._by_name:
                raise ConfigError(
                    "name",
                    gate.name,
                    f"a rollout name not yet in the set (it holds {self._listed()})",
                )
            for flag in gate.config.feature_flags:
                owner = self._owners.get(flag)
                if owner is not None:
                    raise ConfigError(
                        "feature_flags",
                        flag,
                        f"a flag of one rollout only: {flag!r} belongs to rollout {owner!r}, "
                        f"and rollout {gate.name!r} claims it too",
                    )
            for flag in gate.config.feature_flags:
                self._owners[flag] = gate.name
            self._metric_names = {
                **self._metric_names,
                gate.name: frozenset(metric.name for metric in gate.config.metrics),
            }
            self._by_name = {**self._by_name, gate.name: gate}
            self._gates = (*self._gates, gate)
            callbacks = list(self._state_callbacks)
        for callback in callbacks:
            self._register(gate, callback)
        return gate

    def on_state_change(self, callback: SetCallback) -> SetCallback:
        """Call ``callback(gate, previous, state)`` whenever any rollout of the
        set, now or added later, takes up a newer state
        (``PromotionGate.on_state_change``)."""
        with self._lock:
            self._state_callbacks.append(callback)
            gates = self._gates
        for gate in gates:
            self._register(gate, callback)
        return callback

    def _register(self, gate: PromotionGate, callback: SetCallback) -> None:
        key = (id(gate), id(callback))
        if key in self._registered:
            return
        self._registered.add(key)
        gate.on_state_change(lambda previous, state: callback(gate, previous, state))

    def remove(self, name: str) -> PromotionGate:
        """Take the rollout ``name`` out of this process's set (its flags are
        then no one's; the gate is returned, not closed, and its state stays
        in its store). Only this process: to stop serving a rollout in every
        process, ``retire`` it. A ``ConfigError`` naming the rollouts when
        ``name`` is not one."""
        with self._lock:
            gate = self._by_name.get(name)
            if gate is None:
                raise ConfigError("rollout", name, f"one of the set's rollouts: {self._listed()}")
            self._by_name = {key: value for key, value in self._by_name.items() if key != name}
            self._gates = tuple(g for g in self._gates if g is not gate)
            self._owners = {flag: owner for flag, owner in self._owners.items() if owner != name}
        return gate

    def retire(
        self, name: str, reason: str = "retired by an operator", *, actor: str = API_ACTOR
    ) -> PromotionEvent:
        """``PromotionGate.retire`` for the rollout ``name``: not served, in
        every process that shares its store and after restarts, until
        ``reinstate``. It stays in the set (listed, and its flags stay its own)."""
        return self._named(name).retire(reason, actor=actor)

    def reinstate(
        self, name: str, reason: str = "reinstated by an operator", *, actor: str = API_ACTOR
    ) -> PromotionEvent:
        """``PromotionGate.reinstate`` for the rollout ``name``."""
        return self._named(name).reinstate(reason, actor=actor)

    def _named(self, name: str) -> PromotionGate:
        gate = self._by_name.get(name)
        if gate is None:
            raise ConfigError("rollout", name, f"one of the set's rollouts: {self._listed()}")
        return gate

    def _listed(self) -> str:
        return ", ".join(repr(gate.name) for gate in self._gates) or "none"

    def __getitem__(self, name: str) -> PromotionGate:
        gate = self._by_name.get(name)
        if gate is None:
            raise KeyError(f"no rollout {name!r}; the rollouts: {self._listed()}")
        return gate

    def get(self, name: str) -> PromotionGate | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[PromotionGate]:
        return iter(self._gates)

    def __len__(self) -> int:
        return len(self._gates)

    @property
    def gates(self) -> tuple[PromotionGate, ...]:
        """The rollouts' gates, in the order added."""
        return self._gates

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(gate.name for gate in self._gates)

    def owner(self, flag: str) -> PromotionGate | None:
        """The gate of the rollout that declares ``flag``, or ``None``."""
        name = self._owners.get(flag)
        return None if name is None else self._by_name.get(name)

    # -- the request path ----------------------------------------------------

    def route_request(self, session_id: str) -> RoutingDecision:
        """Each rollout's decision for ``session_id``, combined (one hash per rollout)."""
        return combine_decisions(
            tuple(gate.route_request(session_id) for gate in self._gates), "", self._track
        )

    def _track(self, decision: RoutingDecision, metric: str, value: float) -> None:
        """A request's ``track``: counted by each rollout that defines
        ``metric`` (by all, which warn, when none does)."""
        parts = decision.parts
        names = self._metric_names
        defining = [part for part in parts if metric in names.get(part.rollout, ())]
        for part in defining or parts:
            part.track(metric, value)

    def track(self, session_id: str, metric: str, value: float = 1.0) -> None:
        """``PromotionGate.track`` for every rollout that defines ``metric``
        (outside a request: each counts it for the session's variant there)."""
        self.route_request(session_id).track(metric, value)

    def decision_for_variant(
        self, variant: str, *, reason: str, bucket: int = -1
    ) -> RoutingDecision:
        """Every rollout's decision for ``variant``, combined, without hashing."""
        if variant not in VARIANTS:
            raise ConfigError("variant", variant, "'canary' or 'stable'")
        gates = self._gates
        if not gates:
            return RoutingDecision(False, Environment.PRODUCTION, (), bucket, reason)
        return combine_decisions(
            tuple(
                gate.decision_for_variant(variant, reason=reason, bucket=bucket) for gate in gates
            ),
            reason,
            self._track,
        )

    def record_decision(
        self, decision: RoutingDecision, success: bool, seconds: float, route: str | None
    ) -> None:
        """Record one request's outcome in every rollout that decided it,
        each with its own decision; a rollout retired since is skipped."""
        for part in decision.parts or (decision,):
            gate = self._by_name.get(part.rollout)
            if gate is not None:
                gate.record_outcome(
                    part.variant, success, seconds, part.step, part.bucket, route, part.sample
                )

    def is_feature_enabled(self, name: str) -> bool:
        """Whether the flag ``name`` is on for everyone in the rollout that declares it."""
        gate = self.owner(name)
        if gate is not None:
            return gate.is_feature_enabled(name)
        return any(gate.is_feature_enabled(name) for gate in self._gates)

    def note_several_processes(self, reason: str) -> None:
        for gate in self._gates:
            gate.note_several_processes(reason)

    def close(self) -> None:
        """Close every rollout's gate."""
        for gate in self._gates:
            gate.close()

    def __repr__(self) -> str:
        return f"Rollouts({self._listed()})"
