"""Configuration of a gate: ``PromotionConfig`` and ``SloConfig``.

The first five fields of ``PromotionConfig`` and their defaults are those of
the original Promotion Gates guide. Every value is validated when the object
is built; a bad one raises ``ConfigError`` naming the field, the value and
what would be valid.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from gate_middleware.environment import Environment, validate_traffic_percent
from gate_middleware.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_ROLLOUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def validate_flag_name(name: Any, field: str = "feature flag") -> str:
    """Return ``name`` if it is a valid flag name, or raise ``ConfigError``."""
    if not isinstance(name, str) or not _FLAG_NAME.fullmatch(name):
        raise ConfigError(
            field, name, "1 to 128 characters of letters, digits, '_', '.', ':' or '-'"
        )
    return name


def validate_flag_names(names: Any, field: str = "feature_flags") -> tuple[str, ...]:
    """Return ``names`` as a tuple of unique valid flag names (order kept)."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ConfigError(field, names, "a list of flag names")
    flags = tuple(dict.fromkeys(validate_flag_name(n, field) for n in names))
    return flags


def _positive_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, "a positive number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(field, value, "a positive number")
    return number


def _fraction(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, "a number from 0 to 1")
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise ConfigError(field, value, "a number from 0 to 1")
    return number


@dataclass(frozen=True)
class SloConfig:
    """What counts as a good request, and how variants are compared.

    A request is *good* when it succeeded and took no longer than
    ``latency_objective_seconds``; SLO compliance is good / all in the window.

    When the health score compares the canary with production, error rates
    below ``error_rate_floor`` and p99 latencies below
    ``latency_floor_seconds`` count as the floor itself, so that 1 failure
    in 1,000 against 0 in 1,000 (or 2 ms against 1 ms) is not a 1.5× verdict.
    """

    latency_objective_seconds: float = 0.5
    error_rate_floor: float = 0.01
    latency_floor_seconds: float = 0.005

    def __post_init__(self) -> None:
        _positive_number(self.latency_objective_seconds, "latency_objective_seconds")
        _fraction(self.error_rate_floor, "error_rate_floor")
        if self.error_rate_floor <= 0:
            raise ConfigError(
                "error_rate_floor", self.error_rate_floor, "a number above 0, up to 1"
            )
        _positive_number(self.latency_floor_seconds, "latency_floor_seconds")


@dataclass(frozen=True)
class PromotionConfig:
    """How a gate starts and how strictly it judges.

    ``feature_flags`` are the release's flags while ``environment`` is a
    canary or staging, and the stable flags (on for everyone) when it is
    production. ``name`` names the rollout: it is part of the routing hash,
    so two rollouts split sessions independently.
    """

    environment: Environment = field(default_factory=lambda: Environment.PRODUCTION)
    feature_flags: Sequence[str] = ()
    auto_rollback_enabled: bool = True
    slo_threshold: float = 0.95
    rollback_window_seconds: float = 300
    name: str = "default"
    min_requests: int = 100
    evaluation_interval_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.environment, Environment):
            raise ConfigError(
                "environment",
                self.environment,
                "an Environment (Environment.canary(p), Environment.STAGING, Environment.PRODUCTION)",
            )
        object.__setattr__(self, "feature_flags", validate_flag_names(self.feature_flags))
        if not isinstance(self.auto_rollback_enabled, bool):
            raise ConfigError("auto_rollback_enabled", self.auto_rollback_enabled, "True or False")
        _fraction(self.slo_threshold, "slo_threshold")
        _positive_number(self.rollback_window_seconds, "rollback_window_seconds")
        if not isinstance(self.name, str) or not _ROLLOUT_NAME.fullmatch(self.name):
            raise ConfigError(
                "name", self.name, "1 to 128 characters of letters, digits, '_', '.', ':' or '-'"
            )
        if (
            isinstance(self.min_requests, bool)
            or not isinstance(self.min_requests, int)
            or self.min_requests < 1
        ):
            raise ConfigError("min_requests", self.min_requests, "a whole number of at least 1")
        _positive_number(self.evaluation_interval_seconds, "evaluation_interval_seconds")

    @classmethod
    def from_toml(
        cls, path: str | PathLike[str], scenario: str | None = None, **overrides: Any
    ) -> PromotionConfig:
        """Read one scenario of a scenario file (the guide's format).

        The file holds ``[scenarios.NAME]`` tables with the keys
        ``promotion_environment`` ("canary", "staging", "production" or
        "shadow": a canary at 0 %), ``promotion_traffic_percent``,
        ``auto_rollback_enabled``, ``slo_threshold`` and optionally
        ``feature_flags``, ``rollback_window_seconds``, ``min_requests``,
        ``evaluation_interval_seconds`` and ``name``. With ``scenario=None``
        the file must hold exactly one scenario. Keyword ``overrides``
        replace fields after reading.
        """
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("toml file", str(path), f"valid TOML ({exc})") from exc
        scenarios = document.get("scenarios")
        if not isinstance(scenarios, dict) or not scenarios:
            raise ConfigError("scenarios", scenarios, "a [scenarios.NAME] table in the file")
        if scenario is None:
            if len(scenarios) != 1:
                raise ConfigError(
                    "scenario", None, f"one of {sorted(scenarios)} (the file holds several)"
                )
            scenario = next(iter(scenarios))
        table = scenarios.get(scenario)
        if not isinstance(table, dict):
            raise ConfigError("scenario", scenario, f"one of {sorted(scenarios)}")
        return cls._from_scenario(scenario, table, overrides)

    @classmethod
    def _from_scenario(
        cls, scenario: str, table: dict[str, Any], overrides: dict[str, Any]
    ) -> PromotionConfig:
        known = {
            "promotion_environment",
            "promotion_traffic_percent",
            "auto_rollback_enabled",
            "slo_threshold",
            "feature_flags",
            "rollback_window_seconds",
            "min_requests",
            "evaluation_interval_seconds",
            "name",
            "description",
        }
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"scenarios.{scenario}", unknown[0], f"one of the keys {sorted(known)}"
            )
        env_name = table.get("promotion_environment", "production")
        percent = table.get("promotion_traffic_percent")
        if env_name == "shadow":
            environment = Environment.canary(0.0)
        elif env_name == "canary":
            environment = Environment.canary(
                validate_traffic_percent(
                    10.0 if percent is None else percent,
                    f"scenarios.{scenario}.promotion_traffic_percent",
                )
            )
        elif env_name in ("staging", "production"):
            environment = Environment.from_name(env_name)
        else:
            raise ConfigError(
                f"scenarios.{scenario}.promotion_environment",
                env_name,
                "one of 'canary', 'staging', 'production', 'shadow'",
            )
        fields: dict[str, Any] = {"environment": environment}
        for key in (
            "auto_rollback_enabled",
            "slo_threshold",
            "feature_flags",
            "rollback_window_seconds",
            "min_requests",
            "evaluation_interval_seconds",
            "name",
        ):
            if key in table:
                fields[key] = table[key]
        fields.update(overrides)
        return cls(**fields)
