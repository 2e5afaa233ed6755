"""A bounded run of the coverage-guided fuzzer (benchmarks/fuzz_cookie.py,
atheris) over the cookie, header and admin request parsing: 0 failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = 20_000


def fuzz(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("atheris")  # in the test extra on Linux
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.fuzz_cookie",
            f"-artifact_prefix={tmp_path}/",
            "-max_len=4096",
            *args,
        ],
        cwd=ROOT,
        # No clock in the suite: the fuzz campaign in benchmarks/ measures parse times.
        env={**os.environ, "GATE_FUZZ_TIMED": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_fuzzer_breaks_nothing(tmp_path: Path) -> None:
    result = fuzz(tmp_path, f"-runs={RUNS}", "-seed=12")
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} runs" in result.stderr
    assert list(tmp_path.glob("crash-*")) == []


CRASHES = sorted((ROOT / "tests" / "data" / "fuzz").iterdir())


@pytest.mark.parametrize("crash", CRASHES, ids=[c.name for c in CRASHES])
def test_the_inputs_that_broke_something_are_replayed(tmp_path: Path, crash: Path) -> None:
    # Found by this fuzzer (20,000 runs, -seed=12) with each fix reverted: a
    # repeated cookie holding invalid UTF-8 made werkzeug's parse_cookie()
    # raise; an issued field of Latin-1 digits made the signature check
    # raise. Both are also cases in tests/web/test_security.py.
    result = fuzz(tmp_path, str(crash))
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Executed {crash}" in result.stderr
