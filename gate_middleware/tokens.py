"""The rule for the admin and QA override tokens: what a header can carry.

RFC 6750's ``b64token`` (letters, digits, ``-._~+/``, then ``=`` padding),
at least 16 characters. A token with a space, a control character or a
non-ASCII letter could never be matched against what a client sends, so it
is refused when the app starts, not at the first request.
"""

from __future__ import annotations

import re
from typing import TypeGuard

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
