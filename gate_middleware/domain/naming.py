"""The naming rules, in one place: what a flag or rollout name, a rollback
reason and an admin or QA token may be, and the names the package reports
its telemetry under.

Flag and rollout names: 1 to 128 letters, digits and ``_.:-``, starting with
a letter or digit (``NAME_PATTERN``; the admin API's OpenAPI document states
the same pattern).

Reasons: one line of printable text. A reason is written to the log, kept in the history, shown on the dashboard
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
from typing import Any, TypeGuard

from gate_middleware.errors import ConfigError

#: A flag's or a rollout's name, for JSON Schema (ECMA-262) and Python alike.
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_NAME = re.compile(NAME_PATTERN.strip("^$"))

#: The OpenTelemetry schema the package's instruments and spans follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"


def valid_name(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a valid flag or rollout name (``NAME_PATTERN``)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


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


# -- tokens ------------------------------------------------------------------
# The rule for the admin and QA override tokens: what a header can carry.
#
# RFC 6750's ``b64token`` (letters, digits, ``-._~+/``, then ``=`` padding),
# at least 16 characters. A token with a space, a control character or a
# non-ASCII letter could never be matched against what a client sends, so it
# is refused when the app starts, not at the first request.

MIN_TOKEN_LENGTH = 16
TOKEN_EXPECTED = (
    "at least 16 of the characters A-Z a-z 0-9 - . _ ~ + / (then '=' padding), "
    "as RFC 6750 allows in a bearer token"
)
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def valid_token(token: object) -> TypeGuard[str]:
    """Whether ``token`` is at least 16 RFC 6750 ``b64token`` characters."""
    return (
        isinstance(token, str)
        and len(token) >= MIN_TOKEN_LENGTH
        and _B64TOKEN.fullmatch(token) is not None
    )
