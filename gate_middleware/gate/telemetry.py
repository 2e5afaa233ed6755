"""The gate's own OpenTelemetry instruments (``opentelemetry-api`` only).

Observable gauges (read when the app's SDK collects):

- ``gate_middleware.gate.health_score`` (unit ``1``): the canary health
  score; no point while the verdict is INSUFFICIENT_DATA (no evidence is
  not a score)
- ``gate_middleware.gate.error_rate`` (unit ``1``): per ``gate.variant``
- ``gate_middleware.gate.latency.p99`` (unit ``s``): per ``gate.variant``
- ``gate_middleware.gate.traffic`` (unit ``%``): the canary's share, one
  series whatever the stage
- ``gate_middleware.gate.verdict`` (unit ``1``): one point per
  ``gate.verdict`` (HEALTHY, MONITOR, ROLLBACK, INSUFFICIENT_DATA), 1 for
  the current verdict and 0 for the others, so an alert can tell a stuck
  INSUFFICIENT_DATA from HEALTHY
- ``gate_middleware.gate.stage`` (unit ``1``): one point per
  ``gate.environment`` (canary, staging, production), 1 for the current one
- ``gate_middleware.store.status`` (unit ``1``): one point per
  ``gate.store.status`` (ok, unreachable, forbidden, corrupt), 1 for the
  stores' worst condition now: a judge that cannot see the rollout's
  outcomes (an unreachable or forbidden window store) shows here

Business metrics (only for a rollout that defines them), per ``gate.metric``
(a name from the config: bounded) and ``gate.variant``:

- ``gate_middleware.metric.value`` (unit ``1``): the metric per sampled
  session in the current step (the share converting, or the mean total)
- ``gate_middleware.metric.sessions`` (unit ``{session}``): the sessions
  sampled

Counters, exported at 0 for every attribute set from the start (so
``increase(...[5m]) > 0`` fires on the first event, not the second):

- ``gate_middleware.gate.rollbacks``: with ``gate.environment`` (rolled back
  from) and ``gate.automatic``
- ``gate_middleware.gate.promotions``: with ``gate.environment`` (promoted to)

Every point carries ``gate.rollout`` (the rollout name). The meter carries
the semantic conventions' ``schema_url``.

The gauges are read when the app's SDK collects; the callbacks hold only a
weak reference to the gate, so a discarded gate does not stay alive.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from gate_middleware.domain.environment import CANARY_STAGE, PRODUCTION, STAGING, Environment
from gate_middleware.domain.naming import SCHEMA_URL
from gate_middleware.domain.routing import CANARY, STABLE
from gate_middleware.domain.state import MetricView, StoreView
from gate_middleware.judge.statistics import HEALTHY, INSUFFICIENT_DATA, MONITOR, ROLLBACK
from gate_middleware.judge.verdict import CanaryHealth

METER_NAME = "gate_middleware"
VERDICTS = (HEALTHY, MONITOR, ROLLBACK, INSUFFICIENT_DATA)
STAGES = (CANARY_STAGE, STAGING, PRODUCTION)
STORE_CONDITIONS = ("ok", "unreachable", "forbidden", "corrupt")  # stores.port.StoreCondition
logger = logging.getLogger("gate_middleware")


class ObservedGate(Protocol):
    """What the instruments read from a gate (``ObservedGate`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def environment(self) -> Environment: ...

    def health_snapshot(self) -> CanaryHealth: ...

    def metric_figures(self) -> tuple[MetricView, ...]: ...

    def store_status(self) -> StoreView: ...


class GateTelemetry:
    """Creates the gate's instruments once; ``count_*`` are called on events."""

    def __init__(
        self, gate: ObservedGate, meter_provider: MeterProvider | None, *, metrics: bool = False
    ) -> None:
        from gate_middleware.version import __version__

        meter = get_meter(
            METER_NAME, __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
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
            yield Observation(gate.environment.traffic_percent, rollout)

        def verdict(gate: ObservedGate, health: CanaryHealth) -> Iterable[Observation]:
            current = health.verdict
            for name in VERDICTS:
                yield Observation(int(name == current), {**rollout, "gate.verdict": name})

        def stage(gate: ObservedGate, health: CanaryHealth) -> Iterable[Observation]:
            current = gate.environment.name
            for name in STAGES:
                yield Observation(int(name == current), {**rollout, "gate.environment": name})

        def observe_store(options: CallbackOptions) -> Iterable[Observation]:
            gate = gate_ref()
            if gate is None:
                return []
            current = gate.store_status()["status"]
            return [
                Observation(int(name == current), {**rollout, "gate.store.status": name})
                for name in STORE_CONDITIONS
            ]

        gauges = (
            (
                "health_score",
                health_score,
                "1",
                "Canary health score, 0..1 (0.9 and above HEALTHY, below 0.8 ROLLBACK)",
            ),
            ("error_rate", error_rate, "1", "Error rate per variant over the rollback window"),
            ("latency.p99", p99, "s", "p99 request duration per variant over the rollback window"),
            ("traffic", traffic, "%", "Share of sessions on the canary path"),
            ("verdict", verdict, "1", "The judge's current verdict: 1 for it, 0 for the others"),
            ("stage", stage, "1", "The release's current stage: 1 for it, 0 for the others"),
        )
        for name, read, unit, description in gauges:
            meter.create_observable_gauge(
                f"gate_middleware.gate.{name}",
                callbacks=[observe(read)],
                unit=unit,
                description=description,
            )
        meter.create_observable_gauge(
            "gate_middleware.store.status",
            callbacks=[observe_store],
            unit="1",
            description="The stores' worst condition: 1 for it, 0 for the others",
        )
        if metrics:

            def business(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
                def callback(options: CallbackOptions) -> Iterable[Observation]:
                    current = gate_ref()
                    if current is None:
                        return []
                    points = []
                    for view in current.metric_figures():
                        for variant, side in ((CANARY, "canary"), (STABLE, "production")):
                            figures = view["canary"] if side == "canary" else view["production"]
                            attributes = {
                                **rollout,
                                "gate.metric": view["name"],
                                "gate.variant": variant,
                            }
                            value = figures["mean"] if field == "mean" else figures["sessions"]
                            points.append(Observation(value, attributes))
                    return points

                return callback

            meter.create_observable_gauge(
                "gate_middleware.metric.value",
                callbacks=[business("mean")],
                unit="1",
                description="A business metric per sampled session in the current step, per variant",
            )
            meter.create_observable_gauge(
                "gate_middleware.metric.sessions",
                callbacks=[business("sessions")],
                unit="{session}",
                description="Sessions sampled for the business metrics in the current step, per variant",
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
        try:
            for name in STAGES:
                for automatic in (False, True):
                    self._add_rollback(name, automatic, 0)
            for name in (STAGING, PRODUCTION):
                self._promotions.add(0, {"gate.rollout": self._rollout, "gate.environment": name})
        except Exception:  # a broken metrics pipeline must not stop the gate
            logger.warning("Exporting the gate's counters at 0 failed", exc_info=True)

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

    def _add_rollback(self, environment: str, automatic: bool, amount: int = 1) -> None:
        self._rollbacks.add(
            amount,
            {
                "gate.rollout": self._rollout,
                "gate.environment": environment,
                "gate.automatic": automatic,
            },
        )
