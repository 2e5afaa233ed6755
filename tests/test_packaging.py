"""The adapters ship in the wheel, under names no user module can shadow."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.wheels import build_wheel, source_copy

ROOT = Path(__file__).parent.parent

IMPORT_ALL = """
import sys
import gate_middleware
import gate_middleware.integrations.starlette as s
import gate_middleware.integrations.fastapi as fa
import gate_middleware.integrations.flask as f
import gate_middleware.integrations.django as d
for module in (gate_middleware, s, fa, f, d):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
print("ok", s.GateMiddleware.__name__, f.GateExtension.__name__, d.GateMiddleware.__name__)
"""


def test_the_wheel_installs_the_core_and_the_adapters(tmp_path: Path) -> None:
    wheel = build_wheel(source_copy(tmp_path / "src"), tmp_path / "out")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for expected in (
        "gate_middleware/__init__.py",
        "gate_middleware/py.typed",
        "gate_middleware/integrations/__init__.py",
        "gate_middleware/integrations/starlette.py",
        "gate_middleware/integrations/fastapi.py",
        "gate_middleware/integrations/flask.py",
        "gate_middleware/integrations/django.py",
    ):
        assert expected in names
    top_level = {name.split("/")[0] for name in names if not name.startswith("gate_middleware-")}
    assert top_level == {"gate_middleware"}  # no bare "integrations", "django" or "flask"
    site = str(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, site],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": site},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "GateMiddleware", "GateExtension", "GateMiddleware"]


def test_importing_the_core_imports_no_framework() -> None:
    code = (
        "import sys, gate_middleware, gate_middleware.integrations\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'django', 'flask', 'starlette', 'fastapi', 'asgiref'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_a_missing_framework_names_the_extra(tmp_path: Path) -> None:
    # A directory that shadows flask with a module that cannot import.
    (tmp_path / "flask.py").write_text("raise ImportError('no flask here')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import gate_middleware.integrations.flask"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert 'pip install "gate-middleware[flask]"' in result.stderr


def test_both_readme_commands_resolve_on_python_3_10(tmp_path: Path) -> None:
    # ./dev installs ".[test,bench]": every requirement needs a release that
    # supports the oldest Python the README promises.
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "-q",
            "--python-version",
            "3.10",
            "--only-binary=:all:",
            "--ignore-installed",
            "--target",
            str(tmp_path / "target"),
            "--report",
            str(report),
            f"{ROOT}[test,bench]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"httpx", "starlette", "django", "flask", "openfeature-sdk"} <= names
    assert "httpx2" not in names


def test_the_sdist_ships_the_license_and_changelog_and_no_tests(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", SDIST, str(ROOT), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [sdist] = tmp_path.glob("gate_middleware-*.tar.gz")
    import tarfile

    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        pkg_info = archive.extractfile(f"{sdist.name[: -len('.tar.gz')]}/PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    assert {"LICENSE", "CHANGELOG.md", "README.md", "gate_middleware/py.typed"} <= names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata
    assert "Classifier: Programming Language :: Python :: 3.10" in metadata
    assert "Classifier: Typing :: Typed" in metadata


SDIST = """
import sys
from setuptools import build_meta
import os
os.chdir(sys.argv[1])
build_meta.build_sdist(sys.argv[2])
"""
