"""Several rollouts served by one middleware: ``Rollouts``, one gate per rollout name.

::

    rollouts = Rollouts([
        PromotionGate.from_url(url, PromotionConfig(name="checkout", feature_flags=["new_checkout"])),
        PromotionGate.from_url(url, PromotionConfig(name="search", feature_flags=["new_search"])),
    ])
    app = GateASGIMiddleware(app, gate=rollouts, secret="...")

Each rollout keeps its own config, plan, judge, history and cohort salt:
one session cookie serves them all, and each rollout hashes it with its own
salt (its name unless ``PromotionConfig.salt`` says otherwise; two rollouts
of a set may not share one), so a session's assignments are
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
import weakref
from collections.abc import Callable, Iterable, Iterator

from gate_middleware.domain.routing import VARIANTS, RoutingDecision, combine_decisions
from gate_middleware.domain.state import GateState, PromotionEvent
from gate_middleware.errors import ConfigError
from gate_middleware.gate.autopilot import API_ACTOR
from gate_middleware.gate.front import PromotionGate, rollout_salt

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
        #: The gates given a dispatcher of the set's callbacks (once per gate).
        self._dispatching: weakref.WeakSet[PromotionGate] = weakref.WeakSet()
        for gate in gates:
            self.add(gate)

    # -- the set --------------------------------------------------------------

    def add(self, gate: PromotionGate) -> PromotionGate:
        """Serve ``gate``'s rollout beside the others from the next request on.

        A ``ConfigError`` (and no change) when the name or the routing salt
        is taken, or a flag it declares or has on belongs to another rollout
        of the set. From then on the gate refuses to turn on another
        rollout's flag (``enable_feature``, ``start_canary``).
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
            salt = rollout_salt(gate.config)
            for other in self._gates:
                if rollout_salt(other.config) == salt:
                    raise ConfigError(
                        "salt",
                        salt,
                        f"a routing salt of one rollout only: rollout {other.name!r} routes by "
                        f"{salt!r} too, which would put every session on the same path in both",
                    )
            state = gate.state
            for flag in sorted(
                {*gate.config.feature_flags, *state.stable_flags, *state.release_flags}
            ):
                owner = self._owners.get(flag) or self._using(flag)
                if owner is not None:
                    raise ConfigError(
                        "feature_flags",
                        flag,
                        f"a flag of one rollout only: {flag!r} belongs to rollout {owner!r}, "
                        f"and rollout {gate.name!r} claims it too",
                    )
            self._owners = {**self._owners, **dict.fromkeys(gate.config.feature_flags, gate.name)}
            self._metric_names = {
                **self._metric_names,
                gate.name: frozenset(metric.name for metric in gate.config.metrics),
            }
            self._by_name = {**self._by_name, gate.name: gate}
            self._gates = (*self._gates, gate)
            gate.flag_owner = self._owner_name
            if gate not in self._dispatching:
                self._dispatching.add(gate)
                gate.on_state_change(self._dispatcher(gate))
        return gate

    def _owner_name(self, flag: str) -> str | None:
        return self._owners.get(flag)

    def _using(self, flag: str) -> str | None:
        """The rollout of the set that has ``flag`` on now without declaring it."""
        for other in self._gates:
            state = other.state
            if flag in state.stable_flags or flag in state.release_flags:
                return other.name
        return None

    def _dispatcher(self, gate: PromotionGate) -> Callable[[GateState, GateState], None]:
        """What ``gate`` calls with each new state: the set's callbacks, while
        it is in the set (a gate removed since is not heard)."""
        reference = weakref.ref(gate)

        def dispatch(previous: GateState, state: GateState) -> None:
            served = reference()
            if served is None or self._by_name.get(served.name) is not served:
                return
            for callback in list(self._state_callbacks):
                callback(served, previous, state)

        return dispatch

    def on_state_change(self, callback: SetCallback) -> SetCallback:
        """Call ``callback(gate, previous, state)`` whenever any rollout of the
        set, now or added later, takes up a newer state
        (``PromotionGate.on_state_change``)."""
        with self._lock:
            self._state_callbacks.append(callback)
        return callback

    def remove(self, name: str) -> PromotionGate:
        """Take the rollout ``name`` out of this process's set (its flags are
        then no one's; the gate is returned, not closed, and its state stays
        in its store). Only this process: to stop serving a rollout in every
        process, ``retire`` it. A ``ConfigError`` naming the rollouts when
        ``name`` is not one."""
        with self._lock:
            gate = self._named(name)
            self._by_name = {key: value for key, value in self._by_name.items() if key != name}
            self._gates = tuple(g for g in self._gates if g is not gate)
            self._owners = {flag: owner for flag, owner in self._owners.items() if owner != name}
            self._metric_names = {k: v for k, v in self._metric_names.items() if k != name}
            gate.flag_owner = None
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
        return self._each_on(variant, reason, lambda name: bucket)

    def override(self, decision: RoutingDecision, variant: str, reason: str) -> RoutingDecision:
        """The QA override of ``decision`` (a request's under this set): every
        rollout's ``variant``, each keeping the session's own bucket there."""
        buckets = {part.rollout: part.bucket for part in decision.parts or (decision,)}
        return self._each_on(variant, reason, lambda name: buckets.get(name, -1))

    def _each_on(
        self, variant: str, reason: str, bucket_of: Callable[[str], int]
    ) -> RoutingDecision:
        """Every rollout's decision for ``variant`` (with ``bucket_of(its name)``), combined."""
        return combine_decisions(
            tuple(
                gate.decision_for_variant(variant, reason=reason, bucket=bucket_of(gate.name))
                for gate in self._gates
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
