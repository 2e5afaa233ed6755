"""The gate's shared state: environment, flags, release, step and history.

``GateState`` is immutable; every change makes a new one with the next
``version``. ``StateStore`` is the small interface the gate changes it
through (read, then compare-and-set on the version), so that a store shared
between processes can replace ``stores.memory.InMemoryStateStore`` without touching
routing: two processes that make the same change at the same moment cannot
both succeed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, ClassVar, Literal, NotRequired, TypedDict

from gate_middleware.domain.config import PromotionConfig, SloConfig
from gate_middleware.domain.environment import Environment
from gate_middleware.domain.plan import PlanPosition, PlanProgress
from gate_middleware.judge.statistics import release_start_log_evidence
from gate_middleware.judge.verdict import CanaryHealth, WindowStats

MAX_HISTORY = 1000
MAX_SAMPLES = 720


def this_process() -> str:
    """``host:pid`` of this process: an event says which process made it
    (with a shared store, any of the app's workers may)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RollbackEvent:
    """A rollback: of the whole release (``feature == "all"``) or of one flag.

    ``environment`` is the environment rolled back from; ``health`` holds
    the health figures at that moment. ``actor`` says who made it: "gate"
    (the gate itself), the admin token's name (and the CLI user), or
    "api" (a call in the app's code); ``process`` in which process
    (``host:pid``).
    """

    kind: ClassVar[str] = "rollback"

    reason: str
    timestamp: datetime
    environment: Environment
    feature: str = "all"
    health: CanaryHealth | None = None
    automatic: bool = False
    actor: str = "api"
    process: str = field(default_factory=this_process)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            # what it did: the release rolled back, or one flag turned off
            "action": "rollback" if self.feature == "all" else "disable_flag",
            "reason": self.reason,
            "timestamp": self.timestamp.isoformat(),
            "environment": self.environment.to_dict(),
            "feature": self.feature,
            "automatic": self.automatic,
            "actor": self.actor,
            "process": self.process,
            "health": self.health.to_dict() if self.health else None,
        }


@dataclass(frozen=True)
class PromotionEvent:
    """A promotion, a traffic change, the start of a release, or a step of its plan.

    ``action`` is "promote", "set_traffic", "start_canary", "restore",
    "retire", "reinstate", "create" (the rollout was added to a running
    app, ``Rollouts.create``), or
    one of the plan's: "plan_step" (the plan moved on), "hold" (a baked
    step is inconclusive), "await_approval" (a manual gate is ready),
    "pause", "resume", "skip" and "retry". ``reason`` says why; ``actor``
    who and ``process`` where (see ``RollbackEvent``).
    """

    kind: ClassVar[str] = "promotion"

    from_environment: Environment
    to_environment: Environment
    timestamp: datetime
    action: str = "promote"
    forced: bool = False
    health: CanaryHealth | None = None
    reason: str = ""
    actor: str = "api"
    process: str = field(default_factory=this_process)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "action": self.action,
            "from_environment": self.from_environment.to_dict(),
            "to_environment": self.to_environment.to_dict(),
            "timestamp": self.timestamp.isoformat(),
            "forced": self.forced,
            "reason": self.reason,
            "actor": self.actor,
            "process": self.process,
            "health": self.health.to_dict() if self.health else None,
        }


GateEvent = RollbackEvent | PromotionEvent


@dataclass(frozen=True)
class CarriedEvidence:
    """What a release's earlier steps carry into its current step, the
    ``step``-th (from 2): ``log_evidence`` is log S, by which the judge's
    lines move (``gate_middleware.judge.statistics.carry``), so that the
    false-rollback rate holds for the release's whole life."""

    log_evidence: float
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"log_evidence": self.log_evidence, "step": self.step}


@dataclass(frozen=True)
class GateState:
    """Everything the gate decides by, as one immutable value.

    ``stable_flags`` are on for every session; ``release_flags`` are on for
    sessions on the canary path only. ``release`` numbers the release in
    progress (it changes with every ``start_canary``); ``step`` numbers the
    stretches with one traffic split (it changes with every start, traffic
    change, promotion and rollback: each step is judged on fresh evidence,
    and outcomes routed under another step are dropped). ``plan`` is where
    the release stands in the config's rollout plan (``None`` without one).
    ``carried`` is what the release's earlier steps carry into the judging
    of this one (``None`` in a release's first step and in production).
    ``retired``: the rollout is no longer served (``PromotionGate.retire``):
    its flags are off for everyone and nothing is judged, until ``reinstate``.
    """

    environment: Environment
    stable_flags: frozenset[str] = frozenset()
    release_flags: frozenset[str] = frozenset()
    history: tuple[GateEvent, ...] = ()
    release: int = 0
    version: int = 0
    step: int = 0
    transition: str = ""  # a random id per change: (version, transition) is the state's identity
    plan: PlanPosition | None = None
    carried: CarriedEvidence | None = None
    retired: bool = False

    @property
    def carried_log_evidence(self) -> float:
        """log S of this step: what the release's earlier steps carry into it
        (a release's first step starts from ``release_start_log_evidence``)."""
        return release_start_log_evidence() if self.carried is None else self.carried.log_evidence

    @property
    def release_step(self) -> int:
        """Which step of its release this is, from 1."""
        return 1 if self.carried is None else self.carried.step

    def supersedes(self, held: GateState) -> bool:
        """Whether a process holding ``held`` takes this state up: a newer
        version, or the same version with another identity (a foreign write
        to the store). A version only grows, by one per change, so an older
        one is a read delivered late, and the same identity is nothing new."""
        return self.version > held.version or (
            self.version == held.version and self.transition != held.transition
        )

    def evolve(self, event: GateEvent | None = None, **changes: Any) -> GateState:
        """A copy with ``changes`` applied, ``event`` appended and the next version."""
        history = self.history
        if event is not None:
            history = (*history, event)[-MAX_HISTORY:]
        return replace(self, history=history, version=self.version + 1, **changes)


