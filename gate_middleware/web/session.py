"""Session identity: the sticky cookie that pins a visitor to a path.

The cookie (``gate_session`` by default) holds a random id minted with
``secrets.token_urlsafe(16)``. Unsigned, the value is the id itself: anyone
can pick their own id, and so their bucket (and with a few tries, the
canary). With a ``secret`` the value is ``id.issued.signature``, the
signature an HMAC-SHA256 over ``id.issued`` checked with
``hmac.compare_digest``, and a cookie older than its ``max_age`` is expired.
A cookie that is unsigned (when signing), tampered, expired, oversized or
malformed is treated as absent: a new id is minted. Nothing here raises on
request data: the ``issued`` field is 1 to 12 ASCII digits, nothing else.

``secret_fallbacks`` rotates the secret without moving anyone (as Django's
``SECRET_KEY_FALLBACKS``): a cookie signed with one of the old secrets is
accepted, keeps its session id (and so its bucket and variant), and is
signed again with the current secret on that response.

Parsing and building use werkzeug (``parse_cookie``, ``dump_cookie``), which
parse leniently and in linear time. The header is parsed as the text the
server handed over (werkzeug's sans-I/O parser): its WSGI wrapper re-decodes
the text as UTF-8 and raised on a quoted or repeated cookie holding invalid
UTF-8 or non-Latin-1 characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping

from werkzeug.http import dump_cookie, http_date
from werkzeug.sansio.http import parse_cookie

from gate_middleware.errors import ConfigError

MAX_COOKIE_VALUE = 256
MAX_PARSED_HEADER = 8192  # longer Cookie headers get the plain-value fast path only
_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
_ISSUED = re.compile(r"[0-9]{1,12}")  # not str.isdigit(), which takes '²' and '٣'
_SKEW_SECONDS = 300
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,256}")  # written as it is, without quotes
_ATTRIBUTES = "; HttpOnly; Path=/; SameSite=Lax"
_SECURE_ATTRIBUTES = "; Secure" + _ATTRIBUTES


class SessionCookie:
    """Reads, mints and signs the session cookie."""

    def __init__(
        self,
        *,
        name: str = "gate_session",
        secret: str | bytes | None = None,
        secret_fallbacks: Iterable[str | bytes] = (),
        max_age: int | None = 365 * 24 * 3600,
        secure: bool | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(name, str) or not _COOKIE_NAME.fullmatch(name):
            raise ConfigError("cookie_name", name, "1 to 64 characters valid in a cookie name")
        if secret is not None:
            secret = _secret_bytes(secret, "secret", "None or a str/bytes of at least 16 bytes")
        if isinstance(secret_fallbacks, (str, bytes)) or not isinstance(secret_fallbacks, Iterable):
            raise ConfigError(
                "secret_fallbacks", "<hidden>", "a list of the previous secrets (str or bytes)"
            )
        fallbacks = [
            _secret_bytes(old, "secret_fallbacks", "a list of str/bytes of at least 16 bytes each")
            for old in secret_fallbacks
        ]
        if fallbacks and secret is None:
            raise ConfigError(
                "secret_fallbacks",
                "<hidden>",
                "empty when no secret is set (they verify old cookies)",
            )
        if max_age is not None and (
            isinstance(max_age, bool) or not isinstance(max_age, int) or max_age <= 0
        ):
            raise ConfigError(
                "cookie_max_age", max_age, "None or a positive whole number of seconds"
            )
        if secure is not None and not isinstance(secure, bool):
            raise ConfigError("cookie_secure", secure, "True, False or None (on for https)")
        self.name = name
        self._needle = f"{name}="
        self.max_age = max_age
        self.secure = secure
        self._key = None if secret is None else _key_for(secret)
        self._fallback_keys = tuple(_key_for(old) for old in fallbacks)
        self._wall_clock = wall_clock
        self._expires: tuple[int, str] = (-1, "")  # (timestamp, its HTTP date)

    @property
    def signed(self) -> bool:
        return self._key is not None

    def read(self, cookie_header: str | None) -> str | None:
        """The session id carried by a ``Cookie`` header, or ``None``."""
        return self.read_and_check(cookie_header)[0]

    def read_and_check(self, cookie_header: str | None) -> tuple[str | None, bool]:
        """(the session id or ``None``, whether the cookie needs signing again):
        ``True`` when it was signed with one of the ``secret_fallbacks``."""
        value = self._value(cookie_header)
        if value is None:
            return None, False
        if self._key is None:
            return (value if _ID.fullmatch(value) else None), False
        session_id = self._verify(self._key, value)
        if session_id is not None:
            return session_id, False
        for old in self._fallback_keys:
            session_id = self._verify(old, value)
            if session_id is not None:
                return session_id, True
        return None, False

    def _value(self, cookie_header: str | None) -> str | None:
        if not cookie_header:
            return None
        needle = self._needle
        start = cookie_header.find(needle)
        if start < 0:
            return None
        value: str | None = None
        if (start == 0 or cookie_header[start - 1] in " ;") and cookie_header.find(
            needle, start + 1
        ) < 0:
            # The common case, without a full parse: one plain ``name=value``.
            end = cookie_header.find(";", start)
            value = cookie_header[start + len(needle) : end if end >= 0 else None].strip()
            if value[:1] == '"':
                value = None  # quoted: let the parser unquote it
        if value is None:
            if len(cookie_header) > MAX_PARSED_HEADER:
                return None  # no browser sends this; not worth a full parse
            # Typed as a Mapping, not as the MultiDict (a dict subclass) it is:
            # compiled code would read the dict's own storage, a list of values.
            parsed: Mapping[str, str] = parse_cookie(cookie_header)
            value = parsed.get(self.name)
        if not value or len(value) > MAX_COOKIE_VALUE:
            return None
        return value

    @staticmethod
    def _signature(key: bytes, payload: str) -> str:
        digest = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def _verify(self, key: bytes, value: str) -> str | None:
        parts = value.split(".")
        if len(parts) != 3:
            return None
        session_id, issued, signature = parts
        if not _ID.fullmatch(session_id) or not _ISSUED.fullmatch(issued):
            return None
        expected = self._signature(key, f"{session_id}.{issued}")
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace")):
            return None
        age = self._wall_clock() - int(issued)
        if age < -_SKEW_SECONDS or (self.max_age is not None and age > self.max_age):
            return None
        return session_id

    def mint(self) -> str:
        """A new random session id."""
        return secrets.token_urlsafe(16)

    def value_for(self, session_id: str) -> str:
        """The cookie value that carries ``session_id`` (signed when a secret is set)."""
        if self._key is None:
            return session_id
        payload = f"{session_id}.{int(self._wall_clock())}"
        return f"{payload}.{self._signature(self._key, payload)}"

    def secure_for(self, https: bool) -> bool:
        return https if self.secure is None else self.secure

    def set_cookie_header(self, value: str, https: bool) -> str:
        """The ``Set-Cookie`` header value that stores ``value`` (from ``value_for``).

        The text werkzeug's ``dump_cookie`` writes, built from parts made
        once (``Expires`` once a second): ``dump_cookie`` itself takes about
        5 µs, and every new visitor's first response pays it.
        """
        secure = self.secure_for(https)
        expires = None if self.max_age is None else int(self._wall_clock()) + self.max_age
        if not _PLAIN_VALUE.fullmatch(value):  # never for value_for's values; werkzeug quotes
            return dump_cookie(
                self.name,
                value,
                max_age=self.max_age,
                expires=expires,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )
        attributes = _SECURE_ATTRIBUTES if secure else _ATTRIBUTES
        if expires is None:
            return f"{self.name}={value}{attributes}"
        cached = self._expires
        if cached[0] != expires:
            cached = self._expires = (expires, http_date(expires))
        return f"{self.name}={value}; Expires={cached[1]}; Max-Age={self.max_age}{attributes}"


def _secret_bytes(secret: str | bytes, field: str, expected: str) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ConfigError(field, "<hidden>", expected)
    return secret


def _key_for(secret: bytes) -> bytes:
    return hashlib.sha256(b"gate_middleware.session\x00" + secret).digest()
