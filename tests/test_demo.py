"""Both demo scenarios, as a newcomer runs them (shorter), with their outcomes asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "gate-middleware")


def demo(scenario: str, duration: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "demo", "--scenario", scenario, "--duration", str(duration), "--users", "40"],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )


def test_the_healthy_release_reaches_production() -> None:
    result = demo("healthy", 40)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Final environment: production" in out
    assert "new_checkout_flow is on for every session" in out
    history = out.split("History:")[1]
    steps = [line.split(": ", 1)[0].split()[-1] for line in history.splitlines() if ": " in line]
    assert steps[:5] == ["start_canary", "set_traffic", "set_traffic", "promote", "promote"]
    assert "canary (25%) -> staging" in history and "staging -> production" in history
    assert "rollback" not in history
    assert "RESULT: OK" in out


def test_the_faulty_release_is_rolled_back_by_the_gate() -> None:
    result = demo("faulty", 30)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Final environment: production" in out
    assert "automatic rollback: canary (10%) -> production" in out
    reason = out.split("Rolled back automatically: ")[1].splitlines()[0]
    assert reason.startswith(("Canary SLO violation", "Canary health score"))
    assert "RESULT: OK" in out