@dataclass(frozen=True)
class HealthSample:
    """The gate's health at one evaluation (``timestamp`` in Unix seconds)."""

    timestamp: float
    environment: str
    traffic_percent: float
    health_score: float
    canary_error_rate: float
    production_error_rate: float
    canary_p99_latency: float
    production_p99_latency: float
    canary_requests: int
    production_requests: int
    slo_compliance: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_NEXT_STAGE = {"canary": "staging", "staging": "production"}


class SideFigures(TypedDict):
    """One side's sampled sessions and its mean of a business metric."""

    sessions: int
    mean: float


class MetricView(TypedDict):
    """A business metric in the current step (``PromotionGate.status``):
    its definition, each side's figures, the canary's change relative to
    production and a 95 % interval (one look) of the means' difference."""

    name: str
    kind: str
    bad: str
    tolerance: float
    guardrail: bool
    canary: SideFigures
    production: SideFigures
    relative_change: float
    difference_interval: list[float]


class StoreView(TypedDict):
    """The stores' condition in a status: ``memory`` (this process's) or
    ``shared``; the worst condition of the two stores, and what is wrong."""

    kind: Literal["memory", "shared"]
    status: Literal["ok", "unreachable", "forbidden", "corrupt"]
    problems: NotRequired[list[str]]


class DeliveryView(TypedDict):
    """One attempt of a webhook delivery (``at``: Unix seconds)."""

    delivery: str
    event: str
    attempt: int
    at: float
    status: int | None
    error: str | None


class WebhookView(TypedDict):
    """A webhook in a status: its counts and latest attempts, never its secret."""

    url: str
    format: Literal["json", "slack"]
    outbox: Literal["durable", "memory"]
    pending: int
    attempted: int
    delivered: int
    retried: int
    failed: int
    dropped: int
    log: list[DeliveryView]
    trouble: NotRequired[str]


@dataclass(frozen=True)
class GateStatus:
    """What an operator looks at: ``PromotionGate.status()``."""

    rollout: str
    environment: Environment
    stable_flags: tuple[str, ...]
    release_flags: tuple[str, ...]
    health: CanaryHealth
    slo_compliance: float
    slo_met: bool
    canary: WindowStats
    stable: WindowStats
    recent_events: tuple[GateEvent, ...]
    config: PromotionConfig
    slo: SloConfig
    store: StoreView = field(default_factory=lambda: StoreView(kind="memory", status="ok"))
    plan: PlanProgress | None = None
    webhooks: tuple[WebhookView, ...] = ()
    metrics: tuple[MetricView, ...] = ()
    # track() reports of metrics the config does not define, by name (counted, ignored)
    undefined_metrics: dict[str, int] = field(default_factory=dict)
    release: int = 0  # which release this is (GateState.release): one number per start
    retired: bool = False  # not served (GateState.retired): every flag off

    @property
    def next_stage(self) -> str | None:
        return _NEXT_STAGE.get(self.environment.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout,
            "release": self.release,
            "retired": self.retired,
            "environment": self.environment.to_dict(),
            "traffic_percent": self.environment.traffic_percent,
            "next_stage": self.next_stage,
            "flags": {"stable": list(self.stable_flags), "release": list(self.release_flags)},
            "health": self.health.to_dict(),
            "slo": {
                "compliance": self.slo_compliance,
                "threshold": self.config.slo_threshold,
                "met": self.slo_met,
                "latency_objective_seconds": self.slo.latency_objective_seconds,
            },
            "windows": {
                "canary": self.canary.to_dict(),
                "stable": self.stable.to_dict(),
            },
            "config": {
                "auto_rollback_enabled": self.config.auto_rollback_enabled,
                "slo_threshold": self.config.slo_threshold,
                "rollback_window_seconds": self.config.rollback_window_seconds,
                "min_requests": self.config.min_requests,
                "evaluation_interval_seconds": self.config.evaluation_interval_seconds,
            },
            "recent_events": [event.to_dict() for event in self.recent_events],
            "store": dict(self.store),
            "plan": None if self.plan is None else dict(self.plan),
            "webhooks": [dict(webhook) for webhook in self.webhooks],
            "metrics": [dict(metric) for metric in self.metrics],
            "undefined_metrics": dict(self.undefined_metrics),
        }
