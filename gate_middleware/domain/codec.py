"""A gate's state as text, for the stores that keep it outside the process.

A state's content is JSON; its identity (``version`` and the transition id)
is stored beside it, so that a compare-and-set compares two short fields.
``decode_state`` raises ``CorruptData`` and nothing else, whatever a foreign
write left in the store.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from datetime import datetime
from typing import Any

from gate_middleware.domain.environment import Environment
from gate_middleware.domain.plan import PlanPosition
from gate_middleware.domain.state import (
    MAX_HISTORY,
    CarriedEvidence,
    GateEvent,
    GateState,
    PromotionEvent,
    RollbackEvent,
)
from gate_middleware.judge.verdict import CanaryHealth

STORED_HISTORY = 200  # events kept in a store (the newest)

_INTEGER = re.compile(rb"-?[0-9]{1,18}")


class CorruptData(ValueError):
    """A key of the shared store holds something the gate cannot decode."""


def new_transition_id() -> str:
    return secrets.token_hex(8)


# -- the state as JSON ---------------------------------------------------------------


def _environment(data: dict[str, Any]) -> Environment:
    return Environment(data["name"], data["traffic_percent"])


def _health(data: dict[str, Any] | None) -> CanaryHealth | None:
    if data is None:
        return None
    return CanaryHealth(**data)  # the stored verdict too: never read back from text


def _event(data: dict[str, Any]) -> GateEvent:
    timestamp = datetime.fromisoformat(data["timestamp"])
    if data["kind"] == "rollback":
        return RollbackEvent(
            data["reason"],
            timestamp,
            _environment(data["environment"]),
            data["feature"],
            _health(data["health"]),
            data["automatic"],
            data.get("actor", "api"),
            data.get("process", ""),
        )
    return PromotionEvent(
        _environment(data["from_environment"]),
        _environment(data["to_environment"]),
        timestamp,
        data["action"],
        data["forced"],
        _health(data["health"]),
        data.get("reason", ""),
        data.get("actor", "api"),
        data.get("process", ""),
    )


def _carried(data: dict[str, Any] | None) -> CarriedEvidence | None:
    """The carried evidence (``None``: a release's first step, or a state
    stored before it was kept)."""
    if data is None:
        return None
    log_evidence, step = data["log_evidence"], data["step"]
    if isinstance(log_evidence, bool) or not isinstance(log_evidence, (int, float)):
        raise ValueError(f"the carried log-evidence {log_evidence!r} is not a number")
    if not math.isfinite(log_evidence):
        raise ValueError(f"the carried log-evidence {log_evidence!r} is not finite")
    if not isinstance(step, int) or isinstance(step, bool) or step < 2:
        raise ValueError(f"the carried step {step!r} is not an integer from 2")
    return CarriedEvidence(float(log_evidence), step)


def encode_state(state: GateState) -> str:
    """The state's content as JSON; its identity (version, id) is stored beside it."""
    data: dict[str, Any] = {
        "environment": state.environment.to_dict(),
        "stable_flags": sorted(state.stable_flags),
        "release_flags": sorted(state.release_flags),
        "history": [event.to_dict() for event in state.history[-STORED_HISTORY:]],
        "release": state.release,
        "step": state.step,
        "plan": None if state.plan is None else state.plan.to_dict(),
    }
    if state.carried is not None:  # absent otherwise: a configured state's text is unchanged
        data["carried"] = state.carried.to_dict()
    if state.retired:  # the same: absent while served
        data["retired"] = True
    return json.dumps(data, separators=(",", ":"))


def decode_state(
    text: str | bytes, version: bytes | str, transition: bytes | str = b""
) -> GateState:
    """The state stored as ``text`` with identity (``version``, ``transition``).

    Raises ``CorruptData`` (never anything else) when any part does not decode.
    """
    try:
        if isinstance(version, str):
            version = version.encode()
        if not _INTEGER.fullmatch(version):
            raise ValueError(f"the version {version[:40]!r} is not an integer")
        if isinstance(transition, bytes):
            transition = transition.decode("ascii")
        data = json.loads(text)
        release = data["release"]
        if not isinstance(release, int):
            raise ValueError(f"the release {release!r} is not an integer")
        retired = data.get("retired", False)
        if not isinstance(retired, bool):
            raise ValueError(f"retired {retired!r} is not true or false")
        return GateState(
            environment=_environment(data["environment"]),
            stable_flags=frozenset(str(flag) for flag in data["stable_flags"]),
            release_flags=frozenset(str(flag) for flag in data["release_flags"]),
            history=tuple(_event(e) for e in data["history"])[-MAX_HISTORY:],
            release=release,
            step=int(data.get("step", 0)),
            plan=None if data.get("plan") is None else PlanPosition.from_dict(data["plan"]),
            carried=_carried(data.get("carried")),
            retired=retired,
            version=int(version),
            transition=transition,
        )
    except Exception as exc:  # anything a foreign write can provoke
        raise CorruptData(f"{type(exc).__name__}: {exc}"[:200]) from exc


def config_differences(ours: GateState, shared: GateState) -> list[str]:
    """The fields in which two processes' configured starting states differ."""
    fields = ("environment", "stable_flags", "release_flags", "release")
    return [name for name in fields if getattr(ours, name) != getattr(shared, name)]
