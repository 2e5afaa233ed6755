"""The code style and type checks are part of the test suite."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sources

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    result = run(ruff, "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(ruff, "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean_on_the_package() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layers_keep_their_import_rules() -> None:
    """pyproject.toml's [tool.importlinter] contracts, checked by lint-imports."""
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "import-linter is in the test extra"
    result = run(lint_imports, "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


#: What an adapter may import of the package: the request path, the
#: operator's tools, the gate's front, the domain, the base modules and the
#: other adapters (outside lint-imports' tree: integrations/ installs as
#: gate_middleware.integrations).
ADAPTER_MAY_IMPORT = (
    "gate_middleware.web",
    "gate_middleware.operate",
    "gate_middleware.gate",  # the package: the front
    "gate_middleware.gate.front",
    "gate_middleware.domain",
    "gate_middleware.errors",
    "gate_middleware.types",
    "gate_middleware.integrations",
)


def adapter_may_import(name: str) -> bool:
    if name == "gate_middleware" or name in ADAPTER_MAY_IMPORT:
        return True  # the root's public names, or one of the above
    if name.startswith("gate_middleware.gate."):
        return False  # the gate's insides
    return any(name.startswith(prefix + ".") for prefix in ADAPTER_MAY_IMPORT)


def test_the_adapters_import_only_the_front_the_web_and_the_domain() -> None:
    found = []
    for path in sorted((ROOT / "integrations").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            found += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.startswith("gate_middleware") and not adapter_may_import(name)
            ]
    assert found == []
