"""Wheels built from a copy of the checkout's sources, as a user's pip builds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_copy(into: Path) -> Path:
    """The checkout's files a wheel is built from, without any compiled build."""
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info", "build")
    into.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, into / name)
    for name in ("gate_middleware", "integrations"):
        shutil.copytree(ROOT / name, into / name, ignore=ignore)
    return into


def build_environ(**env: str) -> dict[str, str]:
    """This environment without the build switch, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "GATE_MIDDLEWARE_MYPYC"}
    return {**environ, **env}


def build_wheel(source: Path, out: Path, **env: str) -> Path:
    """``pip wheel`` of ``source`` into ``out``; pure Python unless ``env``
    sets ``GATE_MIDDLEWARE_MYPYC=1``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        env=build_environ(**env),
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    return wheel
