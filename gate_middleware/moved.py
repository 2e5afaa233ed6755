"""The module paths before the layers (0.1), kept for one release.

The modules now live in one package per layer (``domain``, ``judge``,
``stores``, ``gate``, ``web``, ``operate``). ``import gate_middleware.config``
and ``from gate_middleware.webhooks import Webhook`` still work: a finder
hands out the moved module itself under its old name (the same module
object, so classes stay identical) with a ``DeprecationWarning`` naming the
new path. The table below is the one list of what moved; the CHANGELOG
repeats it. ``gate_middleware.gate`` and ``gate_middleware.judge`` are
packages now, which export what the old modules did.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

#: old module path -> new module path (removed in 0.3).
MOVED: dict[str, str] = {
    "gate_middleware.environment": "gate_middleware.domain.environment",
    "gate_middleware.config": "gate_middleware.domain.config",
    "gate_middleware.plan": "gate_middleware.domain.plan",
    "gate_middleware.state": "gate_middleware.domain.state",
    "gate_middleware.routing": "gate_middleware.domain.routing",
    "gate_middleware.reasons": "gate_middleware.domain.naming",
    "gate_middleware.tokens": "gate_middleware.domain.naming",
    "gate_middleware.stores.codec": "gate_middleware.domain.codec",
    "gate_middleware.sketch": "gate_middleware.judge.sketch",
    "gate_middleware.evidence": "gate_middleware.judge.evidence",
    "gate_middleware.health": "gate_middleware.judge.verdict",
    "gate_middleware.window": "gate_middleware.stores.windows",
    "gate_middleware.redis_store": "gate_middleware.stores.redis",
    "gate_middleware.autopilot": "gate_middleware.gate.autopilot",
    "gate_middleware.telemetry": "gate_middleware.gate.telemetry",
    "gate_middleware.workers": "gate_middleware.gate.workers",
    "gate_middleware.webhooks": "gate_middleware.gate.webhooks",
    "gate_middleware.lifecycle": "gate_middleware.web.lifecycle",
    "gate_middleware.session": "gate_middleware.web.session",
    "gate_middleware.context": "gate_middleware.web.context",
    "gate_middleware.metrics": "gate_middleware.web.metrics",
    "gate_middleware.tracing": "gate_middleware.web.tracing",
    "gate_middleware.asgi": "gate_middleware.web.asgi",
    "gate_middleware.wsgi": "gate_middleware.web.wsgi",
    "gate_middleware.admin": "gate_middleware.operate.admin",
    "gate_middleware.cli": "gate_middleware.operate.cli",
    "gate_middleware.openfeature": "gate_middleware.integrations.openfeature",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path is removed in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)  # keeps its own name and spec

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds an old module path of ``MOVED``; nothing else."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
