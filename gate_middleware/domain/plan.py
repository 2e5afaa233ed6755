"""The rollout plan: which step comes next, and when (pure: state in, action out).

A ``RolloutPlan`` is the guide's workflow written down: canary steps of
traffic percentages (``1 → 5 → 10 → 25 → 50`` by default), each with a
minimum bake time and the evidence it needs, then staging (with its bake),
then production. A step may be a manual gate (Argo Rollouts'
``pause: {}``): once it has baked and is healthy, the plan waits there for
a person to ``resume`` it.

Where a release stands in its plan is a ``PlanPosition``, kept in the
gate's shared ``GateState`` (so every process of a shared gate follows
the same plan, and the compare-and-set on the state makes each step once).

``next_action`` decides, from the plan, the position, the judge's verdict
and the time (Unix seconds, passed in), what the gate should do now. It
reads no clock, takes no lock and does no I/O; the gate carries the action
out:

- ``ADVANCE`` when the step has baked, holds ``min_requests`` canary
  outcomes and the verdict is HEALTHY (and, at a manual gate, a person
  approved it);
- ``HOLD`` (once per step; the gate records and announces it) when the step
  has baked but the evidence is inconclusive (MONITOR or INSUFFICIENT_DATA);
- ``PAUSE`` when it stayed inconclusive for ``inconclusive_limit_seconds``
  (Argo's ``inconclusiveLimit``);
- ``AWAIT_APPROVAL`` at a manual gate that is ready but not approved (once);
- ``PAUSE`` too on a ROLLBACK verdict the gate may not act on
  (``auto_rollback_enabled=False``): held for a person, announced;
- ``WAIT`` otherwise. A ROLLBACK verdict is otherwise the gate's own
  business: it rolls back whatever the plan says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypedDict

from gate_middleware.domain.environment import CANARY_STAGE, PRODUCTION, STAGING, Stage
from gate_middleware.errors import ConfigError

HEALTHY = (
    "HEALTHY"  # the judge's verdicts (gate_middleware.judge.statistics), repeated to stay pure
)
ROLLBACK = "ROLLBACK"
#: In a pause's reason when the verdict is ROLLBACK and the gate may not act
#: on it (``status --wait`` reads it as a failed release).
ROLLBACK_HELD = "the verdict is ROLLBACK"

MAX_STEP_RATIO = 5.0  # the guide: never jump by more than 5x traffic

# What the gate should do (next_action's answer).
WAIT = "wait"
ADVANCE = "advance"
HOLD = "hold"
PAUSE = "pause"
AWAIT_APPROVAL = "await_approval"
ROLL_BACK = "roll_back"  # a deadline passed and the plan says: roll back
ON_DEADLINE = ("pause", "rollback")  # what a passed deadline does (RolloutPlan.on_deadline)

# Where a plan stands (PlanPosition.status).
PlanState = Literal["running", "paused", "done", "rolled_back", "aborted"]
RUNNING: PlanState = "running"
PAUSED: PlanState = "paused"
DONE: PlanState = "done"
ROLLED_BACK: PlanState = "rolled_back"
ABORTED: PlanState = "aborted"
STATUSES: tuple[PlanState, ...] = (RUNNING, PAUSED, DONE, ROLLED_BACK, ABORTED)


class StepView(TypedDict):
    """A step as ``to_dict`` shows it."""

    stage: Stage
    traffic_percent: float
    bake_seconds: float
    min_requests: int | None
    require_healthy: bool
    manual: bool
    label: str


class PositionView(TypedDict):
    """A position as ``to_dict`` shows it (Unix seconds)."""

    index: int
    entered_at: float
    status: PlanState
    resumed_at: float
    held: bool
    awaiting: bool
    approved: bool
    reason: str
    release_flags: list[str]


class BakeView(TypedDict):
    elapsed_seconds: float
    required_seconds: float
    fraction: float


class PlanView(TypedDict):
    """A plan as ``RolloutPlan.to_dict`` shows it."""

    steps: list[StepView]
    inconclusive_limit_seconds: float


class PlanProgress(PlanView):
    """``PromotionGate.plan_status()``: the plan, where the release stands in
    it, the current step's bake and the ETA (Unix seconds; ``None`` when a
    person or an inconclusive verdict decides it). Without a release in
    progress: ``position``, ``current`` and ``eta`` are ``None``, ``bake``
    and ``eta_seconds`` too."""

    position: PositionView | None
    current: StepView | None
    bake: BakeView | None
    eta: float | None
    eta_seconds: float | None
    # what the plan waits for now, as the last evaluation found it ("canary 5%
    # holds: 12 of 40 canary requests"); None when it waits for nothing
    waiting_for: str | None


HOUR = 3600.0


def _seconds(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field_name, value, "a non-negative number of seconds")
    number = float(value)
    if not 0.0 <= number < math.inf:
        raise ConfigError(field_name, value, "a non-negative number of seconds")
    return number


@dataclass(frozen=True)
class PlanStep:
    """One step: a canary at ``traffic_percent`` %, staging or production.

    ``bake_seconds``: the least time at the step before it may advance.
    ``min_requests``: canary outcomes the step needs (``None``: the
    config's ``min_requests``). ``require_healthy``: advance only on a
    HEALTHY verdict (``False``: baking and the evidence suffice, unless the
    verdict is ROLLBACK). ``manual``: a person must ``resume`` the plan
    before it leaves this step.
    """

    stage: Stage = CANARY_STAGE
    traffic_percent: float = 0.0
    bake_seconds: float = 12 * HOUR
    min_requests: int | None = None
    require_healthy: bool = True
    manual: bool = False

    @property
    def label(self) -> str:
        if self.stage == CANARY_STAGE:
            return f"canary {self.traffic_percent:g}%"
        return self.stage

    def to_dict(self) -> StepView:
        return {
            "stage": self.stage,
            "traffic_percent": self.traffic_percent,
            "bake_seconds": self.bake_seconds,
            "min_requests": self.min_requests,
            "require_healthy": self.require_healthy,
            "manual": self.manual,
            "label": self.label,
        }


def _step_from(value: Any, where: str, default_bake: float) -> PlanStep:
    """A canary step from a number (its percentage) or a table/dict of fields."""
    if isinstance(value, PlanStep):
        fields: dict[str, Any] = {
            "traffic_percent": value.traffic_percent,
            "bake_seconds": value.bake_seconds,
            "min_requests": value.min_requests,
            "require_healthy": value.require_healthy,
            "manual": value.manual,
        }
        if value.stage != CANARY_STAGE:
            raise ConfigError(f"{where}.stage", value.stage, "'canary' (staging comes after)")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        fields = {"traffic_percent": value, "bake_seconds": default_bake}
    elif isinstance(value, dict):
        known = {"traffic_percent", "bake_seconds", "min_requests", "require_healthy", "manual"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(where, unknown[0], f"one of the keys {sorted(known)}")
        if "traffic_percent" not in value:
            raise ConfigError(f"{where}.traffic_percent", None, "a percentage above 0, up to 100")
        fields = {"bake_seconds": default_bake, **value}
    else:
        raise ConfigError(where, value, "a percentage or a table of step fields")
    return PlanStep(stage=CANARY_STAGE, **fields)


def _checked(step: PlanStep, where: str) -> PlanStep:
    percent = step.traffic_percent
    if step.stage == CANARY_STAGE and (
        isinstance(percent, bool)
        or not isinstance(percent, (int, float))
        or math.isnan(percent)
        or not 0.0 < percent <= 100.0
    ):
        raise ConfigError(f"{where}.traffic_percent", percent, "a percentage above 0, up to 100")
    bake = _seconds(step.bake_seconds, f"{where}.bake_seconds")
    need = step.min_requests
    if need is not None and (isinstance(need, bool) or not isinstance(need, int) or need < 1):
        raise ConfigError(f"{where}.min_requests", need, "None or a whole number of at least 1")
    for name in ("require_healthy", "manual"):
        if not isinstance(getattr(step, name), bool):
            raise ConfigError(f"{where}.{name}", getattr(step, name), "true or false")
    return replace(step, traffic_percent=float(percent), bake_seconds=bake)


@dataclass(frozen=True)
class RolloutPlan:
    """Canary ``steps``, then staging (``staging_bake_seconds``), then production.

    ``steps`` take percentages or ``PlanStep``/dicts; they must rise, end at
    100 at most, and never jump by more than 5x (``ConfigError`` names the
    step). ``max_step_ratio``: the most a step may multiply the traffic of
    the one before (5 by default, the guide's rule; ``math.inf``: no limit,
    for Argo-style ``[1, 10, 50]`` plans). ``inconclusive_limit_seconds``:
    how long a baked step may stay inconclusive before the plan gives up on
    it; ``approval_deadline_seconds``: how long a baked manual step waits
    for a person (``None``: for ever); ``on_deadline``: what giving up
    does, ``"pause"`` (for a person) or ``"rollback"`` (the plan ends as an
    abort ends it: status ``aborted``, actor "gate"; ``retry`` starts it again). ``staging_manual``:
    a person approves the promotion to production. The defaults are the
    guide's: 1 → 5 → 10 → 25 → 50 %, 12 h each, then 24 h in staging.
    """

    steps: Sequence[Any] = (1, 5, 10, 25, 50)
    staging_bake_seconds: float = 24 * HOUR
    staging_manual: bool = False
    inconclusive_limit_seconds: float = 6 * HOUR
    bake_seconds: float = 12 * HOUR  # for steps given as bare percentages
    max_step_ratio: float = MAX_STEP_RATIO
    approval_deadline_seconds: float | None = None
    on_deadline: str = "pause"
    _stages: tuple[PlanStep, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = self.steps
        if isinstance(raw, (str, bytes, dict)) or not isinstance(raw, Sequence) or not raw:
            raise ConfigError("plan.steps", raw, "a non-empty list of canary steps")
        default_bake = _seconds(self.bake_seconds, "plan.bake_seconds")
        ratio = self.max_step_ratio
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or math.isnan(ratio)
            or ratio < 1.0
        ):
            raise ConfigError("plan.max_step_ratio", ratio, "a number of at least 1 (inf: none)")
        if self.approval_deadline_seconds is not None:
            _seconds(self.approval_deadline_seconds, "plan.approval_deadline_seconds")
        if self.on_deadline not in ON_DEADLINE:
            raise ConfigError("plan.on_deadline", self.on_deadline, f"one of {list(ON_DEADLINE)}")
        steps: list[PlanStep] = []
        for number, value in enumerate(raw, start=1):
            where = f"plan.steps[{number}]"
            step = _checked(_step_from(value, where, default_bake), where)
            if steps:
                before = steps[-1].traffic_percent
                if step.traffic_percent <= before:
                    raise ConfigError(
                        f"{where}.traffic_percent",
                        step.traffic_percent,
                        f"more than the step before ({before:g}%): a plan never goes backwards",
                    )
                if step.traffic_percent > before * ratio:
                    raise ConfigError(
                        f"{where}.traffic_percent",
                        step.traffic_percent,
                        f"at most {ratio:g}x the step before ({before:g}% -> at most "
                        f"{before * ratio:g}%; plan.max_step_ratio allows more)",
                    )
            steps.append(step)
        staging = _checked(
            PlanStep(
                stage=STAGING,
                traffic_percent=100.0,
                bake_seconds=self.staging_bake_seconds,
                manual=self.staging_manual,
            ),
            "plan.staging",
        )
        _seconds(self.inconclusive_limit_seconds, "plan.inconclusive_limit_seconds")
        production = PlanStep(stage=PRODUCTION, traffic_percent=0.0, bake_seconds=0.0)
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "_stages", (*steps, staging, production))

    @classmethod
    def from_dict(cls, table: dict[str, Any], where: str = "plan") -> RolloutPlan:
        """A plan from a TOML table (``[scenarios.NAME.plan]``)."""
        if not isinstance(table, dict):
            raise ConfigError(where, table, "a table of plan fields")
        known = {
            "steps",
            "staging_bake_seconds",
            "staging_manual",
            "inconclusive_limit_seconds",
            "bake_seconds",
            "max_step_ratio",
            "approval_deadline_seconds",
            "on_deadline",
        }
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(where, unknown[0], f"one of the keys {sorted(known)}")
        return cls(**table)

    @property
    def stages(self) -> tuple[PlanStep, ...]:
        """Every step in order: the canary steps, staging, production (the last)."""
        return self._stages

    @property
    def last(self) -> int:
        """The index of production."""
        return len(self._stages) - 1

    def step(self, index: int) -> PlanStep:
        return self._stages[index]

    def index_for(self, stage: str, traffic_percent: float) -> int:
        """The step a gate at ``stage``/``traffic_percent`` is at (the highest not above it)."""
        if stage == PRODUCTION:
            return self.last
        if stage == STAGING:
            return self.last - 1
        found = 0
        for index, step in enumerate(self.steps):
            if step.traffic_percent <= traffic_percent:
                found = index
        return found

    def to_table(self) -> dict[str, Any]:
        """This plan as a table ``from_dict`` reads back to an equal plan."""
        steps: list[dict[str, Any]] = []
        for step in self.steps:
            fields: dict[str, Any] = {
                "traffic_percent": step.traffic_percent,
                "bake_seconds": step.bake_seconds,
                "require_healthy": step.require_healthy,
                "manual": step.manual,
            }
            if step.min_requests is not None:
                fields["min_requests"] = step.min_requests
            steps.append(fields)
        table: dict[str, Any] = {
            "steps": steps,
            "staging_bake_seconds": self.staging_bake_seconds,
            "staging_manual": self.staging_manual,
            "inconclusive_limit_seconds": self.inconclusive_limit_seconds,
            "bake_seconds": self.bake_seconds,
            "max_step_ratio": self.max_step_ratio,
            "on_deadline": self.on_deadline,
        }
        if self.approval_deadline_seconds is not None:
            table["approval_deadline_seconds"] = self.approval_deadline_seconds
        return table

    def to_dict(self) -> PlanView:
        return {
            "steps": [step.to_dict() for step in self._stages],
            "inconclusive_limit_seconds": self.inconclusive_limit_seconds,
        }


@dataclass(frozen=True)
class PlanPosition:
    """Where a release stands in its plan (kept in ``GateState.plan``).

    ``entered_at`` and ``resumed_at`` are Unix seconds. ``held``: the
    inconclusive hold of this step was announced; ``awaiting``: so was the
    wait at its manual gate; ``approved``: a person let it pass.
    ``release_flags`` are the release's flags, kept so ``retry`` can start
    a rolled-back release again.
    """

    index: int
    entered_at: float
    status: PlanState = RUNNING
    resumed_at: float = 0.0
    held: bool = False
    awaiting: bool = False
    approved: bool = False
    reason: str = ""
    release_flags: tuple[str, ...] = ()

    def entering(self, index: int, now: float) -> PlanPosition:
        """The position at the start of step ``index``."""
        return PlanPosition(index, now, RUNNING, release_flags=self.release_flags)

    def to_dict(self) -> PositionView:
        return {
            "index": self.index,
            "entered_at": self.entered_at,
            "status": self.status,
            "resumed_at": self.resumed_at,
            "held": self.held,
            "awaiting": self.awaiting,
            "approved": self.approved,
            "reason": self.reason,
            "release_flags": list(self.release_flags),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanPosition:
        status = data["status"]
        if status not in STATUSES:
            raise ValueError(f"unknown plan status {status!r}")
        return cls(
            index=int(data["index"]),
            entered_at=float(data["entered_at"]),
            status=status,
            resumed_at=float(data.get("resumed_at", 0.0)),
            held=bool(data.get("held", False)),
            awaiting=bool(data.get("awaiting", False)),
            approved=bool(data.get("approved", False)),
            reason=str(data.get("reason", "")),
            release_flags=tuple(str(flag) for flag in data.get("release_flags", ())),
        )


@dataclass(frozen=True)
class Action:
    """What ``next_action`` decided: ``kind`` (WAIT, ADVANCE, HOLD, PAUSE,
    AWAIT_APPROVAL), the step to go to (ADVANCE) and why."""

    kind: str
    reason: str
    to_index: int = -1


def baked_at(plan: RolloutPlan, position: PlanPosition) -> float:
    """When the current step has baked (Unix seconds)."""
    return position.entered_at + plan.step(position.index).bake_seconds


def inconclusive_since(plan: RolloutPlan, position: PlanPosition) -> float:
    """Since when the step counts as inconclusive: it baked, or was resumed later."""
    return max(baked_at(plan, position), position.resumed_at)


def next_action(
    plan: RolloutPlan,
    position: PlanPosition,
    *,
    verdict: str,
    canary_requests: int,
    min_requests: int,
    now: float,
    rolls_back: bool = True,
) -> Action:
    """What the gate should do now (see the module's documentation).

    ``canary_requests``: the canary outcomes the judge counted in this
    step; ``min_requests``: the config's, for steps that set none;
    ``rolls_back``: whether the gate rolls back on a ROLLBACK verdict
    (``auto_rollback_enabled``). When it may not, the plan pauses for a
    person instead of waiting on a verdict nobody acts on.
    """
    if position.status != RUNNING or position.index >= plan.last:
        return Action(WAIT, f"the plan is {position.status}")
    step = plan.step(position.index)
    if verdict == ROLLBACK:
        if not rolls_back:
            return Action(
                PAUSE,
                f"{step.label}: {ROLLBACK_HELD} (automatic rollback is off): paused for a "
                "person to roll back, or to resume",
            )
        return Action(WAIT, "the verdict is ROLLBACK: the gate rolls back")
    ready_at = baked_at(plan, position)
    if now < ready_at:
        return Action(WAIT, f"{step.label} bakes for {ready_at - now:.0f} s more")
    need = step.min_requests if step.min_requests is not None else min_requests
    enough = canary_requests >= need
    if enough and (verdict == HEALTHY or not step.require_healthy):
        if step.manual and not position.approved:
            deadline = plan.approval_deadline_seconds
            if deadline is not None and now - ready_at >= deadline:
                why = f"{step.label} waited {now - ready_at:.0f} s for a person's approval"
                return _give_up(plan, why)
            if position.awaiting:
                return Action(WAIT, f"{step.label} waits for a person to resume the plan")
            return Action(AWAIT_APPROVAL, f"{step.label} is ready and waits for a person")
        return Action(
            ADVANCE,
            f"{step.label} baked with {canary_requests} canary requests, verdict {verdict}",
            position.index + 1,
        )
    why = (
        f"{canary_requests} of {need} canary requests"
        if not enough
        else f"the verdict is {verdict}, not HEALTHY"
    )
    since = inconclusive_since(plan, position)
    if now - since >= plan.inconclusive_limit_seconds:
        return _give_up(plan, f"{step.label} inconclusive for {now - since:.0f} s ({why})")
    if not position.held:
        return Action(HOLD, f"{step.label} baked but inconclusive ({why}): holding")
    return Action(WAIT, f"{step.label} holds: {why}")


def _give_up(plan: RolloutPlan, why: str) -> Action:
    """A deadline passed: pause for a person, or roll back (``plan.on_deadline``)."""
    if plan.on_deadline == "rollback":
        return Action(ROLL_BACK, f"{why}: rolled back (plan.on_deadline)")
    return Action(PAUSE, f"{why}: paused for a person")


def eta(plan: RolloutPlan, position: PlanPosition, now: float) -> float | None:
    """When the plan reaches production at the earliest (Unix seconds), if it
    keeps running: the rest of this step's bake plus every later step's.
    ``None`` when it is not running, holds or waits for a person."""
    if position.status != RUNNING or position.held or position.awaiting:
        return None  # a person or an inconclusive verdict decides when
    remaining = max(0.0, baked_at(plan, position) - now)
    for index in range(position.index + 1, plan.last):
        remaining += plan.step(index).bake_seconds
    return now + remaining


def progress(
    plan: RolloutPlan,
    position: PlanPosition | None,
    now: float,
    waiting_for: str | None = None,
) -> PlanProgress:
    """The plan as an operator reads it: the steps, the current one, its bake,
    the ETA, what it waits for; ``position`` ``None``: no release in progress."""
    shown = plan.to_dict()
    if position is None:
        return {
            "steps": shown["steps"],
            "inconclusive_limit_seconds": shown["inconclusive_limit_seconds"],
            "position": None,
            "current": None,
            "bake": None,
            "eta": None,
            "eta_seconds": None,
            "waiting_for": None,
        }
    step = plan.step(min(position.index, plan.last))
    bake = step.bake_seconds
    elapsed = max(0.0, now - position.entered_at)
    finish = eta(plan, position, now)
    return {
        "steps": shown["steps"],
        "inconclusive_limit_seconds": shown["inconclusive_limit_seconds"],
        "position": position.to_dict(),
        "current": step.to_dict(),
        "bake": {
            "elapsed_seconds": elapsed,
            "required_seconds": bake,
            "fraction": 1.0 if bake == 0 else min(1.0, elapsed / bake),
        },
        "eta": finish,
        "eta_seconds": None if finish is None else finish - now,
        "waiting_for": (
            position.reason or "paused"
            if position.status == PAUSED
            else waiting_for
            if position.status == RUNNING
            else None
        ),
    }
