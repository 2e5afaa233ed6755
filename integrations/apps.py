"""Django's entry for ``INSTALLED_APPS = [..., "gate_middleware.integrations"]``."""

from __future__ import annotations

from gate_middleware.integrations.django import GateConfig

__all__ = ["GateConfig"]
