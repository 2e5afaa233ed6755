"""Guarantee 13: bad input to the public API gets a clear error naming what is
wrong, and changes nothing. One table: config values, TOML files, promotion
targets, flag names, durations, middleware options and admin payloads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gate_middleware import (
    ConfigError,
    Environment,
    GateWSGIMiddleware,
    PromotionConfig,
    PromotionError,
    PromotionGate,
    SloConfig,
)
from gate_middleware.operate.admin import AdminAPI
from tests.support import FakeClock

TOKEN = "bad-input-token-0123456789"


@dataclass
class World:
    gate: PromotionGate
    admin: AdminAPI
    tmp: Path

    def toml(self, text: str) -> Path:
        path = self.tmp / "scenarios.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def post(
        self, path: str, body: Any, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        if body is None:
            raw = b""
        else:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = self.admin.handle("POST", path, f"Bearer {TOKEN}", raw, content_type)
        return response.status, json.loads(response.body)


def app(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover - never called
    return []


Case = tuple[str, Callable[[World], Any], str]
CASES: list[Case] = [
    # PromotionConfig
    (
        "environment as a string",
        lambda w: PromotionConfig(environment="canary"),
        "ConfigError:environment",
    ),  # type: ignore[arg-type]
    (
        "feature_flags as a string",
        lambda w: PromotionConfig(feature_flags="new_api"),
        "ConfigError:feature_flags",
    ),  # type: ignore[arg-type]
    (
        "an empty flag name",
        lambda w: PromotionConfig(feature_flags=["ok", ""]),
        "ConfigError:feature_flags",
    ),
    (
        "a flag name that is a number",
        lambda w: PromotionConfig(feature_flags=[1]),
        "ConfigError:feature_flags",
    ),  # type: ignore[list-item]
    (
        "auto_rollback_enabled as text",
        lambda w: PromotionConfig(auto_rollback_enabled="yes"),
        "ConfigError:auto_rollback_enabled",
    ),  # type: ignore[arg-type]
    (
        "slo_threshold above 1",
        lambda w: PromotionConfig(slo_threshold=1.5),
        "ConfigError:slo_threshold",
    ),
    (
        "slo_threshold below 0",
        lambda w: PromotionConfig(slo_threshold=-0.1),
        "ConfigError:slo_threshold",
    ),
    (
        "slo_threshold NaN",
        lambda w: PromotionConfig(slo_threshold=float("nan")),
        "ConfigError:slo_threshold",
    ),
    (
        "a zero window",
        lambda w: PromotionConfig(rollback_window_seconds=0),
        "ConfigError:rollback_window_seconds",
    ),
    (
        "a negative window",
        lambda w: PromotionConfig(rollback_window_seconds=-5),
        "ConfigError:rollback_window_seconds",
    ),
    (
        "an infinite window",
        lambda w: PromotionConfig(rollback_window_seconds=float("inf")),
        "ConfigError:rollback_window_seconds",
    ),
    ("an empty rollout name", lambda w: PromotionConfig(name=""), "ConfigError:name"),
    ("a rollout name with a space", lambda w: PromotionConfig(name="a b"), "ConfigError:name"),
    ("min_requests 0", lambda w: PromotionConfig(min_requests=0), "ConfigError:min_requests"),
    ("min_requests 2.5", lambda w: PromotionConfig(min_requests=2.5), "ConfigError:min_requests"),  # type: ignore[arg-type]
    (
        "a zero evaluation interval",
        lambda w: PromotionConfig(evaluation_interval_seconds=0),
        "ConfigError:evaluation_interval_seconds",
    ),
    # Environment and SloConfig
    ("a negative canary", lambda w: Environment.canary(-1), "ConfigError:traffic_percent"),
    ("a canary over 100", lambda w: Environment.canary(100.5), "ConfigError:traffic_percent"),
    ("a NaN canary", lambda w: Environment.canary(float("nan")), "ConfigError:traffic_percent"),
    ("a boolean canary", lambda w: Environment.canary(True), "ConfigError:traffic_percent"),
    ("an unknown environment", lambda w: Environment.from_name("qa"), "ConfigError:environment"),
    ("staging at 50 %", lambda w: Environment("staging", 50), "ConfigError:traffic_percent"),
    (
        "a zero latency objective",
        lambda w: SloConfig(latency_objective_seconds=0),
        "ConfigError:latency_objective_seconds",
    ),
    (
        "a zero false-rollback rate",
        lambda w: SloConfig(false_rollback_rate=0),
        "ConfigError:false_rollback_rate",
    ),
    (
        "a latency tolerance below 1",
        lambda w: SloConfig(latency_tolerance=0.9),
        "ConfigError:latency_tolerance",
    ),
    (
        "a MONITOR band beyond the rollback line",
        lambda w: SloConfig(monitor_tolerance=2.0),
        "ConfigError:monitor_tolerance",
    ),
    (
        "a negative error tolerance",
        lambda w: SloConfig(error_rate_tolerance=-0.01),
        "ConfigError:error_rate_tolerance",
    ),
    (
        "a holdback over half",
        lambda w: PromotionConfig(holdback_percent=60),
        "ConfigError:holdback_percent",
    ),
    (
        "a negative warm-up",
        lambda w: PromotionConfig(initial_delay_seconds=-1),
        "ConfigError:initial_delay_seconds",
    ),
    ("an unknown cohort", lambda w: PromotionConfig(cohort="user"), "ConfigError:cohort"),
    ("a salt with a space", lambda w: PromotionConfig(salt="a b"), "ConfigError:salt"),
    # TOML files
    (
        "TOML: unknown environment",
        lambda w: PromotionConfig.from_toml(
            w.toml("[scenarios.a]\npromotion_environment = 'qa'\n"), "a"
        ),
        "ConfigError:scenarios.a.promotion_environment",
    ),
    (
        "TOML: traffic over 100",
        lambda w: PromotionConfig.from_toml(
            w.toml(
                "[scenarios.a]\npromotion_environment = 'canary'\npromotion_traffic_percent = 150\n"
            ),
            "a",
        ),
        "ConfigError:scenarios.a.promotion_traffic_percent",
    ),
    (
        "TOML: threshold 2",
        lambda w: PromotionConfig.from_toml(w.toml("[scenarios.a]\nslo_threshold = 2\n"), "a"),
        "ConfigError:slo_threshold",
    ),
    (
        "TOML: an unknown key",
        lambda w: PromotionConfig.from_toml(w.toml("[scenarios.a]\nunknown_key = 1\n"), "a"),
        "ConfigError:scenarios.a",
    ),
    (
        "TOML: several scenarios, none named",
        lambda w: PromotionConfig.from_toml(w.toml("[scenarios.a]\n[scenarios.b]\n")),
        "ConfigError:scenario",
    ),
    (
        "TOML: an unknown scenario",
        lambda w: PromotionConfig.from_toml(w.toml("[scenarios.a]\n"), "missing"),
        "ConfigError:scenario",
    ),
    (
        "TOML: no scenarios table",
        lambda w: PromotionConfig.from_toml(w.toml("[other]\n")),
        "ConfigError:scenarios",
    ),
    (
        "TOML: not TOML",
        lambda w: PromotionConfig.from_toml(w.toml("not toml [")),
        "ConfigError:toml file",
    ),
    # Promotion targets and gate calls
    ("promote to a string", lambda w: w.gate.promote("staging"), "ConfigError:target"),  # type: ignore[arg-type]
    (
        "promote canary to canary",
        lambda w: w.gate.promote(Environment.canary(20), force=True),
        "PromotionError:set_traffic_percent",
    ),
    (
        "promote without enough data",
        lambda w: w.gate.promote(Environment.STAGING),
        "PromotionError:not enough data",
    ),
    (
        "start a canary during a release",
        lambda w: w.gate.start_canary(5, ["x"]),
        "PromotionError:already in canary",
    ),
    ("traffic 101", lambda w: w.gate.set_traffic_percent(101), "ConfigError:traffic_percent"),
    (
        "traffic NaN",
        lambda w: w.gate.set_traffic_percent(float("nan")),
        "ConfigError:traffic_percent",
    ),
    ("traffic as text", lambda w: w.gate.set_traffic_percent("10"), "ConfigError:traffic_percent"),  # type: ignore[arg-type]
    ("an empty rollback reason", lambda w: w.gate.rollback(""), "ConfigError:reason"),
    # Flag names
    ("enable an empty flag", lambda w: w.gate.enable_feature(""), "ConfigError:feature"),
    (
        "enable a flag with a space",
        lambda w: w.gate.enable_feature("has space"),
        "ConfigError:feature",
    ),
    (
        "enable a 200-character flag",
        lambda w: w.gate.enable_feature("x" * 200),
        "ConfigError:feature",
    ),
    (
        "disable a flag that is off",
        lambda w: w.gate.disable_feature("never_on"),
        "ConfigError:feature",
    ),
    (
        "start a canary with a bad flag",
        lambda w: w.gate.start_canary(5, ["ok", "no/slash"]),
        "ConfigError:feature_flags",
    ),
    # Durations and variants
    (
        "a negative duration",
        lambda w: w.gate.record_request_outcome("s", True, -1.0),
        "ConfigError:duration",
    ),
    (
        "a NaN duration",
        lambda w: w.gate.record_request_outcome("s", True, float("nan")),
        "ConfigError:duration",
    ),
    (
        "an infinite duration",
        lambda w: w.gate.record_request_outcome("s", True, float("inf")),
        "ConfigError:duration",
    ),
    (
        "a duration as text",
        lambda w: w.gate.record_request_outcome("s", True, "1"),
        "ConfigError:duration",
    ),  # type: ignore[arg-type]
    (
        "an unknown variant",
        lambda w: w.gate.record_request_outcome("s", True, 1.0, variant="blue"),
        "ConfigError:variant",
    ),
    # Middleware options
    (
        "a short cookie secret",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, secret="short"),
        "ConfigError:secret",
    ),
    (
        "a cookie name with a space",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, cookie_name="a b"),
        "ConfigError:cookie_name",
    ),
    (
        "a negative cookie max age",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, cookie_max_age=-1),
        "ConfigError:cookie_max_age",
    ),
    (
        "a short override token",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, override_token="qa"),
        "ConfigError:override_token",
    ),
    (
        "exclude_paths as one string",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, exclude_paths="/healthz"),
        "ConfigError:exclude_paths",
    ),
    (
        "an exclude path without a slash",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, exclude_paths=["healthz"]),
        "ConfigError:exclude_paths",
    ),
    (
        "a gate that is not a gate",
        lambda w: GateWSGIMiddleware(app, gate=object()),
        "ConfigError:gate",
    ),  # type: ignore[arg-type]
    ("an admin app without a token", lambda w: AdminAPI(w.gate, token=None), "ConfigError:token"),
    (
        "an admin token with a space",
        lambda w: AdminAPI(w.gate, token="admin token 0123456789"),
        "ConfigError:token",
    ),
    (
        "an admin token with a non-ASCII letter",
        lambda w: AdminAPI(w.gate, token="admin-tökén-0123456789"),
        "ConfigError:token",
    ),
    (
        "an admin token with a trailing space",
        lambda w: AdminAPI(w.gate, token="admin-token-0123456789 "),
        "ConfigError:token",
    ),
    (
        "an override token with a newline",
        lambda w: GateWSGIMiddleware(app, gate=w.gate, override_token="qa-token-0123456789\n"),
        "ConfigError:override_token",
    ),
    (
        "secret fallbacks without a secret",
        lambda w: GateWSGIMiddleware(
            app, gate=w.gate, secret_fallbacks=["old-secret-0123456789abcdef"]
        ),
        "ConfigError:secret_fallbacks",
    ),
    (
        "a secret fallback that is too short",
        lambda w: GateWSGIMiddleware(
            app, gate=w.gate, secret="new-secret-0123456789abcdef", secret_fallbacks=["old"]
        ),
        "ConfigError:secret_fallbacks",
    ),
    (
        "secret fallbacks as one string",
        lambda w: GateWSGIMiddleware(
            app,
            gate=w.gate,
            secret="new-secret-0123456789abcdef",
            secret_fallbacks="old-secret-0123456789abcdef",
        ),
        "ConfigError:secret_fallbacks",
    ),
    ("traffic -0.0", lambda w: w.gate.set_traffic_percent(-0.0), "ConfigError:traffic_percent"),
    (
        "a rollback reason with a line break",
        lambda w: w.gate.rollback("x\n2026-11-30 INFO Promoted from canary to production"),
        "ConfigError:reason",
    ),
    (
        "a rollback reason with ESC and BEL",
        lambda w: w.gate.rollback("\x1b]0;owned\x07\x1b[2J"),
        "ConfigError:reason",
    ),
    (
        "a rollback reason with a bidi override",
        lambda w: w.gate.rollback("fine \u202eenil"),
        "ConfigError:reason",
    ),
    # Admin payloads
    (
        "admin: traffic 150",
        lambda w: w.post("/traffic", {"percent": 150}),
        "HTTP 400:traffic_percent",
    ),
    ("admin: traffic missing", lambda w: w.post("/traffic", {}), "HTTP 400:percent"),
    (
        "admin: an unknown field",
        lambda w: w.post("/traffic", {"percent": 10, "extra": 1}),
        "HTTP 400:extra",
    ),
    ("admin: promote to qa", lambda w: w.post("/promote", {"target": "qa"}), "HTTP 400:target"),
    (
        "admin: force as text",
        lambda w: w.post("/promote", {"target": "staging", "force": "yes"}),
        "HTTP 400:force",
    ),
    (
        "admin: flags as text",
        lambda w: w.post("/canary", {"percent": 5, "flags": "x"}),
        "HTTP 400:flags",
    ),
    ("admin: an empty reason", lambda w: w.post("/rollback", {"reason": ""}), "HTTP 400:reason"),
    ("admin: not JSON", lambda w: w.post("/traffic", b"{not json"), "HTTP 400:"),
    ("admin: a JSON list", lambda w: w.post("/traffic", b"[1]"), "HTTP 400:"),
    (
        "admin: a duplicate key",
        lambda w: w.post("/traffic", b'{"percent": 10, "percent": 150}'),
        "HTTP 400:percent",
    ),
    (
        "admin: traffic -0.0",
        lambda w: w.post("/traffic", b'{"percent": -0.0}'),
        "HTTP 400:traffic_percent",
    ),
    ("admin: traffic NaN", lambda w: w.post("/traffic", b'{"percent": NaN}'), "HTTP 400:"),
    (
        "admin: JSON nested 2,000 levels",
        lambda w: w.post("/traffic", b"[" * 2000 + b"]" * 2000),
        "HTTP 400:",
    ),
    (
        "admin: a body that is not UTF-8",
        lambda w: w.post("/traffic", b'{"percent": "\xff"}'),
        "HTTP 400:",
    ),
    (
        "admin: text/plain",
        lambda w: w.post("/traffic", {"percent": 20}, "text/plain"),
        "HTTP 415:",
    ),
    ("admin: no content type", lambda w: w.post("/traffic", {"percent": 20}, ""), "HTTP 415:"),
    (
        "admin: a field in a flag's body",
        lambda w: w.post("/flags/new_api/disable", {"name": "other"}),
        "HTTP 400:name",
    ),
    (
        "admin: a reason with escape characters",
        lambda w: w.post("/rollback", {"reason": "ok\x1b[2J\x07"}),
        "HTTP 400:reason",
    ),
    (
        "admin: a bad flag name",
        lambda w: w.post("/flags/bad name/enable", None),
        "HTTP 400:feature",
    ),
    (
        "admin: an unhealthy promotion",
        lambda w: w.post("/promote", {"target": "staging"}),
        "HTTP 409:",
    ),
]


def test_the_table_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("case", "action", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_changes_nothing(
    tmp_path: Path, case: str, action: Callable[[World], Any], expected: str
) -> None:
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(10), feature_flags=["new_api"], min_requests=50
        ),
        clock=FakeClock(),
    )
    for i in range(20):
        gate.record_request_outcome(f"s{i}", True, 0.01, variant="stable")
    world = World(gate, AdminAPI(gate, token=TOKEN), tmp_path)
    state, windows = gate.state, gate.health_snapshot()

    kind, _, detail = expected.partition(":")
    if kind == "ConfigError":
        with pytest.raises(ConfigError) as info:
            action(world)
        assert info.value.field == detail
        message = str(info.value)
        assert detail in message and "must be" in message and "got" in message
        assert isinstance(info.value, ValueError)
    elif kind == "PromotionError":
        with pytest.raises(PromotionError, match=detail):
            action(world)
    else:
        status, payload = action(world)
        assert status == int(kind.split()[1])
        assert payload["error"]
        if detail:
            assert payload.get("field") == detail
    assert gate.state == state
    assert gate.health_snapshot() == windows
