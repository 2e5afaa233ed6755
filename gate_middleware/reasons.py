"""The rule for a rollback reason: one line of printable text.

A reason is written to the log, kept in the history, shown on the dashboard
and printed by the command line. A line break could forge a log line, an
escape or BEL byte could drive the operator's terminal, a bidirectional
override could make it read as something else, and a lone surrogate cannot
be encoded; so a reason with any control, format, separator or surrogate
character (Unicode categories Cc, Cf, Zl, Zp, Cs) is refused.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from gate_middleware.errors import ConfigError

MAX_REASON_LENGTH = 1000
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def validate_reason(reason: Any) -> str:
    """Return ``reason`` if it is 1 to 1,000 printable characters on one line,
    or raise ``ConfigError``."""
    if (
        not isinstance(reason, str)
        or not reason.strip()
        or len(reason) > MAX_REASON_LENGTH
        or any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in reason)
    ):
        raise ConfigError(
            "reason",
            reason,
            "a non-empty text of at most 1000 characters, on one line, without control characters",
        )
    return reason
