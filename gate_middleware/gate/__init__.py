"""The gate: ``PromotionGate``, the front every other layer talks to
(``front``), and the parts it wires: how its state changes and what follows
each change (``transitions``), when and how it judges (``evaluation``), the
rollout plan (``autopilot``), its telemetry, its webhooks and how it tells
that it is one of several processes (``workers``). It reaches stores only through their port and the registry,
never a backend; several rollouts served together (``rollouts``). The package exports what the module ``gate_middleware.gate``
exported before the layers.
"""

from gate_middleware.gate.front import (
    PromotionGate,
    PromotionGateManager,
    routing_salt,
    routing_table,
)
from gate_middleware.gate.rollouts import Rollouts

__all__ = ["PromotionGate", "PromotionGateManager", "Rollouts", "routing_salt", "routing_table"]
