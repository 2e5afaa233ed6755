from __future__ import annotations

from pathlib import Path

from gate_middleware import Environment, PromotionConfig, SloConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "promotion_config.toml"


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


def test_single_scenario_needs_no_name(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text("[scenarios.only]\npromotion_environment = 'staging'\n", encoding="utf-8")
    assert PromotionConfig.from_toml(path).environment == Environment.STAGING
