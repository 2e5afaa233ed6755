"""The rule for a rollback reason: one line of printable text.

A reason is written to the log, kept in the history, shown on the dashboard
and printed by the command line. A line break could forge a log line, an
escape or BEL byte could drive the operator's terminal, a bidirectional
override could make it read as something else, and a lone surrogate cannot
be encoded. So a reason is refused when it holds any of: the C0 and C1
controls and DEL, the Arabic letter mark, zero-width characters and
bidirectional marks, embeddings and overrides, the line and paragraph
separators, word joiners, invisible operators and isolates, the byte-order
mark, or a surrogate. The admin API's OpenAPI document states the same rule
as a pattern (``REASON_PATTERN``).
"""

from __future__ import annotations

import re
from typing import Any

from gate_middleware.errors import ConfigError

MAX_REASON_LENGTH = 1000
#: The refused characters, as a regular-expression class body (ECMA-262 and Python).
UNPRINTABLE = r"\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
#: A valid reason for JSON Schema: printable, and not only white space.
REASON_PATTERN = rf"^[^{UNPRINTABLE}]*[^\s{UNPRINTABLE}][^{UNPRINTABLE}]*$"
_REFUSED = re.compile(rf"[{UNPRINTABLE}\ud800-\udfff]")


def validate_reason(reason: Any) -> str:
    """Return ``reason`` if it is 1 to 1,000 printable characters on one line,
    or raise ``ConfigError``."""
    if (
        not isinstance(reason, str)
        or not reason.strip()
        or len(reason) > MAX_REASON_LENGTH
        or _REFUSED.search(reason) is not None
    ):
        raise ConfigError(
            "reason",
            reason,
            "a non-empty text of at most 1000 characters, on one line, without control characters",
        )
    return reason
