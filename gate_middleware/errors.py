"""The errors that gate-middleware raises.

``ConfigError`` is a ``ValueError``: a configuration value or an argument is
outside what is valid. ``PromotionError`` means the gate refused a state
change (an invalid promotion path, or a promotion that its checks do not
allow); ``OutcomeUnknownError`` and ``StorePermissionError`` are the two
kinds a shared store adds. All leave the gate exactly as it was.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value or argument is not valid.

    ``field`` names what was wrong, ``value`` is what was given and
    ``expected`` says what would be valid.
    """

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field} must be {expected}, got {value!r}")


class PromotionError(Exception):
    """The gate refused a promotion, rollback or traffic change; nothing changed."""


class OutcomeUnknownError(PromotionError):
    """A shared store stopped answering after a change was sent: it may or may
    not have been applied. If it was, the gate reports it (callbacks and
    metrics) once it sees the change in the store."""


class StorePermissionError(PromotionError):
    """A shared store refused the change to this client's user (a Redis ACL
    without a command the store needs): nothing changed. The message names
    the command and the rule that grants it (``ACL SETUSER <user> +evalsha``)."""
