"""The gate carrying out its rollout plan: ``Autopilot``, the timer and the controls.

``gate_middleware.domain.plan`` decides what the plan's next step is (pure: state in,
action out); this module carries it out through the gate's own transitions.
``PromotionGate`` holds an ``Autopilot`` and offers the plan's controls
(``pause``, ``resume``, ``abort``, ``retry``, ``skip_to``, ``promote_now``,
``plan_status``) as its own methods, while their code lives here, beside
the timer that moves the plan on when no request comes.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from gate_middleware.background import BackgroundThread
from gate_middleware.domain import plan as plans
from gate_middleware.domain.config import PromotionConfig
from gate_middleware.domain.environment import CANARY_STAGE, PRODUCTION, STAGING, Environment
from gate_middleware.domain.naming import validate_reason
from gate_middleware.domain.plan import PlanPosition, RolloutPlan
from gate_middleware.domain.routing import CANARY
from gate_middleware.domain.state import GateState, PromotionEvent, RollbackEvent
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.gate.evaluation import Evaluation
from gate_middleware.gate.transitions import Transitions, event_time
from gate_middleware.judge.verdict import CanaryHealth
from gate_middleware.stores import WindowStore

logger = logging.getLogger("gate_middleware")

GATE_ACTOR = "gate"  # the actor of what the gate does by itself
API_ACTOR = "api"  # the default actor of a call in the app's code


def validate_actor(actor: Any) -> str:
    """Return ``actor`` if it can name who made a change, or raise ``ConfigError``."""
    if not isinstance(actor, str) or not 1 <= len(actor) <= 200 or not actor.isprintable():
        raise ConfigError("actor", actor, "1 to 200 printable characters")
    return actor


class Ticks(Protocol):
    def tick(self) -> None: ...


class PlanTimer:
    """Evaluates the gate every ``interval`` seconds on a background thread,
    so the plan moves on without traffic; holds the gate weakly (a gate
    dropped without ``close()`` stops its timer)."""

    def __init__(self, gate: Ticks, interval: float) -> None:
        self._gate = weakref.ref(gate)
        self._thread = BackgroundThread("gate-plan", self._tick, interval, wait_first=True)

    def _tick(self) -> None:
        gate = self._gate()
        if gate is None:
            self._thread.close()
            return
        gate.tick()

    def ensure(self) -> None:
        self._thread.ensure()

    def close(self) -> None:
        self._thread.close()


class Autopilot:
    """The gate carrying out its rollout plan, and the plan's controls.

    ``PromotionGate`` holds one and offers its controls as its own methods.
    It moves the release through the gate's ``Transitions`` (so exactly one
    process makes each step) and asks the gate's ``Evaluation`` whether a
    step may be skipped; ``rollback`` is the gate's own.
    """

    def __init__(
        self,
        plan: RolloutPlan | None,
        config: PromotionConfig,
        windows: WindowStore,
        transitions: Transitions,
        evaluation: Evaluation,
        rollback: Callable[..., RollbackEvent],
        wall_clock: Callable[[], float],
    ) -> None:
        self.plan = plan
        self._config = config
        self._windows = windows
        self._transitions = transitions
        self._evaluation = evaluation
        self._rollback = rollback
        self._wall_clock = wall_clock
        # What the plan waited for at the last evaluation: (release, step, status), why.
        self._waiting: tuple[tuple[int, int, str], str] | None = None

    # -- the rollout plan ---------------------------------------------------

    def carry_out(self, state: GateState, health: CanaryHealth) -> None:
        plan, position = self.plan, state.plan
        if plan is None or position is None:
            return
        action = plans.next_action(
            plan,
            position,
            verdict=health.verdict,
            canary_requests=self._windows.evidence(CANARY).requests,
            min_requests=self._config.min_requests,
            now=self._wall_clock(),
            rolls_back=self._config.auto_rollback_enabled,
        )
        where = (state.release, position.index, position.status)
        waits = action.kind in (plans.WAIT, plans.HOLD, plans.AWAIT_APPROVAL)
        self._waiting = (where, action.reason) if waits else None
        if action.kind == plans.ROLL_BACK:
            try:
                self._rollback(action.reason, actor=GATE_ACTOR)
            except PromotionError as exc:  # someone ended the release first
                logger.info("Plan: no rollback at the deadline: %s", exc)
        elif action.kind == plans.ADVANCE:
            self._move_plan(
                state, position, action.to_index, "plan_step", action.reason, GATE_ACTOR, health
            )
        elif action.kind == plans.HOLD:
            self._mark_plan(state, position, "hold", action.reason, GATE_ACTOR, held=True)
        elif action.kind == plans.AWAIT_APPROVAL:
            self._mark_plan(
                state, position, "await_approval", action.reason, GATE_ACTOR, awaiting=True
            )
        elif action.kind == plans.PAUSE:
            self._mark_plan(
                state,
                position,
                "pause",
                action.reason,
                GATE_ACTOR,
                status=plans.PAUSED,
                reason=action.reason,
            )

    def _entered(
        self, current: GateState, index: int, event: PromotionEvent, position: PlanPosition
    ) -> GateState:
        """``current`` moved to step ``index`` of the plan."""
        plan = self._the_plan()
        step = plan.step(index)
        entered = position.entering(index, self._wall_clock())
        if step.stage == PRODUCTION:
            return current.evolve(
                event,
                environment=Environment.PRODUCTION,
                stable_flags=current.stable_flags | current.release_flags,
                release_flags=frozenset(),
                step=current.step + 1,
                plan=replace(entered, status=plans.DONE),
            )
        environment = (
            Environment.STAGING
            if step.stage == STAGING
            else Environment.canary(step.traffic_percent)
        )
        return current.evolve(event, environment=environment, step=current.step + 1, plan=entered)

    def _target(self, index: int) -> Environment:
        step = self._the_plan().step(index)
        if step.stage == CANARY_STAGE:
            return Environment.canary(step.traffic_percent)
        return Environment.STAGING if step.stage == STAGING else Environment.PRODUCTION

    def _move_plan(
        self,
        state: GateState,
        position: PlanPosition,
        index: int,
        action: str,
        reason: str,
        actor: str,
        health: CanaryHealth | None,
        *,
        forced: bool = False,
        by_hand: bool = False,
    ) -> bool:
        """Move the plan from ``position`` to step ``index``, once (``False``:
        someone else moved it first). ``by_hand``: a person's move, which
        stands while the release is still at that step (a hold or a pause
        another process marked since this one's snapshot does not undo it)."""
        target = self._target(index)

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            if current.release != state.release or current.plan is None:
                return None
            if by_hand:
                if current.plan.index != position.index:
                    return None  # the plan moved on (or back) meanwhile
            elif current.plan != position:
                return None  # another process (or thread) made this step already
            event = PromotionEvent(
                current.environment,
                target,
                event_time(self._wall_clock),
                action,
                forced,
                health,
                reason,
                actor,
            )
            return self._entered(current, index, event, current.plan), event

        if self._transitions.apply(change) is None:
            return False
        logger.info("Plan: %s -> %s (%s)", state.environment, target, reason)
        return True

    def _mark_plan(
        self,
        state: GateState,
        position: PlanPosition,
        action: str,
        why: str,
        actor: str,
        **changes: Any,
    ) -> bool:
        """Record a change of the plan's position that keeps the step (hold, pause...)."""

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            if current.plan != position or current.release != state.release:
                return None
            event = PromotionEvent(
                current.environment,
                current.environment,
                event_time(self._wall_clock),
                action,
                reason=why,
                actor=actor,
            )
            return current.evolve(event, plan=replace(position, **changes)), event

        result = self._transitions.apply(change)
        if result is not None:
            log = logger.warning if action in ("pause", "hold") else logger.info
            log("Plan %s: %s", action, why)
        return result is not None

    def _the_plan(self) -> RolloutPlan:
        if self.plan is None:
            raise PromotionError("the gate has no rollout plan (PromotionConfig.plan)")
        return self.plan

    def plan_after(self, current: GateState, target: Environment) -> PlanPosition | None:
        """The plan's position after a change made by hand to ``target``."""
        position = current.plan
        if position is None or self.plan is None:
            return position
        if target.name == PRODUCTION:
            if position.status in (plans.RUNNING, plans.PAUSED):
                return replace(position, status=plans.DONE)
            return position
        index = self.plan.index_for(target.name, target.traffic_percent)
        entered = position.entering(index, self._wall_clock())
        return replace(entered, status=position.status, reason=position.reason)

    def _running_plan(self, what: str) -> tuple[GateState, PlanPosition]:
        state = self._transitions.current()
        return state, self._plan_of(state, what)

    def _plan_of(self, state: GateState, what: str) -> PlanPosition:
        """``state``'s plan position, or ``PromotionError`` when it has none to ``what``."""
        if self.plan is None:
            raise PromotionError(
                f"cannot {what}: the gate has no rollout plan (PromotionConfig.plan)"
            )
        position = state.plan
        if position is None or state.environment.name == PRODUCTION:
            raise PromotionError(f"cannot {what}: no release is following the plan")
        return position

    def pause(self, reason: str = "paused by an operator", *, actor: str = API_ACTOR) -> None:
        """Stop the plan where it is (the judge still rolls back on a failing verdict)."""
        validate_reason(reason)
        actor = validate_actor(actor)

        def paused(position: PlanPosition) -> tuple[str, dict[str, Any]] | None:
            if position.status == plans.PAUSED:
                return None
            return reason, {"status": plans.PAUSED, "reason": reason}

        self._steer("pause", "pause the plan", actor, paused)

    def resume(self, *, actor: str = API_ACTOR) -> None:
        """Let the plan go on: after a pause, or through a manual gate (approval)."""
        actor = validate_actor(actor)
        plan = self._the_plan()

        def resumed(position: PlanPosition) -> tuple[str, dict[str, Any]] | None:
            step = plan.step(position.index)
            # An approval counts only at a manual step that is ready and waits
            # for it: one given while the step still bakes would wave through
            # evidence nobody has seen yet.
            approving = step.manual and position.awaiting and not position.approved
            if position.status == plans.RUNNING and not approving:
                if step.manual and not position.approved:
                    raise PromotionError(
                        f"cannot approve {step.label} yet: it is not ready (it bakes and "
                        "needs a HEALTHY verdict first); resume once the plan waits for a person"
                    )
                return None
            why = f"{step.label}: resumed" + (" (manual gate approved)" if approving else "")
            return why, {
                "status": plans.RUNNING,
                "resumed_at": self._wall_clock(),
                "held": False,
                "approved": position.approved or approving,
                "reason": "",
            }

        if self._steer("resume", "resume the plan", actor, resumed):
            self._evaluation.evaluate(act=True)  # go on now if the step is ready

    def _steer(
        self,
        action: str,
        what: str,
        actor: str,
        decide: Callable[[PlanPosition], tuple[str, dict[str, Any]] | None],
    ) -> bool:
        """A person's change of the plan's position that keeps the step
        (pause, resume), decided by ``decide(position)`` on the state it is
        applied to: this process's snapshot may be older than the store's (a
        hold or an approval wait another process marked since), and a change
        decided on it would be lost, not made. ``decide`` returns why and the
        position's changes, ``None`` for nothing to do, or raises."""

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            decided = decide(self._plan_of(current, what))
            if decided is None:
                return None
            why, changes = decided
            event = PromotionEvent(
                current.environment,
                current.environment,
                event_time(self._wall_clock),
                action,
                reason=why,
                actor=actor,
            )
            assert current.plan is not None  # _plan_of refused a state without one
            return current.evolve(event, plan=replace(current.plan, **changes)), event

        self._running_plan(what)  # a clear refusal before any attempt
        result = self._transitions.apply(change)
        if result is None:
            return False
        level = logging.WARNING if action == "pause" else logging.INFO
        logger.log(level, "Plan %s: %s", action, result[1].reason)
        return True

    def abort(self, reason: str, *, actor: str = API_ACTOR) -> RollbackEvent:
        """Roll the release back and end its plan (``retry`` starts it again)."""
        return self._rollback(reason, actor=actor)

    def retry(self, *, actor: str = API_ACTOR) -> Environment:
        """Start the plan again, from its first step, for the release last rolled back."""
        actor = validate_actor(actor)
        plan = self.plan
        if plan is None:
            raise PromotionError(
                "cannot retry: the gate has no rollout plan (PromotionConfig.plan)"
            )
        state = self._transitions.current()
        position = state.plan
        if (
            position is None
            or state.environment.name != PRODUCTION
            or position.status not in (plans.ROLLED_BACK, plans.ABORTED)
        ):
            raise PromotionError(
                "cannot retry: retry restarts a release that was rolled back or aborted, "
                f"and the gate is in {state.environment}"
                + (f" with its plan {position.status}" if position is not None else "")
            )
        target = self._target(0)

        def change(current: GateState) -> tuple[GateState, PromotionEvent] | None:
            # Decided on the state it is applied to, not this process's
            # snapshot (which may be older): the same release, still ended.
            if (
                current.plan != position
                or current.release != state.release
                or current.environment.name != PRODUCTION
            ):
                raise PromotionError("cannot retry: the gate changed meanwhile")
            event = PromotionEvent(
                current.environment,
                target,
                event_time(self._wall_clock),
                "retry",
                reason=f"plan restarted for the release with {list(position.release_flags)}",
                actor=actor,
            )
            new = current.evolve(
                event,
                environment=target,
                release_flags=frozenset(position.release_flags),
                release=current.release + 1,
                step=current.step + 1,
                plan=position.entering(0, self._wall_clock()),
            )
            return new, event

        self._transitions.apply(change)
        logger.info("Plan restarted at %s", target)
        return target

    def skip_to(self, step: int, *, force: bool = False, actor: str = API_ACTOR) -> Environment:
        """Move the plan on to step number ``step`` now (numbered from 1, as
        everywhere: the plan's first canary step is 1, production the last).

        Refused unless the judge's verdict is HEALTHY with enough evidence,
        as ``promote`` is; ``force=True`` skips the checks.
        """
        actor = validate_actor(actor)
        state, position = self._running_plan("skip a step")
        plan = self._the_plan()
        if (
            isinstance(step, bool)
            or not isinstance(step, int)
            or not (position.index + 1 < step <= plan.last + 1)
        ):
            raise ConfigError(
                "step",
                step,
                f"the number of a step after the current one (step {position.index + 1}): "
                f"{position.index + 2} to {plan.last + 1} (production); steps count from 1",
            )
        index = step - 1
        if not isinstance(force, bool):
            raise ConfigError("force", force, "True or False")
        health = self._evaluation.evaluate(act=False)[0]
        if not force:
            self._evaluation.require_promotable(health)
        reason = f"skipped to {plan.step(index).label}" + (" (forced)" if force else "")
        if not self._move_plan(
            state, position, index, "skip", reason, actor, health, forced=force, by_hand=True
        ):
            raise PromotionError("cannot skip: the plan moved meanwhile; look again")
        return self._target(index)

    def promote_now(self, *, force: bool = False, actor: str = API_ACTOR) -> Environment:
        """Skip the rest of the plan: promote to production now."""
        plan = self.plan
        if plan is None:
            raise PromotionError("cannot promote now: the gate has no rollout plan")
        return self.skip_to(plan.last + 1, force=force, actor=actor)

    def plan_status(self) -> plans.PlanProgress | None:
        """The plan as an operator reads it: its steps, the current one, the
        bake's progress and the ETA (Unix seconds), or ``None`` without a plan."""
        plan = self.plan
        if plan is None:
            return None
        state = self._transitions.current()
        position = state.plan
        waiting = self._waiting
        why = None
        if (
            position is not None
            and waiting is not None
            and waiting[0] == (state.release, position.index, position.status)
        ):
            why = waiting[1]
        return plans.progress(plan, position, self._wall_clock(), why)
