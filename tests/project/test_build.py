"""The two builds: pure Python (any ``pip install`` from source) and the
compiled one (``GATE_MIDDLEWARE_MYPYC=1``, mypyc). ``./dev test`` runs the
whole suite against each and says which in ``GATE_EXPECT_BUILD``: the pure
pass in the checkout, the compiled pass against the compiled wheel (``./dev
wheel``, named in ``GATE_WHEEL``) installed in a venv of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import gate_middleware
from tests.wheels import build_environ, build_wheel, source_copy

ROOT = Path(__file__).resolve().parents[2]
BUILD = os.environ.get("GATE_EXPECT_BUILD")
WHEEL = os.environ.get("GATE_WHEEL")


def compiled_modules() -> list[str]:
    """The module names setup.py compiles: pyproject.toml's
    [tool.gate-middleware.compiled] packages (each module but __init__) and modules."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        named = tomllib.load(file)["tool"]["gate-middleware"]["compiled"]
    installed = Path(gate_middleware.__file__ or "").parent.parent  # the sources or the wheel's
    paths = [
        path.relative_to(installed).as_posix()
        for package in named["packages"]
        for path in (installed / package).glob("*.py")
        if path.name != "__init__.py"
    ]
    return sorted(p.removesuffix(".py").replace("/", ".") for p in [*paths, *named["modules"]])


def is_extension(module_name: str) -> bool:
    module = __import__(module_name, fromlist=["_"])
    return (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


@pytest.mark.skipif(BUILD is None, reason="GATE_EXPECT_BUILD is set by ./dev test")
def test_the_suite_runs_against_the_build_it_names() -> None:
    names = compiled_modules()
    assert names, "setup.py compiles nothing"
    if BUILD == "compiled":
        assert gate_middleware.COMPILED
        assert [name for name in names if not is_extension(name)] == []
        # The installed wheel, not a build beside the checkout's sources.
        assert not Path(gate_middleware.__file__ or "").is_relative_to(ROOT)
    else:
        assert BUILD == "pure"
        assert not gate_middleware.COMPILED
        assert [name for name in names if is_extension(name)] == []


@pytest.mark.sources
def test_a_source_install_needs_no_compiler(tmp_path: Path) -> None:
    # CC pointing at a program that always fails: any compile step would fail.
    wheel = build_wheel(source_copy(tmp_path / "src"), tmp_path / "out", CC="false")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gate_middleware/domain/routing.py" in names
    assert "gate_middleware/integrations/starlette.py" in names
    assert not [name for name in names if name.endswith((".so", ".pyd", ".c"))]


# Run in a process where mypy cannot be imported, as in a fresh build environment.
WITHOUT_MYPY = "import sys; sys.modules.update(dict.fromkeys(['mypy', 'mypyc', 'mypyc.build'])); "


def without_mypy(source: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MYPY + code],
        cwd=source,
        env=build_environ(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.sources
def test_a_compiled_build_asks_for_mypy_and_fails_clearly_without_it(tmp_path: Path) -> None:
    source = source_copy(tmp_path / "src")
    # An isolated build (pip, python -m build) first asks what it needs.
    query = "from setuptools import build_meta; print(build_meta.get_requires_for_build_wheel())"
    asked = without_mypy(source, query, GATE_MIDDLEWARE_MYPYC="1")
    assert asked.returncode == 0, asked.stderr
    assert "'mypy>=" in asked.stdout
    plain = without_mypy(source, query)
    assert plain.returncode == 0 and "mypy" not in plain.stdout
    # Building without mypy (no isolation) stops instead of going pure silently.
    build = "sys.argv = ['setup.py', 'build_ext', '--inplace']; exec(open('setup.py').read())"
    failed = without_mypy(source, build, GATE_MIDDLEWARE_MYPYC="1")
    assert failed.returncode != 0 and "install 'mypy>=" in failed.stderr
    assert not list((source / "gate_middleware").glob("*.so"))
    refused = without_mypy(source, build, GATE_MIDDLEWARE_MYPYC="maybe")
    assert refused.returncode != 0 and "GATE_MIDDLEWARE_MYPYC='maybe'" in refused.stderr


@pytest.mark.skipif(WHEEL is None, reason="GATE_WHEEL is set by ./dev test's compiled pass")
def test_the_compiled_wheel_runs_without_mypy_and_agrees_with_its_own_sources(
    tmp_path: Path,
) -> None:
    wheel = Path(WHEEL or "")
    assert not wheel.name.endswith("-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in compiled_modules():
        path = module.replace(".", "/")
        assert any(name.startswith(path + ".") and name != path + ".py" for name in names)
        assert path + ".py" in names  # the readable source ships beside it
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The same wheel's Python sources alone: the pure build of the same code.
    pure = tmp_path / "pure"
    shutil.copytree(
        site, pure, ignore=shutil.ignore_patterns(*(f"*{s}" for s in EXTENSION_SUFFIXES))
    )
    # A user's environment: the wheel and its runtime dependencies, no mypy.
    script = (
        "import sys\n"
        "for name in ('mypy', 'mypyc', 'mypy_extensions', 'librt'):\n"
        "    sys.modules[name] = None\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import gate_middleware as g\n"
        "assert g.__file__.startswith(sys.argv[1]), g.__file__\n"
        "print(g.COMPILED)\n"
        "gate = g.PromotionGate(g.PromotionConfig(environment=g.Environment.canary(50.0)))\n"
        "for i in range(2000):\n"
        "    d = gate.route_request(f'session-{i}')\n"
        "    gate.record_request_outcome(f'session-{i}', success=i % 50 != 0,\n"
        "                                duration=0.01 + (i % 7) / 1000, decision=d)\n"
        "h = gate.monitor_canary_health()\n"
        "print(h.verdict, h.canary_requests, h.production_requests, h.health_score)\n"
    )

    def run(where: Path) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script, str(where)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    compiled, interpreted = run(site), run(pure)
    assert compiled[0] == "True" and interpreted[0] == "False"
    assert compiled[1:] == interpreted[1:]
    verdict, canary, production, _ = compiled[1:]
    assert int(canary) + int(production) == 2000 and int(canary) > 800
