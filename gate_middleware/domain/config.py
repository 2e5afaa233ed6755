"""Configuration of a gate: ``PromotionConfig`` and ``SloConfig``.

The first five fields of ``PromotionConfig`` and their defaults are those of
the original Promotion Gates guide. Every value is validated when the object
is built; a bad one raises ``ConfigError`` naming the field, the value and
what would be valid.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from gate_middleware.domain.environment import CANARY_STAGE, Environment, validate_traffic_percent
from gate_middleware.domain.metrics import MetricDefinition, validate_metrics
from gate_middleware.domain.naming import valid_name
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.errors import ConfigError
from gate_middleware.judge.statistics import JudgeSettings

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # a URL's scheme, as urlsplit reads it


def validate_store_url(url: object) -> str:
    """``url`` if it is a URL with a scheme (``sqlite:///…``, ``redis://…``);
    else a ``ConfigError`` that shows its scheme only (the rest may hold a
    password). Whether a backend serves the scheme is the store registry's
    to say, when the gate opens it."""
    # The scheme alone: the rest of a URL that does not parse
    # (``redis://[::1/0``) is the backend's to refuse, password hidden.
    if not (isinstance(url, str) and _SCHEME.match(url)):
        raise ConfigError(
            "store", type(url).__name__, "None or a store URL such as sqlite:///path/gate.db"
        )
    return str(url)


#: The keys a scenario's table may hold (``PromotionConfig.from_toml`` and
#: ``from_table``; the admin API's ``POST /rollouts`` body).
SCENARIO_KEYS = frozenset(
    {
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
        "holdback_percent",
        "initial_delay_seconds",
        "salt",
        "cohort",
        "plan",
        "store",
        "metrics",
    }
)
#: The scenario keys read into something else than the config field of their name.
_READ_APART = frozenset(
    {"promotion_environment", "promotion_traffic_percent", "description", "plan"}
)


def scenario_table(
    path: str | PathLike[str], scenario: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Where in the scenario file at ``path`` the scenario ``scenario`` is
    (``scenarios.NAME``, for errors) and its table, as the file holds it;
    with ``scenario=None`` the file must hold exactly one. A ``ConfigError``
    when the file is not TOML or holds no such scenario."""
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
    return f"scenarios.{scenario}", table


def validate_flag_name(name: Any, field: str = "feature flag") -> str:
    """Return ``name`` if it is a valid flag name, or raise ``ConfigError``."""
    if not valid_name(name):
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


def _fraction_of_100(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, "a percentage from 0 to 100")
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 100.0:
        raise ConfigError(field, value, "a percentage from 0 to 100")
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
    """What counts as a good request, and how strictly the canary is judged.

    A request is *good* when it succeeded and took no longer than
    ``latency_objective_seconds``; SLO compliance is good / all.

    The judge (``gate_middleware.judge.statistics``) rolls a release back only on an
    anytime-valid test, so that a release as good as production is rolled
    back with probability at most ``false_rollback_rate`` over its whole
    life (every step, staging, a 100 % canary), however often it is
    evaluated:

    - ``error_rate_tolerance``: the canary's failure rate may exceed
      production's by this much (an absolute difference: 0.001 is 0.1
      percentage point) before it counts as a regression. 0 by default:
      any established increase rolls back.
    - ``latency_tolerance``: the canary's durations may be this many times
      production's (1.5, the guide's rollback line).
    - ``monitor_tolerance``: above this ratio (1.1, the guide's MONITOR band)
      a sign of a regression keeps the verdict from HEALTHY.
    - ``burn_rate_threshold``: with no concurrent baseline (or a thin one),
      a canary whose bad rate is shown, anytime-validly, to be above this
      many times the error budget (``1 - slo_threshold``) is rolled back.
    """

    latency_objective_seconds: float = 0.5
    false_rollback_rate: float = 0.01
    error_rate_tolerance: float = 0.0
    latency_tolerance: float = 1.5
    monitor_tolerance: float = 1.1
    burn_rate_threshold: float = 2.0

    def __post_init__(self) -> None:
        _positive_number(self.latency_objective_seconds, "latency_objective_seconds")
        rate = _fraction(self.false_rollback_rate, "false_rollback_rate")
        if not 0.0 < rate <= 0.5:
            raise ConfigError(
                "false_rollback_rate", self.false_rollback_rate, "a number above 0, up to 0.5"
            )
        _fraction(self.error_rate_tolerance, "error_rate_tolerance")
        for name in ("latency_tolerance", "monitor_tolerance"):
            value = getattr(self, name)
            if _positive_number(value, name) < 1.0:
                raise ConfigError(name, value, "a ratio of at least 1.0")
        if self.monitor_tolerance > self.latency_tolerance:
            raise ConfigError(
                "monitor_tolerance",
                self.monitor_tolerance,
                f"a ratio no larger than latency_tolerance ({self.latency_tolerance})",
            )
        _positive_number(self.burn_rate_threshold, "burn_rate_threshold")


@dataclass(frozen=True)
class PromotionConfig:
    """How a gate starts and how strictly it judges.

    ``feature_flags`` are the release's flags while ``environment`` is a
    canary or staging, and the stable flags (on for everyone) when it is
    production. ``name`` names the rollout: it is part of the routing hash,
    so two rollouts split sessions independently.

    ``min_requests``: the evidence (outcomes on each side in the current
    step) needed before a verdict other than INSUFFICIENT_DATA or ROLLBACK.
    ``holdback_percent``: a share of sessions kept on the stable path in
    staging and at a 100 % canary, so they are judged against a concurrent
    baseline (0 keeps the guide's "staging = 100 %": they are then judged
    against the SLO objective). ``initial_delay_seconds``: a
    warm-up after each step during which outcomes are shown but not judged
    (Argo Rollouts' ``initialDelay``). ``salt`` replaces the rollout name in
    the routing formula; ``cohort="release"`` salts it with the release
    number too, so each release takes a fresh cohort of sessions
    (``"rollout"``, the default, keeps the published formula and its test
    vectors). ``plan``: a ``RolloutPlan`` (or a dict of its fields) that the
    gate carries out by itself once a release starts (``None``: every step
    is a person's call). ``store``: the URL of a store that every process
    of the app shares (``sqlite:///path/gate.db`` on one host,
    ``redis://...`` across hosts; see ``PromotionGate.from_url``): a
    ``PromotionGate(config)`` opens it; ``None`` keeps the state in the
    process's memory. ``metrics``: the business metrics the app reports
    with ``track()`` and how each is judged (``MetricDefinition``, or a
    table of its fields; ``gate_middleware.domain.metrics``).
    """

    environment: Environment = field(default_factory=lambda: Environment.PRODUCTION)
    feature_flags: Sequence[str] = ()
    auto_rollback_enabled: bool = True
    slo_threshold: float = 0.95
    rollback_window_seconds: float = 300
    name: str = "default"
    min_requests: int = 100
    evaluation_interval_seconds: float = 5.0
    holdback_percent: float = 0.0
    initial_delay_seconds: float = 0.0
    salt: str | None = None
    cohort: str = "rollout"
    plan: RolloutPlan | None = None
    store: str | None = field(default=None, repr=False)  # may hold a password
    metrics: Sequence[MetricDefinition] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", validate_metrics(self.metrics))
        if self.store is not None:
            validate_store_url(self.store)
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
        if not valid_name(self.name):
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
        holdback = _fraction_of_100(self.holdback_percent, "holdback_percent")
        if holdback > 50.0:
            raise ConfigError(
                "holdback_percent", self.holdback_percent, "a percentage from 0 to 50"
            )
        delay = self.initial_delay_seconds
        if (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not 0 <= delay < math.inf
        ):
            raise ConfigError("initial_delay_seconds", delay, "a non-negative number of seconds")
        if self.salt is not None and (not valid_name(self.salt)):
            raise ConfigError(
                "salt",
                self.salt,
                "None or 1 to 128 characters of letters, digits, '_', '.', ':' or '-'",
            )
        if self.cohort not in ("rollout", "release"):
            raise ConfigError("cohort", self.cohort, "'rollout' or 'release'")
        if isinstance(self.plan, dict):
            object.__setattr__(self, "plan", RolloutPlan.from_dict(self.plan))
        elif self.plan is not None and not isinstance(self.plan, RolloutPlan):
            raise ConfigError("plan", self.plan, "None, a RolloutPlan or a table of its fields")

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
        ``evaluation_interval_seconds``, ``name`` and a ``plan`` table
        (``[scenarios.NAME.plan]``: ``steps``, ``bake_seconds``,
        ``staging_bake_seconds``, ``staging_manual``,
        ``inconclusive_limit_seconds``), ``store``, the URL of a shared
        store (``"sqlite:///var/lib/shop/gate.db"``), and ``metrics``
        (``[[scenarios.NAME.metrics]]`` tables: ``name``, ``kind``, ``bad``,
        ``tolerance``, ``guardrail``). With ``scenario=None``
        the file must hold exactly one scenario. Keyword ``overrides``
        replace fields after reading.
        """
        where, table = scenario_table(path, scenario)
        return cls._from_scenario(where, table, overrides)

    @classmethod
    def from_table(cls, table: Any, where: str = "rollout") -> PromotionConfig:
        """A config from a table of a scenario's keys (``from_toml``'s, as
        JSON or a dict): what a rollout added at run time is given as and
        kept as (``Rollouts.create``, ``POST /rollouts``). ``where`` names
        the table in errors."""
        if not isinstance(table, dict):
            raise ConfigError(where, table, "a table of a scenario's keys (a JSON object)")
        return cls._from_scenario(where, table, {})

    def to_table(self) -> dict[str, Any]:
        """This config as a table ``from_table`` reads back to an equal config
        (JSON-ready, but for a plan's ``max_step_ratio`` of ``inf``). The
        ``store`` is not in it: the table travels through the store."""
        environment = self.environment
        table: dict[str, Any] = {"name": self.name}
        if environment.name == CANARY_STAGE:
            percent = environment.traffic_percent
            table["promotion_environment"] = "canary" if percent > 0 else "shadow"
            if percent > 0:
                table["promotion_traffic_percent"] = percent
        else:
            table["promotion_environment"] = environment.name
        table.update(
            feature_flags=list(self.feature_flags),
            auto_rollback_enabled=self.auto_rollback_enabled,
            slo_threshold=self.slo_threshold,
            rollback_window_seconds=self.rollback_window_seconds,
            min_requests=self.min_requests,
            evaluation_interval_seconds=self.evaluation_interval_seconds,
            holdback_percent=self.holdback_percent,
            initial_delay_seconds=self.initial_delay_seconds,
            cohort=self.cohort,
            metrics=[metric.to_dict() for metric in self.metrics],
        )
        if self.salt is not None:
            table["salt"] = self.salt
        if self.plan is not None:
            table["plan"] = self.plan.to_table()
        return table

    @classmethod
    def _from_scenario(
        cls, where: str, table: dict[str, Any], overrides: dict[str, Any]
    ) -> PromotionConfig:
        unknown = sorted(set(table) - SCENARIO_KEYS)
        if unknown:
            raise ConfigError(where, unknown[0], f"one of the keys {sorted(SCENARIO_KEYS)}")
        env_name = table.get("promotion_environment", "production")
        percent = table.get("promotion_traffic_percent")
        if env_name == "shadow":
            environment = Environment.canary(0.0)
        elif env_name == "canary":
            environment = Environment.canary(
                validate_traffic_percent(
                    10.0 if percent is None else percent,
                    f"{where}.promotion_traffic_percent",
                )
            )
        elif env_name in ("staging", "production"):
            environment = Environment.from_name(env_name)
        else:
            raise ConfigError(
                f"{where}.promotion_environment",
                env_name,
                "one of 'canary', 'staging', 'production', 'shadow'",
            )
        fields: dict[str, Any] = {"environment": environment}
        for key in SCENARIO_KEYS - _READ_APART:
            if key in table:
                fields[key] = table[key]
        if "plan" in table:
            fields["plan"] = RolloutPlan.from_dict(table["plan"], f"{where}.plan")
        fields.update(overrides)
        return cls(**fields)


def judge_settings(config: PromotionConfig, slo: SloConfig) -> JudgeSettings:
    """What the judge needs of a rollout's config and its SLO."""
    return JudgeSettings(
        false_rollback_rate=slo.false_rollback_rate,
        error_rate_tolerance=slo.error_rate_tolerance,
        latency_tolerance=slo.latency_tolerance,
        monitor_tolerance=slo.monitor_tolerance,
        min_requests=config.min_requests,
        slo_threshold=config.slo_threshold,
        burn_rate_threshold=slo.burn_rate_threshold,
        latency_objective_seconds=slo.latency_objective_seconds,
    )
