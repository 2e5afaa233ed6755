from __future__ import annotations

from pathlib import Path

import pytest

from gate_middleware import ConfigError, Environment, PromotionConfig, SloConfig

EXAMPLE = Path(__file__).parent.parent / "examples" / "promotion_config.toml"


def test_defaults_are_the_guides() -> None:
    config = PromotionConfig()
    assert config.environment == Environment.PRODUCTION
    assert config.feature_flags == ()
    assert config.auto_rollback_enabled is True
    assert config.slo_threshold == 0.95
    assert config.rollback_window_seconds == 300
    assert config.name == "default"
    assert config.min_requests == 100
    assert config.evaluation_interval_seconds == 5.0
    assert SloConfig().latency_objective_seconds == 0.5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"environment": "canary"}, "environment"),
        ({"feature_flags": "new_api"}, "feature_flags"),
        ({"feature_flags": ["ok", ""]}, "feature_flags"),
        ({"feature_flags": [1]}, "feature_flags"),
        ({"auto_rollback_enabled": "yes"}, "auto_rollback_enabled"),
        ({"slo_threshold": 1.5}, "slo_threshold"),
        ({"slo_threshold": -0.1}, "slo_threshold"),
        ({"slo_threshold": float("nan")}, "slo_threshold"),
        ({"rollback_window_seconds": 0}, "rollback_window_seconds"),
        ({"rollback_window_seconds": -5}, "rollback_window_seconds"),
        ({"rollback_window_seconds": float("inf")}, "rollback_window_seconds"),
        ({"name": ""}, "name"),
        ({"name": "a b"}, "name"),
        ({"min_requests": 0}, "min_requests"),
        ({"min_requests": 2.5}, "min_requests"),
        ({"evaluation_interval_seconds": 0}, "evaluation_interval_seconds"),
    ],
)
def test_bad_config_names_the_field_and_value(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromotionConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    given = next(iter(kwargs.values()))
    bad = info.value.value
    assert bad is given or bad in given  # type: ignore[operator]
    assert field in str(info.value) and repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Environment.canary(-1), "traffic_percent"),
        (lambda: Environment.canary(100.5), "traffic_percent"),
        (lambda: Environment.canary(float("nan")), "traffic_percent"),
        (lambda: Environment.canary(True), "traffic_percent"),
        (lambda: Environment("blue", 10), "environment"),
        (lambda: Environment("staging", 50), "traffic_percent"),
        (lambda: Environment.from_name("qa"), "environment"),
        (lambda: SloConfig(latency_objective_seconds=0), "latency_objective_seconds"),
        (lambda: SloConfig(error_rate_floor=0), "error_rate_floor"),
    ],
)
def test_bad_environment_and_slo(build: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field


def test_the_guides_scenarios_load() -> None:
    expected = {
        "dev": Environment.PRODUCTION,
        "canary_5pct": Environment.canary(5),
        "canary_10pct": Environment.canary(10),
        "canary_25pct": Environment.canary(25),
        "canary_50pct": Environment.canary(50),
        "staging": Environment.STAGING,
        "production": Environment.PRODUCTION,
        "shadow": Environment.canary(0),
    }
    for scenario, environment in expected.items():
        config = PromotionConfig.from_toml(EXAMPLE, scenario)
        assert config.environment == environment, scenario
    assert PromotionConfig.from_toml(EXAMPLE, "production").slo_threshold == 0.98
    assert PromotionConfig.from_toml(EXAMPLE, "canary_5pct", name="checkout").name == "checkout"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gate.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "scenario", "field"),
    [
        ("[scenarios.a]\npromotion_environment = 'qa'\n", "a", "scenarios.a.promotion_environment"),
        (
            "[scenarios.a]\npromotion_environment = 'canary'\npromotion_traffic_percent = 150\n",
            "a",
            "scenarios.a.promotion_traffic_percent",
        ),
        ("[scenarios.a]\nslo_threshold = 2\n", "a", "slo_threshold"),
        ("[scenarios.a]\nunknown_key = 1\n", "a", "scenarios.a"),
        ("[scenarios.a]\n[scenarios.b]\n", None, "scenario"),
        ("[scenarios.a]\n", "missing", "scenario"),
        ("[other]\n", None, "scenarios"),
        ("not toml [", None, "toml file"),
    ],
)
def test_bad_toml(tmp_path: Path, text: str, scenario: str | None, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromotionConfig.from_toml(write(tmp_path, text), scenario)
    assert info.value.field == field


def test_single_scenario_needs_no_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[scenarios.only]\npromotion_environment = 'staging'\n")
    assert PromotionConfig.from_toml(path).environment == Environment.STAGING
