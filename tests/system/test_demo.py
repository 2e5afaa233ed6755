"""The demo scenarios, as a newcomer runs them (shorter), with their outcomes asserted."""

from __future__ import annotations

import re
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


def actions(out: str) -> list[str]:
    history = out.split("History:")[1].split("Plan timeline:")[0]
    events = [line for line in history.splitlines() if line.startswith("  ") and ": " in line]
    return [line.split(": ", 1)[0].split()[-1] for line in events]


def test_the_plan_carries_the_healthy_release_to_production() -> None:
    # 15 s of bakes; the rest is room for holds. The MONITOR sign is a plain
    # 5 % check, so a healthy canary is sometimes held, and the step's
    # evidence keeps an early run of failures until enough requests outweigh
    # it (a clean-clone run held the first step for 31 s of a 40 s budget).
    # The demo ends as soon as the release reaches production.
    result = demo("healthy", 90)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Final environment: production" in out
    assert "new_checkout_flow is on for every session" in out
    steps = [a for a in actions(out) if a != "hold"]  # a hold is the plan waiting, not a step
    assert steps == ["start_canary"] + ["plan_step"] * 5  # nobody steered it
    timeline = out.split("Plan timeline:")[1].splitlines()[1:]
    entered = [line.split(" entered at")[0].strip() for line in timeline]
    assert entered == [
        "canary (5%)",
        "canary (10%)",
        "canary (25%)",
        "canary (50%)",
        "staging",
        "production",
    ]
    assert all(re.search(r"left on HEALTHY \(gate, worker \d+\)", line) for line in timeline[:-1])
    workers = re.search(r"answered by (\d+) workers", out)
    assert workers is not None and workers.group(1) == "2"  # both processes served
    assert "rollback" not in out.split("History:")[1]
    assert "RESULT: OK" in out


def test_the_faulty_release_is_rolled_back_by_the_judge() -> None:
    result = demo("faulty", 30)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Final environment: production" in out
    assert "automatic rollback: canary (5%) -> production" in out
    once = re.search(r"Rolled back automatically, 1 time\(s\) by 2 workers, worker \d+: (.*)", out)
    assert once is not None, out  # two workers judged; one rollback
    reason = once.group(1)
    assert reason.startswith(("Canary SLO violation", "Canary health score"))
    assert "plan_step" not in out
    assert "production (rolled back)" in out.split("Plan timeline:")[1]
    assert "RESULT: OK" in out


def test_the_manual_gate_waits_and_shows_how_to_resume() -> None:
    result = demo("manual", 40)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "The plan waits at a manual gate" in out
    assert "plan resume" in out
    steps = [a for a in actions(out) if a != "hold"]
    assert steps[:5] == ["start_canary", "plan_step", "plan_step", "await_approval", "resume"]
    assert steps[5:] == ["plan_step"] * 3
    assert "Final environment: production" in out and "RESULT: OK" in out


def test_a_release_that_breaks_checkout_silently_is_rolled_back_by_its_metric() -> None:
    result = demo("metric", 60)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "automatic rollback: canary (5%) -> production" in out
    once = re.search(r"Rolled back automatically, 1 time\(s\) by 2 workers, worker \d+: (.*)", out)
    assert once is not None, out
    assert "metric checkout_completed (sessions converting) on the canary 0 " in once.group(1)
    assert "RESULT: OK" in out


def test_sigterm_stops_the_demo_and_its_server() -> None:
    """demo --keep-serving killed with SIGTERM leaves nothing serving, and the
    demo's cookie is signed (no unsigned-cookie warning)."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo_run = subprocess.Popen(
        [CLI, "demo", "--duration", "5", "--users", "5", "--keep-serving", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo_run.stdout is not None
        deadline = time.monotonic() + 120
        for line in demo_run.stdout:  # bounded by the demo's own end and the deadline
            if "still serving" in line or time.monotonic() > deadline:
                break
        demo_run.send_signal(signal.SIGTERM)
        _, err = demo_run.communicate(timeout=60)
    finally:
        demo_run.kill()
    assert demo_run.returncode == 128 + signal.SIGTERM
    with socket.socket() as probe:  # nobody serves the port any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert "cookie is not signed" not in err
