from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_promotion_gates_example_runs_the_guides_workflow() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "promotion_gates_example.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "FAILED" not in out
    assert "promoted to production" in out
    assert "Triggering automatic rollback" in out
    assert "All checks passed." in out


def test_the_shop_example_is_rolled_back_by_its_business_metric() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "shop_guardrail.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
    assert "the reason names the metric" in result.stdout
    assert "All checks passed." in result.stdout
