"""Business metrics: what the app reports with ``track()``, and how each is judged.

A ``MetricDefinition`` names a metric the app reports
(``request.state.gate.track("checkout_completed")``,
``track("order_value", 42.5)``) and says how the judge reads it, per session
(the unit routing randomises):

- ``kind="conversion"``: the share of sessions that reported it at least once;
- ``kind="count"``: how many times a session reported it (each ``track``
  adds its amount, 1 by default), per session;
- ``kind="mean"``: the total amount a session reported (revenue per
  session), per session; a session that reported nothing counts 0.

``bad`` says which way is a regression (``"decrease"``: fewer conversions,
less revenue; ``"increase"``: more refunds), and ``tolerance`` how far the
canary may move that way, relative to production, before it counts
(0.05: 5 % fewer conversions are tolerated). A ``guardrail`` metric rolls a
release back when the canary is shown to be worse beyond the tolerance, and
HEALTHY needs its evidence; any other metric is only reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from gate_middleware.domain.naming import NAME_PATTERN, valid_name
from gate_middleware.errors import ConfigError

MetricKind = Literal["conversion", "count", "mean"]
Direction = Literal["decrease", "increase"]
KINDS: tuple[MetricKind, ...] = ("conversion", "count", "mean")
DIRECTIONS: tuple[Direction, ...] = ("decrease", "increase")
MAX_METRICS = 20  # metrics a rollout defines; each is a test and a share of the budget


@dataclass(frozen=True)
class MetricDefinition:
    """One business metric and how it is judged (the module docstring)."""

    name: str
    kind: MetricKind = "conversion"
    bad: Direction = "decrease"
    tolerance: float = 0.0
    guardrail: bool = True

    def __post_init__(self) -> None:
        if not valid_name(self.name):
            raise ConfigError("metrics.name", self.name, f"a metric name matching {NAME_PATTERN}")
        if self.kind not in KINDS:
            raise ConfigError(f"metrics.{self.name}.kind", self.kind, f"one of {list(KINDS)}")
        if self.bad not in DIRECTIONS:
            raise ConfigError(f"metrics.{self.name}.bad", self.bad, f"one of {list(DIRECTIONS)}")
        tolerance = self.tolerance
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not 0.0 <= tolerance < 1.0
        ):
            raise ConfigError(
                f"metrics.{self.name}.tolerance",
                tolerance,
                "a relative change from 0 up to (not including) 1, such as 0.05",
            )
        if not isinstance(self.guardrail, bool):
            raise ConfigError(f"metrics.{self.name}.guardrail", self.guardrail, "True or False")

    @property
    def conversion(self) -> bool:
        return self.kind == "conversion"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "bad": self.bad,
            "tolerance": self.tolerance,
            "guardrail": self.guardrail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field: str = "metrics") -> MetricDefinition:
        """A definition from a table of its fields (TOML, JSON)."""
        known = {"name", "kind", "bad", "tolerance", "guardrail"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(field, unknown[0], f"one of the keys {sorted(known)}")
        if "name" not in data:
            raise ConfigError(field, dict(data), "a table with a name")
        return cls(**{key: data[key] for key in known if key in data})


def validate_metrics(metrics: Any) -> tuple[MetricDefinition, ...]:
    """``metrics`` (definitions or tables of their fields) as a tuple, or ``ConfigError``."""
    if isinstance(metrics, (str, bytes, Mapping)) or not isinstance(metrics, Sequence):
        raise ConfigError("metrics", metrics, "a list of MetricDefinition or of their tables")
    if len(metrics) > MAX_METRICS:
        raise ConfigError("metrics", len(metrics), f"at most {MAX_METRICS} metrics")
    definitions: list[MetricDefinition] = []
    for index, item in enumerate(metrics):
        if isinstance(item, MetricDefinition):
            definitions.append(item)
        elif isinstance(item, Mapping):
            definitions.append(
                MetricDefinition.from_dict(cast(Mapping[str, Any], item), f"metrics[{index}]")
            )
        else:
            raise ConfigError(f"metrics[{index}]", item, "a MetricDefinition or a table")
    names = [definition.name for definition in definitions]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError("metrics", name, "metrics with distinct names")
    return tuple(definitions)


__all__ = [
    "DIRECTIONS",
    "KINDS",
    "MAX_METRICS",
    "Direction",
    "MetricDefinition",
    "MetricKind",
    "validate_metrics",
]
