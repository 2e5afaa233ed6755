"""``manage.py gate``: the gate named by ``GATE_MIDDLEWARE``, from the shell.

::

    manage.py gate status             the stage, traffic, verdict and flags (JSON)
    manage.py gate promote staging    promote (after the gate's checks; --force skips them)
    manage.py gate rollback "reason"  roll the release back to production
    manage.py gate flags              the enabled flags
    manage.py gate flags --enable new_api / --disable new_api

The command acts on the gate object ``GATE`` names, in this process: with a
shared gate (``PromotionGate.from_url("sqlite:///...")`` or ``"redis://..."``)
that is the rollout every worker serves from. A gate that keeps its state
in memory is this command's own copy, which no server process sees: the
command shows its status but refuses to change it (use the admin API or the
``gate-middleware`` CLI to steer a running server, or share the gate).
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gate_middleware.domain.environment import Environment
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.integrations.django import gate_settings


class Command(BaseCommand):
    help = "Show or steer the gate named by settings.GATE_MIDDLEWARE."

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("status", help="the stage, traffic, verdict and flags, as JSON")
        promote = actions.add_parser("promote", help="promote to staging or production")
        promote.add_argument("target", choices=["staging", "production"])
        promote.add_argument("--force", action="store_true", help="skip the gate's checks")
        rollback = actions.add_parser("rollback", help="roll the release back to production")
        rollback.add_argument("reason")
        flags = actions.add_parser("flags", help="list, enable or disable feature flags")
        flags.add_argument("--enable", metavar="FLAG")
        flags.add_argument("--disable", metavar="FLAG")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            gate, _ = gate_settings()
        except ConfigError as exc:
            raise CommandError(str(exc)) from exc
        action = options["action"]
        changes = (
            action in ("promote", "rollback") or options.get("enable") or options.get("disable")
        )
        if changes and not gate.shared:
            raise CommandError(
                f"nothing changed: rollout {gate.name!r} keeps its state in memory, so this "
                "command would change its own copy, not the server's. Steer the running server "
                "with its admin API (gate-middleware CLI), or share the rollout: "
                "PromotionGate.from_url('sqlite:///path/gate.db', config) in GATE_MIDDLEWARE"
            )
        try:
            if action == "status":
                status = gate.status()
                health = status.health
                self.stdout.write(
                    json.dumps(
                        {
                            "rollout": status.rollout,
                            "environment": status.environment.name,
                            "traffic_percent": status.environment.traffic_percent,
                            "verdict": health.verdict,
                            "health_score": health.health_score,
                            "flags": sorted({*status.stable_flags, *status.release_flags}),
                        },
                        indent=2,
                    )
                )
            elif action == "promote":
                target = Environment.from_name(options["target"])
                reached = gate.promote(target, force=options["force"])
                self.stdout.write(f"promoted to {reached}")
            elif action == "rollback":
                event = gate.rollback(options["reason"])
                self.stdout.write(f"rolled back from {event.environment}: {event.reason}")
            else:
                if options["enable"]:
                    gate.enable_feature(options["enable"])
                if options["disable"]:
                    gate.disable_feature(options["disable"])
                state = gate.state
                for flag in sorted({*state.stable_flags, *state.release_flags}):
                    self.stdout.write(flag)
        except (PromotionError, ConfigError) as exc:
            raise CommandError(str(exc)) from exc
