"""The gate's own OpenTelemetry instruments (``opentelemetry-api`` only).

Observable gauges (read when the app's SDK collects):

- ``gate_middleware.gate.health_score`` (unit ``1``): the canary health
  score; no point while the verdict is INSUFFICIENT_DATA (no evidence is
  not a score)
- ``gate_middleware.gate.error_rate`` (unit ``1``): per ``gate.variant``
- ``gate_middleware.gate.latency.p99`` (unit ``s``): per ``gate.variant``
- ``gate_middleware.gate.traffic`` (unit ``%``): with ``gate.environment``

Counters:

- ``gate_middleware.gate.rollbacks``: with ``gate.environment`` (rolled back
  from) and ``gate.automatic``
- ``gate_middleware.gate.promotions``: with ``gate.environment`` (promoted to)

Every point carries ``gate.rollout`` (the rollout name).

The gauges are read when the app's SDK collects; the callbacks hold only a
weak reference to the gate, so a discarded gate does not stay alive.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from gate_middleware.environment import Environment
from gate_middleware.health import CanaryHealth
from gate_middleware.routing import CANARY, STABLE

METER_NAME = "gate_middleware"
logger = logging.getLogger("gate_middleware")


class ObservedGate(Protocol):
    """What the instruments read from a gate (``ObservedGate`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def environment(self) -> Environment: ...

    def health_snapshot(self) -> CanaryHealth: ...


class GateTelemetry:
    """Creates the gate's instruments once; ``count_*`` are called on events."""

    def __init__(self, gate: ObservedGate, meter_provider: MeterProvider | None) -> None:
        from gate_middleware import __version__

        meter = get_meter(METER_NAME, __version__, meter_provider=meter_provider)
        self._rollout = gate.name
        gate_ref = weakref.ref(gate)

        def observe(
            read: Callable[[ObservedGate, CanaryHealth], Iterable[Observation]],
        ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                current = gate_ref()
                if current is None:
                    return []
                return list(read(current, current.health_snapshot()))

            return callback

        rollout = {"gate.rollout": self._rollout}

        def health_score(gate: ObservedGate, health: CanaryHealth) -> Iterable[Observation]:
            if health.sufficient_data:
                yield Observation(health.health_score, rollout)

        def error_rate(gate: ObservedGate, health: CanaryHealth) -> Iterable[Observation]:
            yield Observation(health.canary_error_rate, {**rollout, "gate.variant": CANARY})
            yield Observation(health.production_error_rate, {**rollout, "gate.variant": STABLE})

        def p99(gate: ObservedGate, health: CanaryHealth) -> Iterable[Observation]:
            yield Observation(health.canary_p99_latency, {**rollout, "gate.variant": CANARY})
            yield Observation(health.production_p99_latency, {**rollout, "gate.variant": STABLE})

        def traffic(gate: ObservedGate, health: CanaryHealth) -> Iterable[Observation]:
            environment = gate.environment
            yield Observation(
                environment.traffic_percent, {**rollout, "gate.environment": environment.name}
            )

        meter.create_observable_gauge(
            "gate_middleware.gate.health_score",
            callbacks=[observe(health_score)],
            unit="1",
            description="Canary health score, 0..1 (0.9 and above HEALTHY, below 0.8 ROLLBACK)",
        )
        meter.create_observable_gauge(
            "gate_middleware.gate.error_rate",
            callbacks=[observe(error_rate)],
            unit="1",
            description="Error rate per variant over the rollback window",
        )
        meter.create_observable_gauge(
            "gate_middleware.gate.latency.p99",
            callbacks=[observe(p99)],
            unit="s",
            description="p99 request duration per variant over the rollback window",
        )
        meter.create_observable_gauge(
            "gate_middleware.gate.traffic",
            callbacks=[observe(traffic)],
            unit="%",
            description="Share of sessions on the canary path",
        )
        self._rollbacks = meter.create_counter(
            "gate_middleware.gate.rollbacks",
            unit="{rollback}",
            description="Rollbacks of a release or of one flag",
        )
        self._promotions = meter.create_counter(
            "gate_middleware.gate.promotions",
            unit="{promotion}",
            description="Promotions to staging or production",
        )

    def count_rollback(self, environment: str, automatic: bool) -> None:
        try:
            self._add_rollback(environment, automatic)
        except Exception:  # a broken metrics pipeline must not undo a rollback
            logger.warning("Counting a rollback failed", exc_info=True)

    def count_promotion(self, environment: str) -> None:
        try:
            self._promotions.add(
                1, {"gate.rollout": self._rollout, "gate.environment": environment}
            )
        except Exception:  # a broken metrics pipeline must not undo a promotion
            logger.warning("Counting a promotion failed", exc_info=True)

    def _add_rollback(self, environment: str, automatic: bool) -> None:
        self._rollbacks.add(
            1,
            {
                "gate.rollout": self._rollout,
                "gate.environment": environment,
                "gate.automatic": automatic,
            },
        )
