"""The adapters ship in the wheel, under names no user module can shadow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.wheels import build_wheel, source_copy

ROOT = Path(__file__).resolve().parents[2]

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


@pytest.mark.sources
def test_the_wheel_installs_the_core_and_the_adapters(tmp_path: Path) -> None:
    wheel = build_wheel(source_copy(tmp_path / "src"), tmp_path / "out")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for expected in (
        "gate_middleware/__init__.py",
        "gate_middleware/py.typed",
        "gate_middleware/domain/routing.py",
        "gate_middleware/judge/statistics.py",
        "gate_middleware/stores/sqlite.py",
        "gate_middleware/gate/front.py",
        "gate_middleware/web/lifecycle.py",
        "gate_middleware/operate/admin.py",
        "gate_middleware/operate/dashboard.html",
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


def _pins(lock: Path) -> list[tuple[Requirement, str]]:
    """(name==version with its marker, version) for each line of a lock file."""
    pins = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", " ")):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins.append((requirement, spec.version))
    return pins


def _requirements(extras: list[str]) -> list[Requirement]:
    """The project's requirements with ``extras``, its own extras expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = [Requirement(text) for text in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if requirement.name == "gate-middleware":
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def _supported_pythons() -> list[str]:
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    prefix = "Programming Language :: Python :: 3."
    return [c.rsplit(" ", 1)[1] for c in classifiers if c.startswith(prefix)]


@pytest.mark.parametrize(
    ("lock", "extras"), [("dev.txt", ["test", "bench"]), ("demo.txt", ["demo"])]
)
def test_the_lock_files_pin_what_pyproject_asks_for(lock: str, extras: list[str]) -> None:
    # ./dev installs from these; after an edit to pyproject.toml, ./dev lock refreshes them.
    pins = _pins(ROOT / "requirements" / lock)
    for python in _supported_pythons():
        for platform in ("linux", "darwin", "win32"):
            env = {"python_version": python, "python_full_version": f"{python}.0"}
            env["sys_platform"] = platform
            chosen = {
                canonicalize_name(r.name): version
                for r, version in pins
                if r.marker is None or r.marker.evaluate(env)
            }
            for requirement in _requirements(extras):
                if requirement.marker is not None and not requirement.marker.evaluate(env):
                    continue
                name = canonicalize_name(requirement.name)
                assert name in chosen, f"{lock} pins no {name} for Python {python} on {platform}"
                assert requirement.specifier.contains(chosen[name], prereleases=True), (
                    f"{lock}: {name}=={chosen[name]} is outside {requirement} "
                    f"(Python {python}, {platform}): run ./dev lock"
                )


def test_the_pythons_claimed_are_the_pythons_ci_runs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    claimed = _supported_pythons()
    ci = re.search(r'^PYTHONS="([^"]*)"', (ROOT / ".ci" / "run").read_text(), re.M)
    assert ci is not None, ".ci/run names no PYTHONS"
    assert ci.group(1).split() == claimed
    oldest = claimed[0]
    assert project["project"]["requires-python"] == f">={oldest}"
    assert project["tool"]["mypy"]["python_version"] == oldest
    assert project["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")


@pytest.mark.sources
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
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert "Classifier: Typing :: Typed" in metadata


SDIST = """
import sys
from setuptools import build_meta
import os
os.chdir(sys.argv[1])
build_meta.build_sdist(sys.argv[2])
"""


@pytest.mark.parametrize(
    ("platform", "tags"),
    [
        (
            "linux",
            {"manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64"},
        ),
        ("macos", {"macosx_x86_64", "macosx_arm64"}),
        ("windows", {"win_amd64"}),
    ],
)
def test_compiled_wheels_are_built_for_each_supported_python(platform: str, tags: set[str]) -> None:
    cibuildwheel = Path(sys.executable).parent / "cibuildwheel"
    result = subprocess.run(
        [str(cibuildwheel), "--print-build-identifiers", "--platform", platform],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    built = {tuple(line.split("-", 1)) for line in result.stdout.split()}
    pythons = {"cp" + version.replace(".", "") for version in _supported_pythons()}
    assert built == {(python, tag) for python in pythons for tag in tags}


def test_the_wheel_workflow_builds_with_the_locked_cibuildwheel() -> None:
    workflow = (ROOT / ".github" / "workflows" / "wheels.yml").read_text(encoding="utf-8")
    locked = dict((r.name, v) for r, v in _pins(ROOT / "requirements" / "dev.txt"))
    assert f"pypa/cibuildwheel@v{locked['cibuildwheel']}" in workflow
    for arch in ("x86_64", "aarch64", "arm64", "AMD64"):
        assert f"arch: {arch}" in workflow
