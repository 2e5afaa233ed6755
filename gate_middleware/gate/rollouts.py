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

A set opened on a store (``Rollouts.from_url``) also serves the rollouts
added while the app runs: ``create`` (or ``POST /rollouts`` on the admin
API) keeps the new rollout's config in the store's catalog
(``RolloutCatalog``), and every process's set reads the catalog every
``refresh_seconds`` and opens the rollouts it has not yet served, after a
restart too. A set built from gates alone keeps its catalog in memory: a
rollout created there is this process's only, and the set says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gate_middleware.background import BackgroundThread
from gate_middleware.domain.clock import clock_readings
from gate_middleware.domain.config import PromotionConfig, SloConfig
from gate_middleware.domain.routing import VARIANTS, RoutingDecision, combine_decisions
from gate_middleware.domain.state import GateState, PromotionEvent
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.gate.autopilot import API_ACTOR, validate_actor
from gate_middleware.gate.front import PromotionGate, rollout_salt
from gate_middleware.stores.memory import InMemoryCatalog
from gate_middleware.stores.port import RolloutCatalog
from gate_middleware.stores.registry import open_catalog

logger = logging.getLogger("gate_middleware")

# Every live set, so a forked child (gunicorn --preload) replaces the locks
# it inherited (one held by the parent's catalog follower at the moment of
# the fork would never be released in the child) and reads the catalog
# again: threads do not survive a fork.
_SETS: weakref.WeakSet[Rollouts] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for rollouts in list(_SETS):
        rollouts._create_lock = threading.Lock()
        rollouts._lock = threading.Lock()
        if rollouts._follower is not None:
            rollouts._follower.ensure()  # its first read at once, on its own thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: How often a set opened on a store reads its catalog for rollouts added
#: by another process (seconds).
CATALOG_REFRESH_SECONDS = 1.0

#: ``callback(gate, previous, state)``: a rollout of the set took up a newer state.
SetCallback = Callable[[PromotionGate, GateState, GateState], None]


