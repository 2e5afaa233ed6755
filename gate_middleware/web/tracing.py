"""The decision on the active span, and flag evaluations as span events.

Per OpenTelemetry's semantic conventions for feature flags: each flag read
through the OpenFeature provider is a ``feature_flag.evaluation`` event with
``feature_flag.key``, ``feature_flag.result.value`` (the boolean answered),
``feature_flag.result.variant``, ``feature_flag.result.reason`` and
``feature_flag.provider.name``. Not ``feature_flag.context.id``: the
evaluation context's id is the session id or the targeting key, which no
attribute holds. The request's span carries ``gate.variant``, ``gate.rollout``,
``gate.environment`` and ``gate.bucket`` (so traces split by variant);
under several rollouts also ``gate.rollouts`` and ``gate.canary_rollouts``
(the rollouts that put the request on their canary path). The
session id is never an attribute. ``opentelemetry-api`` only: without an SDK
(or outside a sampled span) the span is not recording and nothing is done.
"""

from __future__ import annotations

from opentelemetry import trace

from gate_middleware.domain.routing import RoutingDecision

PROVIDER_NAME = "gate-middleware"
EVALUATION_EVENT = "feature_flag.evaluation"


def annotate_span(decision: RoutingDecision, rollout: str) -> None:
    """Put the routing decision on the active span, if one is recording."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "gate.variant": decision.variant,
            "gate.rollout": rollout,
            "gate.environment": decision.target_environment.name,
            "gate.bucket": decision.bucket,
        }
    )
    if decision.parts:  # several rollouts: which decided, and which put it on a canary path
        span.set_attributes(
            {
                "gate.rollouts": [part.rollout for part in decision.parts],
                "gate.canary_rollouts": [part.rollout for part in decision.parts if part.is_canary],
            }
        )


def add_evaluation_event(
    flag_key: str, variant: str, reason: str, *, value: bool | None = None
) -> None:
    """A ``feature_flag.evaluation`` event on the active span, if one is
    recording; ``value`` is the flag's answer (``feature_flag.result.value``)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, str | bool] = {
        "feature_flag.key": flag_key,
        "feature_flag.result.variant": variant,
        "feature_flag.result.reason": reason.lower(),
        "feature_flag.provider.name": PROVIDER_NAME,
    }
    if value is not None:
        attributes["feature_flag.result.value"] = value
    span.add_event(EVALUATION_EVENT, attributes)
