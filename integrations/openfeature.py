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

The details: ``variant`` is ``"canary"`` or ``"stable"``; ``reason`` is
``SPLIT`` (the sticky split decided), ``TARGETING_MATCH`` (the QA override
header picked the variant) or ``DISABLED`` (a flag the release does not
have, or one rolled back: off); the flag metadata holds ``gate.rollout``
and ``gate.bucket``. Without a request and without a targeting key the SDK
answers the default with ``TARGETING_KEY_MISSING``; a non-boolean type is
``TYPE_MISMATCH`` (the gate's flags are on or off).

``client.track("checkout_completed")`` (with ``TrackingEventDetails(value=42.5)``
for an amount) reports a business metric for the same session: the
request's, or the targeting key's outside a request
(``PromotionGate.track``). Tracking never raises, as OpenFeature asks: an
event with no session to count it for, or with a value that is not a
finite number, is logged and dropped.

Each evaluation is a ``feature_flag.evaluation`` event on the active span
(``gate_middleware.web.tracing``). With OpenFeature's own ``TracingHook``
(``openfeature-hooks-opentelemetry``) registered, pass
``emit_events=False`` so each evaluation is one event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import TargetingKeyMissingError, TypeMismatchError
    from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
    from openfeature.provider import AbstractProvider, Metadata
    from openfeature.track import TrackingEventDetails
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gate_middleware.integrations.openfeature needs the OpenFeature SDK: pip install "gate-middleware[openfeature]"'
    ) from exc

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.errors import ConfigError
from gate_middleware.gate import PromotionGate
from gate_middleware.web.context import current_decision
from gate_middleware.web.tracing import PROVIDER_NAME, add_evaluation_event

__all__ = ["GateProvider"]

logger = logging.getLogger("gate_middleware")

_OVERRIDE_PREFIX = "override:"


class GateProvider(AbstractProvider):
    """Boolean flags from the gate's routing decision."""

    def __init__(self, gate: PromotionGate, *, emit_events: bool = True) -> None:
        if not isinstance(gate, PromotionGate):
            raise ConfigError("gate", gate, "a PromotionGate")
        super().__init__()
        self.gate = gate
        self.emit_events = emit_events

    def get_metadata(self) -> Metadata:
        return Metadata(name=PROVIDER_NAME)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        decision = current_decision()
        if decision is None:
            key = evaluation_context.targeting_key if evaluation_context is not None else None
            if not key:
                raise TargetingKeyMissingError(
                    "outside a request, the evaluation context needs a targeting key "
                    "(the session or user id the middleware routes)"
                )
            decision = self.gate.route_request(key)
        return self._details(flag_key, decision)

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

    def _details(self, flag_key: str, decision: RoutingDecision) -> FlagResolutionDetails[bool]:
        state = self.gate.state
        known = flag_key in state.stable_flags or flag_key in state.release_flags
        value = decision.is_enabled(flag_key)
        if not known and not value:
            reason = Reason.DISABLED
        elif decision.reason.startswith(_OVERRIDE_PREFIX):
            reason = Reason.TARGETING_MATCH
        else:
            reason = Reason.SPLIT
        if self.emit_events:
            add_evaluation_event(flag_key, decision.variant, reason)
        return FlagResolutionDetails(
            value=value,
            reason=reason,
            variant=decision.variant,
            flag_metadata={"gate.rollout": self.gate.name, "gate.bucket": decision.bucket},
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
