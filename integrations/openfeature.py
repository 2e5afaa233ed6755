"""``GateProvider``: the gate as an OpenFeature provider.

::

    from openfeature import api
    from gate_middleware.integrations.openfeature import GateProvider

    api.set_provider(GateProvider(gate))
    client = api.get_client()

    client.get_boolean_value("new_api", False)   # in a request: that request's decision

Inside a request served through the gate's middleware (any framework), a
boolean flag answers from the request's own decision
(``gate_middleware.current_decision()``): the same variant, the same flags
the view sees. Outside a request (a worker, a script), the evaluation
context's targeting key is routed the same way the middleware routes a
session id (or a ``session_key``'s result), so a user id gives that user's
answer everywhere.

The details: ``variant`` is ``"canary"`` or ``"stable"`` (the session's
path); ``reason`` is ``SPLIT`` (the sticky split decided: on for canary
sessions, off for stable ones, whatever the default) or
``TARGETING_MATCH`` (the QA override header picked the variant); the flag
metadata holds ``gate.rollout`` and ``gate.bucket``. A flag is *known*
when the config declares it (``PromotionConfig.feature_flags``), when it
is on now for anyone (a stable or release flag:
``PromotionGate.is_feature_enabled``), when it is a flag of the release
the plan last ran (``GateState.plan.release_flags``, kept for ``retry``)
or when ``disable_feature`` turned it off (while the history holds that
event). A known flag that is on for no one (rolled back, disabled) answers
the caller's default with ``DISABLED``; an unknown one the caller's
default with ``ERROR`` and ``FLAG_NOT_FOUND`` (a release's flags that the
config does not declare are unknown again once it is rolled back, without
a plan). Without a request and without a targeting key the SDK answers
the default with ``TARGETING_KEY_MISSING``; a non-boolean type is
``TYPE_MISMATCH`` (the gate's flags are on or off).

Each change of what a flag answers emits ``PROVIDER_CONFIGURATION_CHANGED``
with ``flags_changed``, the flags it changed (sorted): a rollback (the
release's flags), a promotion or traffic change (the release's flags),
the start of a release, a flag turned on or off. A change of environment
that changes no flag's answer emits it with an empty list. Changes made by
other processes of a shared rollout (SQLite, Redis) emit it too, as this
process adopts them (``PromotionGate.on_state_change``); the metadata
holds ``gate.rollout``, ``gate.environment``, ``gate.traffic_percent`` and
``gate.version``.

``client.track("checkout_completed")`` (with ``TrackingEventDetails(value=42.5)``
for an amount) reports a business metric for the same session: the
request's, or the targeting key's outside a request
(``PromotionGate.track``). Tracking never raises, as OpenFeature asks: an
event with no session to count it for, or with a value that is not a
finite number, is logged and dropped.

Each evaluation of a known flag is a ``feature_flag.evaluation`` event on
the active span (``gate_middleware.web.tracing``). With OpenFeature's own
``TracingHook`` (``openfeature-hooks-opentelemetry``) registered, pass
``emit_events=False`` so each evaluation is one event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEventDetails
    from openfeature.exception import (
        FlagNotFoundError,
        TargetingKeyMissingError,
        TypeMismatchError,
    )
    from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
    from openfeature.provider import AbstractProvider, Metadata
    from openfeature.track import TrackingEventDetails
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gate_middleware.integrations.openfeature needs the OpenFeature SDK: pip install "gate-middleware[openfeature]"'
    ) from exc

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.domain.state import GateState, RollbackEvent
from gate_middleware.errors import ConfigError
from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.web.context import current_decision
from gate_middleware.web.tracing import PROVIDER_NAME, add_evaluation_event

__all__ = ["GateProvider"]

logger = logging.getLogger("gate_middleware")

_OVERRIDE_PREFIX = "override:"


def _exposure(state: GateState, flag: str) -> tuple[object, ...]:
    """Who ``flag`` is on for in ``state``: everyone, the canary path of a
    release in an environment (its share), or no one (``()``: a retired rollout's too)."""
    if state.retired:
        return ()
    if flag in state.stable_flags:
        return ("everyone",)
    if flag in state.release_flags:
        return ("release", state.release, state.environment)
    return ()


def _flags_changed(previous: GateState, state: GateState) -> list[str]:
    """The flags whose answer may differ between ``previous`` and ``state``
    (turned on or off, or on for another share of sessions), sorted."""
    flags = (
        previous.stable_flags | previous.release_flags | state.stable_flags | state.release_flags
    )
    return sorted(flag for flag in flags if _exposure(previous, flag) != _exposure(state, flag))


class GateProvider(AbstractProvider):
    """Boolean flags from the gate's routing decision."""

    def __init__(self, gate: PromotionGate | Rollouts, *, emit_events: bool = True) -> None:
        if not isinstance(gate, PromotionGate | Rollouts):
            raise ConfigError("gate", gate, "a PromotionGate, or Rollouts for several rollouts")
        super().__init__()
        self.gate = gate
        self.emit_events = emit_events
        #: Each rollout's known flags, computed once per state: {name: (state, flags)}.
        self._known: dict[str, tuple[GateState | None, frozenset[str]]] = {}
        if isinstance(gate, Rollouts):
            gate.on_state_change(self._state_changed)
        else:
            gate.on_state_change(lambda previous, state: self._state_changed(gate, previous, state))

    def _rollout_of(self, flag_key: str) -> tuple[PromotionGate, GateState, bool] | None:
        """(the gate of the rollout ``flag_key`` belongs to, its state, whether
        the flag is on there for anyone), or ``None`` when no rollout knows it."""
        gate = self.gate
        if isinstance(gate, PromotionGate):
            gates: tuple[PromotionGate, ...] = (gate,)
        else:
            owner = gate.owner(flag_key)
            gates = (owner,) if owner is not None else gate.gates
        for candidate in gates:
            state = candidate.state
            on = not state.retired and (
                flag_key in state.stable_flags or flag_key in state.release_flags
            )
            if on or flag_key in self._known_flags(candidate, state):
                return candidate, state, on
        return None

    def _rollout_names(self) -> str:
        gate = self.gate
        names = [gate.name] if isinstance(gate, PromotionGate) else list(gate.names)
        return ", ".join(repr(name) for name in names) or "none"

    def get_metadata(self) -> Metadata:
        return Metadata(name=PROVIDER_NAME)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        decision = current_decision()
        found = self._rollout_of(flag_key)
        if found is None:
            if decision is None or not decision.is_enabled(flag_key):
                raise FlagNotFoundError(
                    f"{flag_key!r} is not a flag of rollout {self._rollout_names()} (neither "
                    "declared in its config's feature_flags nor on, nor turned off by "
                    "disable_feature)"
                )
            return self._details(flag_key, default_value, decision, True, decision.rollout)
        gate, _, on = found
        if decision is not None and decision.parts:  # several rollouts decided: this one's
            decision = decision.rollouts.get(gate.name, decision)
        if decision is None:
            key = evaluation_context.targeting_key if evaluation_context is not None else None
            if not key:
                raise TargetingKeyMissingError(
                    "outside a request, the evaluation context needs a targeting key "
                    "(the session or user id the middleware routes)"
                )
            decision = gate.route_request(key)
        return self._details(flag_key, default_value, decision, on, gate.name)

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """Report the business metric ``tracking_event_name`` for the request's
        session (or the targeting key's), ``value`` from the details (1 without)."""
        value = tracking_event_details.value if tracking_event_details is not None else None
        decision = current_decision()
        key = evaluation_context.targeting_key if evaluation_context is not None else None
        try:
            if decision is None:
                if not key:
                    logger.warning(
                        "track(%r) outside a request without a targeting key: no session to "
                        "count it for, dropped",
                        tracking_event_name,
                    )
                    return
                decision = self.gate.route_request(key)
            decision.track(tracking_event_name, 1.0 if value is None else value)
        except Exception as exc:  # OpenFeature's track never raises
            logger.warning("track(%r) dropped: %s", tracking_event_name, exc)

    def _known_flags(self, gate: PromotionGate, state: GateState) -> frozenset[str]:
        """The flags of the rollout in ``state`` (see the module's
        documentation), computed once per state."""
        held, known = self._known.get(gate.name, (None, frozenset()))
        if held is state:
            return known
        plan = state.plan.release_flags if state.plan is not None else ()
        disabled = [
            event.feature
            for event in state.history
            if isinstance(event, RollbackEvent) and event.feature != "all"
        ]
        known = frozenset(gate.config.feature_flags).union(
            state.stable_flags, state.release_flags, plan, disabled
        )
        self._known[gate.name] = (state, known)
        return known

    def _state_changed(self, gate: PromotionGate, previous: GateState, state: GateState) -> None:
        """The gate took up ``state`` (a change of this process's or, with a
        shared store, another's): tell OpenFeature which flags it changed."""
        changed = _flags_changed(previous, state)
        if not changed and previous.environment == state.environment:
            return  # a plan's hold, pause or resume: no flag answers otherwise
        message = f"rollout {gate.name!r}: {state.environment}"
        latest = state.history[-1:]
        if latest and latest != previous.history[-1:] and latest[0].reason:
            message += f" ({latest[0].reason})"
        self.emit_provider_configuration_changed(
            ProviderEventDetails(
                flags_changed=changed,
                message=message,
                metadata={
                    "gate.rollout": gate.name,
                    "gate.environment": state.environment.name,
                    "gate.traffic_percent": state.environment.traffic_percent,
                    "gate.version": state.version,
                },
            )
        )

    def _details(
        self, flag_key: str, default_value: bool, decision: RoutingDecision, on: bool, rollout: str
    ) -> FlagResolutionDetails[bool]:
        value = decision.is_enabled(flag_key)
        if not value and not on:  # a known flag on for no one: the caller's default
            value = default_value
            reason = Reason.DISABLED
        elif decision.reason.startswith(_OVERRIDE_PREFIX):
            reason = Reason.TARGETING_MATCH
        else:
            reason = Reason.SPLIT
        if self.emit_events:
            add_evaluation_event(flag_key, decision.variant, reason, value=value)
        return FlagResolutionDetails(
            value=value,
            reason=reason,
            variant=decision.variant,
            flag_metadata={"gate.rollout": rollout, "gate.bucket": decision.bucket},
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        raise TypeMismatchError(f"{flag_key!r} is a boolean flag")

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        raise TypeMismatchError(f"{flag_key!r} is a boolean flag")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        raise TypeMismatchError(f"{flag_key!r} is a boolean flag")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        raise TypeMismatchError(f"{flag_key!r} is a boolean flag")