@dataclass(frozen=True)
class CatalogEntry:
    """A rollout added while the app ran: its config, who added it, when (Unix seconds)."""

    config: PromotionConfig
    actor: str
    added_at: float

    def encode(self) -> str:
        return json.dumps(
            {"config": self.config.to_table(), "actor": self.actor, "added_at": self.added_at},
            sort_keys=True,
        )

    @classmethod
    def decode(cls, name: str, text: str) -> CatalogEntry:
        """The entry kept under ``name``; ``ConfigError`` naming what is wrong."""
        where = f"catalog[{name!r}]"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(where, text[:80], f"a JSON object ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(where, text[:80], "a JSON object")
        config = PromotionConfig.from_table(data.get("config"), f"{where}.config")
        if config.name != name:
            raise ConfigError(f"{where}.config.name", config.name, f"the entry's name, {name!r}")
        actor, added_at = data.get("actor"), data.get("added_at")
        if not isinstance(actor, str) or isinstance(added_at, bool):
            raise ConfigError(f"{where}.actor", actor, "a text")
        if not isinstance(added_at, (int, float)) or not math.isfinite(added_at):
            raise ConfigError(f"{where}.added_at", added_at, "Unix seconds")
        return cls(config, actor, float(added_at))


class Rollouts:
    """An ordered set of ``PromotionGate``s, one per rollout name, served together.

    Give it to any middleware as ``gate=``. Lookup by name
    (``rollouts["checkout"]``), iteration in the order added, ``len`` and
    ``in`` work as on a mapping. ``name`` names the set itself in the
    middleware's fault metrics.
    """

    def __init__(
        self,
        gates: Iterable[PromotionGate] = (),
        *,
        name: str = "rollouts",
        **gate_options: Any,
    ) -> None:
        """``gate_options``: what ``create`` opens a new rollout's
        ``PromotionGate`` with (``slo``, ``clock``, ``meter_provider``...)."""
        if isinstance(gates, PromotionGate):
            raise ConfigError("gates", gates, "an iterable of PromotionGate (a list of gates)")
        self.name = name
        self._gate_options = gate_options
        self._url: str | None = None
        self._catalog: RolloutCatalog = InMemoryCatalog()
        self._created: dict[str, CatalogEntry] = {}
        #: Catalog entries not served, by name: why (read by the admin API).
        self._refused: dict[str, str] = {}
        self._follower: BackgroundThread | None = None
        self._catalog_down = False
        self._create_lock = threading.Lock()
        self._lock = threading.Lock()
        _SETS.add(self)
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

    @classmethod
    def from_url(
        cls,
        url: str,
        configs: Iterable[PromotionConfig] = (),
        slo: SloConfig | None = None,
        *,
        name: str = "rollouts",
        refresh_seconds: float = CATALOG_REFRESH_SECONDS,
        **gate_options: Any,
    ) -> Rollouts:
        """A set whose rollouts share the store at ``url``: one
        ``PromotionGate.from_url(url, config, slo, **gate_options)`` per
        config, and every rollout in the store's catalog (added while the
        app ran, by this process or another), which the set reads again
        every ``refresh_seconds``. The same configs in every process of the
        app; ``create`` adds one for all of them."""
        if isinstance(configs, PromotionConfig):
            raise ConfigError("configs", configs, "an iterable of PromotionConfig (a list)")
        if (
            isinstance(refresh_seconds, bool)
            or not isinstance(refresh_seconds, (int, float))
            or not 0 < refresh_seconds < math.inf
        ):
            raise ConfigError("refresh_seconds", refresh_seconds, "a positive number of seconds")
        catalog_options = {}
        if gate_options.get("key_prefix") is not None:
            catalog_options["key_prefix"] = gate_options["key_prefix"]
        catalog = open_catalog(url, **catalog_options)
        rollouts = cls(name=name, slo=slo, **gate_options)
        rollouts._url = url
        rollouts._catalog = catalog
        for config in configs:
            if not isinstance(config, PromotionConfig):
                raise ConfigError("configs", config, "PromotionConfig objects")
            rollouts.add(rollouts._open(config))
        rollouts._follow_catalog()
        rollouts._follower = BackgroundThread(
            f"gate-rollouts-{name}", rollouts._follow_catalog, refresh_seconds, wait_first=True
        )
        rollouts._follower.ensure()
        return rollouts

    def _open(self, config: PromotionConfig) -> PromotionGate:
        """A gate for ``config`` as this set opens its rollouts."""
        options = dict(self._gate_options)
        slo = options.pop("slo", None)
        if self._url is not None:
            return PromotionGate.from_url(self._url, config, slo, **options)
        return PromotionGate(config, slo, **options)

    # -- rollouts added while the app runs ------------------------------------

    @property
    def catalog_shared(self) -> bool:
        """Whether a rollout ``create`` adds reaches every process (a set
        opened on a store) or this process only (a set in memory)."""
        return self._catalog.shared

    @property
    def created(self) -> dict[str, CatalogEntry]:
        """The rollouts of the set that were added while the app ran, by name."""
        return dict(self._created)

    @property
    def refused(self) -> dict[str, str]:
        """Rollouts of the catalog this process does not serve, by name: why
        (their config is not valid here, or clashes with a rollout of the set)."""
        return dict(self._refused)

    def create(
        self, config: PromotionConfig | Mapping[str, Any], *, actor: str = API_ACTOR
    ) -> PromotionGate:
        """Add a rollout while the app runs, for every process of the set.

        ``config``: a ``PromotionConfig``, or a table of a scenario's keys
        (``PromotionConfig.from_table``: what ``POST /rollouts`` takes)
        without a ``store`` (the rollout lives in the set's). Kept in the
        store's catalog, so every process's set serves it within
        ``refresh_seconds`` and after restarts; its history starts with a
        ``create`` event by ``actor``. A ``ConfigError`` (and no change)
        when the config is not valid, its name is taken (here, or in the
        catalog by another process), or it clashes with a rollout of the set
        (salt, flags); ``PromotionError`` when the store cannot be written.
        """
        actor = validate_actor(actor)
        if not isinstance(config, PromotionConfig):
            if not isinstance(config, Mapping):
                raise ConfigError("config", config, "a PromotionConfig or a table of its keys")
            config = PromotionConfig.from_table(dict(config))
        if config.store is not None:
            raise ConfigError(
                "store", "…", "none: a rollout added to a set is kept in the set's store"
            )
        with self._create_lock:
            self._check_addable(config.name, config, config.feature_flags)
            entry = CatalogEntry(config, actor, self._wall_clock())
            text = entry.encode()
            if config.name in self._catalog.entries() or not (
                self._catalog.add(config.name, text)
                # a retried add whose first try went through finds its own entry
                or self._catalog.entries().get(config.name) == text
            ):
                raise ConfigError(
                    "name",
                    config.name,
                    "a rollout name not yet taken: the store's catalog holds one of that name "
                    "(added by another process)",
                )
            gate = self._open_and_add(entry)
            flags = ", ".join(config.feature_flags) or "none"
            gate._record("create", f"added while the app runs (flags: {flags})", actor)
        if not self._catalog.shared:
            logger.warning(
                "rollout %r was added to this process only: its set keeps no store, so other "
                "worker processes do not serve it and it is gone after a restart "
                "(open the set with Rollouts.from_url to share it)",
                config.name,
            )
        return gate

    def _restore_lost(self, entries: dict[str, str]) -> None:
        """Write back the rollouts this process serves from the catalog that
        the catalog no longer holds (a Redis restarted without persistence,
        flushed, or failed over before a replica had them), so that a worker
        started later serves them too."""
        for name, entry in self._created.items():
            if name in entries or self._by_name.get(name) is None:
                continue
            try:
                if self._catalog.add(name, entry.encode()):
                    logger.warning(
                        "Rollouts %r: the catalog had lost rollout %r; written back",
                        self.name,
                        name,
                    )
            except PromotionError:
                return  # the next read tries again

    def _open_and_add(self, entry: CatalogEntry) -> PromotionGate:
        gate = self._open(entry.config)
        try:
            self.add(gate)
        except BaseException:
            gate.close()
            raise
        self._created = {**self._created, entry.config.name: entry}
        return gate

    def _wall_clock(self) -> float:
        _, wall_clock = clock_readings(
            self._gate_options.get("clock"), self._gate_options.get("wall_clock")
        )
        return wall_clock()

    def _follow_catalog(self) -> None:
        """Open the catalog's rollouts this process does not serve yet."""
        try:
            entries = self._catalog.entries()
        except PromotionError as exc:
            if not self._catalog_down:  # once per outage
                self._catalog_down = True
                logger.warning("Rollouts %r: %s; serving the rollouts it has", self.name, exc)
            return
        if self._catalog_down:
            self._catalog_down = False
            logger.info("Rollouts %r: the catalog of rollouts is readable again", self.name)
        self._restore_lost(entries)
        for name, text in entries.items():
            if name in self._created or name in self._refused:
                continue
            try:
                entry = CatalogEntry.decode(name, text)
                with self._create_lock:  # (a create of this process may have added it meanwhile)
                    if name in self._created:
                        continue
                    if name in self._by_name:
                        raise ConfigError(
                            "name", name, "a rollout the app's code does not declare too"
                        )
                    self._check_addable(name, entry.config, entry.config.feature_flags)
                    self._open_and_add(entry)
            except ConfigError as exc:
                self._refused = {**self._refused, name: str(exc)}
                logger.error(
                    "Rollouts %r: rollout %r of the catalog is not served: %s", self.name, name, exc
                )
                continue
            logger.info(
                "Rollouts %r: serving rollout %r (added by %s)", self.name, name, entry.actor
            )

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
            state = gate.state
            self._check_addable(
                gate.name,
                gate.config,
                {*gate.config.feature_flags, *state.stable_flags, *state.release_flags},
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

    def _check_addable(self, name: str, config: PromotionConfig, flags: Iterable[str]) -> None:
        """A ``ConfigError`` when a rollout ``name`` with ``config`` and
        ``flags`` (declared or on) could not join the set."""
        if name in self._by_name:
            raise ConfigError(
                "name", name, f"a rollout name not yet in the set (it holds {self._listed()})"
            )
        salt = rollout_salt(config)
        for other in self._gates:
            if rollout_salt(other.config) == salt:
                raise ConfigError(
                    "salt",
                    salt,
                    f"a routing salt of one rollout only: rollout {other.name!r} routes by "
                    f"{salt!r} too, which would put every session on the same path in both",
                )
        for flag in sorted(flags):
            owner = self._owners.get(flag) or self._using(flag)
            if owner is not None:
                raise ConfigError(
                    "feature_flags",
                    flag,
                    f"a flag of one rollout only: {flag!r} belongs to rollout {owner!r}, "
                    f"and rollout {name!r} claims it too",
                )

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
            if name in self._created:  # not opened again from the catalog
                self._created = {k: v for k, v in self._created.items() if k != name}
                self._refused = {**self._refused, name: "removed from this process's set"}
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
        """Close every rollout's gate (and stop reading the catalog)."""
        if self._follower is not None:
            self._follower.close()
        for gate in self._gates:
            gate.close()
        self._catalog.close()

    def __repr__(self) -> str:
        return f"Rollouts({self._listed()})"
