"""Who may steer the rollout: named operators, each with a token and a role.

An admin request names its operator by its bearer token alone. The roles
nest, each allowed what the one before it may do:

- ``viewer`` reads: status, history, the plan, the OpenAPI document and the
  dashboard's data;
- ``operator`` also stops things: pause, resume, abort, roll back, turn a
  flag off;
- ``admin`` also moves things forward: promote (forced or not), skip, start
  a release, set the traffic, turn a flag on, retry.

A token is given in the clear (``token``) or as the hex SHA-256 of it
(``token_sha256``), so that a file of operators holds no usable secret:
``gate-middleware hash-token`` prints the hash of a token read from stdin. A
bearer token is a random string of at least 16 characters, not a password,
so one SHA-256 is the right hash (no salt or stretching buys anything).
Every presented token is hashed and compared with every operator's hash in
constant time.

``OperatorFile`` reads operators from a TOML file and reads it again when it
changes, so tokens are added, rotated and revoked without a restart::

    [[operator]]
    name = "alice"
    role = "operator"
    token_sha256 = "..."  # the 64 hex digits gate-middleware hash-token prints
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gate_middleware.domain.naming import TOKEN_EXPECTED, valid_token
from gate_middleware.errors import ConfigError

logger = logging.getLogger("gate_middleware.admin")

Role = Literal["viewer", "operator", "admin"]
#: The roles, each allowed everything the ones before it may do.
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
#: An operator's name: it is the actor of the changes it makes, so it cannot
#: hold the spaces and brackets that mark a client's own note beside it.
NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
NAME_EXPECTED = "1 to 64 of the characters A-Z a-z 0-9 . _ @ + -"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_EMPTY_SHA256 = hashlib.sha256(b"").digest()


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may."""
    return ROLES.index(role) >= ROLES.index(needed)


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token, as ``Operator.token_sha256`` takes it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Operator:
    """One admin token: the name recorded for what it does, and its role."""

    name: str
    role: Role
    token: str | None = field(default=None, repr=False)
    token_sha256: str | None = field(default=None, repr=False)
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"operators.{self.name}" if isinstance(self.name, str) else "operators"
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise ConfigError("operators.name", self.name, NAME_EXPECTED)
        if self.role not in ROLES:
            raise ConfigError(f"{where}.role", self.role, f"one of {list(ROLES)}")
        if (self.token is None) == (self.token_sha256 is None):
            raise ConfigError(
                f"{where}.token",
                "<hidden>" if self.token is not None else None,
                "exactly one of token and token_sha256",
            )
        if self.token is not None:
            if not valid_token(self.token):
                shown = "<hidden>" if isinstance(self.token, (str, bytes)) else type(self.token)
                raise ConfigError(f"{where}.token", shown, f"a bearer token of {TOKEN_EXPECTED}")
            digest = hashlib.sha256(self.token.encode("ascii")).digest()
        else:
            if not isinstance(self.token_sha256, str) or not _HEX_SHA256.fullmatch(
                self.token_sha256.lower()
            ):
                raise ConfigError(  # never the value: it may be a token put in the wrong field
                    f"{where}.token_sha256",
                    "<hidden>",
                    "64 hex digits: the SHA-256 of the token (gate-middleware hash-token)",
                )
            digest = bytes.fromhex(self.token_sha256)
            if digest == _EMPTY_SHA256:
                raise ConfigError(
                    f"{where}.token_sha256",
                    "<hidden>",
                    "the SHA-256 of a token: this is the hash of nothing (an empty or unset "
                    "variable was hashed)",
                )
        object.__setattr__(self, "digest", digest)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> Operator:
        if not isinstance(fields, Mapping):
            raise ConfigError(
                "operators", fields, "a table of name, role and token or token_sha256"
            )
        unknown = sorted(set(fields) - {"name", "role", "token", "token_sha256"})
        if unknown:
            raise ConfigError(
                f"operators.{unknown[0]}", "<hidden>", "name, role, token or token_sha256"
            )
        return cls(
            fields.get("name"),  # type: ignore[arg-type]
            fields.get("role"),  # type: ignore[arg-type]
            fields.get("token"),
            fields.get("token_sha256"),
        )


