"""Where a release stands: ``Environment.canary(p)``, ``STAGING`` or ``PRODUCTION``.

Environments are immutable, hashable and ordered along the release path:
every canary sorts before staging, staging before production, and canaries
among themselves by their traffic share.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import total_ordering
from typing import Any, ClassVar, Literal

from gate_middleware.errors import ConfigError

#: The stages of a release, in order. (The sides a session is routed to,
#: "canary" and "stable", are the *variants* of ``gate_middleware.domain.routing``.)
Stage = Literal["canary", "staging", "production"]
CANARY_STAGE: Stage = "canary"
STAGING: Stage = "staging"
PRODUCTION: Stage = "production"
STAGES: tuple[Stage, ...] = (CANARY_STAGE, STAGING, PRODUCTION)

_RANK = {CANARY_STAGE: 0, STAGING: 1, PRODUCTION: 2}


def __getattr__(name: str) -> Any:
    """``CANARY``, the stage's name before 0.2, kept for one release."""
    if name == "CANARY":
        warnings.warn(
            "gate_middleware.domain.environment.CANARY is now CANARY_STAGE "
            "(CANARY is the routing variant); the old name is removed in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return CANARY_STAGE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_traffic_percent(value: Any, field: str = "traffic_percent") -> float:
    """Return ``value`` as a float in 0..100, or raise ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, "a number from 0 to 100")
    percent = float(value)
    if math.isnan(percent) or not 0.0 <= percent <= 100.0:
        raise ConfigError(field, value, "a number from 0 to 100")
    if math.copysign(1.0, percent) < 0:
        raise ConfigError(field, value, "a number from 0 to 100 (0, not -0.0)")
    return percent


@total_ordering
@dataclass(frozen=True)
class Environment:
    """One stage of a release.

    ``traffic_percent`` is the share of sessions on the canary path: the
    canary's own figure, 100.0 in staging (every session is served the
    release) and 0.0 in production (the release, if any, is now stable).
    """

    name: Stage
    traffic_percent: float

    STAGING: ClassVar[Environment]
    PRODUCTION: ClassVar[Environment]

    def __post_init__(self) -> None:
        if self.name not in _RANK:
            raise ConfigError("environment", self.name, "one of 'canary', 'staging', 'production'")
        percent = validate_traffic_percent(self.traffic_percent)
        fixed = {STAGING: 100.0, PRODUCTION: 0.0}.get(self.name)
        if fixed is not None and percent != fixed:
            raise ConfigError(
                "traffic_percent", self.traffic_percent, f"{fixed} for the {self.name} environment"
            )
        object.__setattr__(self, "traffic_percent", percent)

    @classmethod
    def canary(cls, traffic_percent: float) -> Environment:
        """A canary that serves the release to ``traffic_percent`` % of sessions."""
        return cls(CANARY_STAGE, traffic_percent)

    @classmethod
    def from_name(cls, name: str, traffic_percent: float | None = None) -> Environment:
        """Build an environment from its name, as config files and the admin API spell it."""
        if name == CANARY_STAGE:
            if traffic_percent is None:
                raise ConfigError("traffic_percent", None, "a number from 0 to 100 for a canary")
            return cls.canary(traffic_percent)
        if name == STAGING:
            return cls.STAGING
        if name == PRODUCTION:
            return cls.PRODUCTION
        raise ConfigError("environment", name, "one of 'canary', 'staging', 'production'")

    @property
    def is_canary(self) -> bool:
        return self.name == CANARY_STAGE

    def _key(self) -> tuple[int, float]:
        return (_RANK[self.name], self.traffic_percent)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Environment):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        if self.name == CANARY_STAGE:
            return f"canary ({self.traffic_percent:g}%)"
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "traffic_percent": self.traffic_percent}


Environment.STAGING = Environment(STAGING, 100.0)
Environment.PRODUCTION = Environment(PRODUCTION, 0.0)
