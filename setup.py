"""The optional compiled build: ``GATE_MIDDLEWARE_MYPYC=1`` compiles the
request path's modules with mypyc (all settings are in pyproject.toml).

Without the variable (an sdist or a git checkout installed with ``pip
install``), nothing is compiled and no compiler is needed: the package is
pure Python. With it, mypy (which ships mypyc) is added to the build's
requirements and each module below becomes a C extension beside its ``.py``
file, which stays in the wheel as the readable source of the same code.

    GATE_MIDDLEWARE_MYPYC=1 python -m build --wheel      # a compiled wheel
    GATE_MIDDLEWARE_MYPYC=1 python setup.py build_ext --inplace   # for ./dev test
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from setuptools import setup


# The compiled set is named in pyproject.toml's [tool.gate-middleware.compiled]
# (whole packages, and single modules): every module of it becomes a C
# extension. The ASGI and WSGI middlewares are marked (types.mypyc_attr) so
# that the adapters and users may subclass them; the gate itself (threads,
# stores, callbacks) stays interpreted.
def compiled_set(root: Path = Path()) -> list[str]:
    with open(root / "pyproject.toml", "rb") as file:
        named = tomllib.load(file)["tool"]["gate-middleware"]["compiled"]
    modules = [
        path.relative_to(root).as_posix()
        for package in named["packages"]
        for path in (root / package).glob("*.py")
        if path.name != "__init__.py"
    ]
    return sorted([*modules, *named["modules"]])


COMPILED = compiled_set()
MYPY = "mypy>=2.4"  # as in the test extra, which ./dev test compiles with


ON = ("1", "true", "yes")
OFF = ("", "0", "false", "no")


def extensions() -> dict[str, object]:
    flag = os.environ.get("GATE_MIDDLEWARE_MYPYC", "").strip().lower()
    if flag in OFF:
        return {}
    if flag not in ON:
        raise SystemExit(f"GATE_MIDDLEWARE_MYPYC={flag!r}: expected one of {ON + OFF}")
    try:
        from mypyc.build import mypycify
    except ImportError:
        if "egg_info" in sys.argv:
            # The build front end asks for the requirements (setuptools runs
            # egg_info for get_requires_for_build_*): name mypy, and pip
            # installs it in the isolated build environment before building.
            return {"setup_requires": [MYPY]}
        raise SystemExit(
            f"GATE_MIDDLEWARE_MYPYC=1 compiles with mypyc: install {MYPY!r} in the build "
            "environment (or build with isolation), or unset the variable for pure Python"
        ) from None
    return {"ext_modules": mypycify(COMPILED, opt_level="3", group_name="gate_middleware._native")}


setup(**extensions())  # type: ignore[arg-type]