OperatorsLike = Iterable["Operator | Mapping[str, Any]"]


def operator_set(operators: OperatorsLike) -> tuple[Operator, ...]:
    """Operators from ``Operator`` values or tables of their fields; names and
    tokens distinct (``ConfigError`` naming both holders otherwise)."""
    if isinstance(operators, (str, bytes, Mapping)):
        raise ConfigError("operators", type(operators).__name__, "a list of operators")
    found: list[Operator] = []
    for item in operators:
        found.append(item if isinstance(item, Operator) else Operator.from_mapping(item))
    for index, one in enumerate(found):
        for other in found[:index]:
            if other.name == one.name:
                raise ConfigError("operators.name", one.name, "a name no other operator has")
            if hmac.compare_digest(other.digest, one.digest):
                raise ConfigError(
                    f"operators.{one.name}.token",
                    "<hidden>",
                    f"a token of its own: {other.name!r} holds the same one",
                )
    return tuple(found)


def find_operator(operators: Iterable[Operator], presented: str) -> Operator | None:
    """The operator whose token was presented, comparing with every one in
    constant time (the time says nothing of which one matched, or how nearly)."""
    digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
    found = []
    for operator in operators:
        if hmac.compare_digest(digest, operator.digest):
            found.append(operator)
    # Two holders of one token are refused at configuration; never guess between them.
    return found[0] if len(found) == 1 else None


class OperatorFile:
    """Operators read from a TOML file (``[[operator]]`` tables) and read
    again when the file changes: rotation without a restart.

    A file that cannot be read or is wrong at start is a ``ConfigError``; a
    change that breaks it later is logged as an error and the operators read
    before stay in force (locking every operator out would be worse).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        check: Callable[[tuple[Operator, ...]], object] | None = None,
    ) -> None:
        """``check``: called with the operators read (at start and on every
        change); a ``ConfigError`` it raises refuses them."""
        self.path = os.fspath(path)
        self._check = check
        self._seen: tuple[int, int, int, int] | None = None
        self._operators = self._read()

    def _stamp(self) -> tuple[int, int, int, int]:
        stat = os.stat(self.path)  # ctime too: an edit that keeps the size and mtime still shows
        return (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)

    def _read(self) -> tuple[Operator, ...]:
        try:
            stamp = self._stamp()
            with open(self.path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(
                "operators_file", self.path, f"a readable file ({exc.strerror})"
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("operators_file", self.path, f"a TOML file ({exc})") from None
        tables = document.get("operator", [])
        if not isinstance(tables, list) or not tables:
            raise ConfigError(
                "operators_file", self.path, "one [[operator]] table or more, and nothing else"
            )
        unknown = sorted(set(document) - {"operator"})
        if unknown:
            raise ConfigError(f"operators_file.{unknown[0]}", self.path, "[[operator]] tables only")
        operators = operator_set(tables)
        if self._check is not None:
            self._check(operators)
        self._seen = stamp
        return operators

    def operators(self) -> tuple[Operator, ...]:
        """The operators now in force (the file read again if it changed)."""
        try:
            stamp = self._stamp()
        except OSError as exc:
            logger.error("operators file %s: %s; the operators read before stay", self.path, exc)
            return self._operators
        if stamp != self._seen:
            try:
                self._operators = self._read()
            except ConfigError as exc:
                logger.error(
                    "operators file changed but is refused: %s; the operators read before stay", exc
                )
                self._seen = stamp
            else:
                logger.info(
                    "operators file %s read again: %s",
                    self.path,
                    ", ".join(f"{o.name} ({o.role})" for o in self._operators),
                )
        return self._operators
