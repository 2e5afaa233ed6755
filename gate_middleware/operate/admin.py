"""The admin API: watch and steer a rollout over HTTP, from inside the app.

One implementation (``AdminAPI``) behind an ASGI app (``AdminASGIApp``) and
a WSGI app (``AdminWSGIApp``), mounted at a path of the user's choice.
Every JSON endpoint requires ``Authorization: Bearer <token>`` (the scheme
in any case); without a configured token of at least 16 RFC 6750 characters
the admin app refuses to start. Bad requests get a 4xx with a JSON error
(``{"error": ..., "field": ...}``) and change nothing: a body that is not
``application/json`` (415), not one JSON object, with a duplicate key, an
unknown field, or nested deeper than the parser goes (400), or over 64 KB
(413). A chunked body is read to its end (a WSGI server must set
``wsgi.input_terminated``, as gunicorn and werkzeug's do; otherwise 411). A
promotion, traffic change or rollback that the gate refuses answers 409
with the gate's reason. Every answer is ``Cache-Control: no-store``; the
dashboard page comes with a Content-Security-Policy that pins its inline
script and style by hash, ``X-Frame-Options: DENY`` and
``Referrer-Policy: no-referrer``.

Each token belongs to a named operator with a role (``viewer``,
``operator`` or ``admin``; see ``gate_middleware.operate.operators``): a
token the API does not know gets 401, a known one without the route's role
403 naming the role needed. ``token=`` alone is one operator, ``token_name``
("admin" by default), with the admin role. Each change is recorded with its
actor: the operator's name, never a value the client sends. What a client
says of itself in the ``X-Gate-Actor`` header (UTF-8; the CLI sends
``cli:<login>``) is kept beside it as its own word, e.g.
``alice (client note: cli:alice)``.

``POST /alertmanager`` takes Prometheus Alertmanager's webhook notification
as it comes (see ``gate_middleware.operate.alertmanager``): a firing alert
whose ``gate_rollout`` label names this rollout rolls the release back, with
the alert's name as the reason; anything else answers 200 saying why
nothing was done, since Alertmanager sends again what it gets no 2xx for.

The API steers one ``PromotionGate``, or each rollout of a ``Rollouts``
set: every route of one rollout takes ``?rollout=NAME`` (with one gate, its
own name or nothing; under a set, required when it holds several: 400 with
``"field": "rollout"`` listing the names, and 404 for a name that is not
one). Under a set without ``?rollout=``, ``POST /alertmanager`` rolls back
each rollout a firing alert's label names. ``GET /rollouts`` lists each
rollout with its ``/status`` and, for one added while the app ran, who
added it and when (``created``), and the rollouts of the store's catalog
this process does not serve, with why (``refused``);
``POST /rollouts/{name}/retire`` and ``/reinstate`` stop serving a rollout
and serve it again, in every process that shares its store
(``PromotionGate.retire``; 409 for one gate), events in the rollout's
history with the operator. ``POST /rollouts`` adds a rollout while the app
runs (``Rollouts.create``): its body is a scenario's table as JSON (the
keys of a scenario file's ``[scenarios.NAME]``, ``name`` required, no
``store``), and it answers 201 with the new rollout's status. A set opened
on a store (``Rollouts.from_url``) serves it in every process that shares
the store, after restarts too; a set without one serves it in this process
only, and the answer says so (``"shared": false`` and a ``warning``). An
invalid config, a name already taken, or a flag or salt another rollout
holds is a 400 naming the field; one gate (no set) is a 409, as is a store
that cannot be written.

Each route is declared once, in ``ROUTES``: the dispatch, the OpenAPI
document (``GET /openapi.json``), the command line's client and the list
below are all read from it. A body's fields are listed, ``?`` marking the
optional ones; a field the route does not list is refused (400)::

"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import re
import textwrap
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal, NamedTuple

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from gate_middleware.domain.config import PromotionConfig, validate_flag_name
from gate_middleware.domain.environment import PRODUCTION, Environment, validate_traffic_percent
from gate_middleware.domain.metrics import DIRECTIONS, KINDS, MAX_METRICS
from gate_middleware.domain.naming import (
    MAX_REASON_LENGTH,
    NAME_PATTERN,
    REASON_PATTERN,
    TOKEN_EXPECTED,
    valid_token,
)
from gate_middleware.domain.plan import ON_DEADLINE, PlanProgress
from gate_middleware.domain.state import MAX_HISTORY, GateEvent, PromotionEvent
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.gate.rollouts import CatalogEntry
from gate_middleware.operate import alertmanager
from gate_middleware.operate.operators import (
    NAME,
    NAME_EXPECTED,
    Operator,
    OperatorFile,
    OperatorsLike,
    Role,
    allows,
    find_operator,
    operator_set,
)
from gate_middleware.types import Environ, Receive, Scope, Send, StartResponse

MAX_BODY_BYTES = 64 * 1024
FLAG_NAME_PATTERN = NAME_PATTERN  # the one rule (gate_middleware.domain.naming)
#: How every operator-facing surface numbers a plan's steps.
STEP_NUMBERS = "steps are numbered from 1: the plan's first canary step is 1, production the last"
_DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() takes '²'
MAX_NOTE = 64  # characters of a client's own note kept beside its operator's name
_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
}


@dataclass
class AdminResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def all_headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *self.headers,
        ]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def _json(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> AdminResponse:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return AdminResponse(status, body, headers=list(headers))


def _error(status: int, message: str, field: str | None = None) -> AdminResponse:
    payload: dict[str, Any] = {"error": message}
    if field is not None:
        payload["field"] = field
    headers = [("WWW-Authenticate", 'Bearer realm="gate-middleware"')] if status == 401 else []
    return _json(status, payload, headers)


def _forbidden(what: str, role: str, name: str, held: str) -> AdminResponse:
    """403: the operator ``name`` (a ``held``) lacks the role ``what`` needs."""
    return _json(
        403, {"error": f"{what} needs the {role} role; {name} is a {held}", "role_needed": role}
    )


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _BadRequest(400, f"the field {key!r} appears twice in the body", key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _BadRequest(400, f"the body is not valid JSON: {name} is not a JSON number")


def _double_sized(text: str) -> int:
    """A JSON integer of the body, refused (400) when no float holds it:
    every number a field takes is checked as a float, and ``float()`` of a
    larger one raises ``OverflowError``, which no check catches."""
    number = int(text)  # ValueError past Python's digit limit: not valid JSON
    try:
        float(number)
    except OverflowError:
        raise _BadRequest(
            400, f"the body holds a number too large for any field ({len(text)} digits)"
        ) from None
    return number


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


# -- the route table's shape ------------------------------------------------------

#: A handler's ``args``: the path's and query's parameters, the caller
#: (``actor``, ``operator``, ``role``) and, for a route of one rollout, the
#: chosen rollout's gate (``gate``).
Handler = Callable[["AdminAPI", dict[str, Any], dict[str, Any]], AdminResponse]

#: How a route picks its rollout: "one" (``?rollout=``, required when the
#: set holds several), "optional" (``?rollout=`` if given: the OpenAPI
#: document, and the Alertmanager receiver, which the alerts' label steers
#: without it), "set" (the route concerns the set: no ``?rollout=``).
RolloutChoice = Literal["one", "optional", "set"]


class Answer(NamedTuple):
    """A route's answer when it succeeds: what it is, its schema, and its
    status (201 for a route that creates something)."""

    description: str
    schema: dict[str, Any]
    media_type: str = "application/json"
    status: int = 200


@dataclass(frozen=True)
class Route:
    """One admin endpoint, declared once in ``ROUTES``.

    ``path`` is a pattern: ``{name}`` stands for one path segment, handed to
    the handler as ``args["name"]``. ``name`` is the OpenAPI operationId, by
    which the CLI calls the route. ``body`` is the JSON Schema of a POST's
    body: its properties are the only fields the route takes, and it is
    required when it requires a field. A POST changes state (refused while
    the gate decides alone); a GET only reads. ``public``: served without
    the token (the dashboard page alone). ``not_found``: the route answers
    404 for a path that names nothing (a flag that is not on). ``role``: the
    least role an operator needs to call it. ``rollout``: how it picks the
    rollout it acts on (see ``RolloutChoice``); every route of one rollout
    takes ``?rollout=NAME`` beside its own ``query``.
    """

    method: Literal["GET", "POST"]
    path: str
    name: str
    handler: Handler
    summary: str
    answer: Answer
    body: dict[str, Any] | None = None
    links: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    not_found: bool = False
    public: bool = False
    role: Role = "viewer"
    query: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    rollout: RolloutChoice = "one"
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.public and self.rollout != "set":
            object.__setattr__(self, "query", {**self.query, "rollout": _ROLLOUT_QUERY})
        parts = re.split(r"\{(\w+)\}", self.path)  # literal, name, literal, ...
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def changes_state(self) -> bool:
        """A GET only reads; a POST may change the rollout."""
        return self.method == "POST"

    @property
    def fields(self) -> list[str]:
        """The body's fields, in the schema's order."""
        return list((self.body or {}).get("properties", {}))

    @property
    def required(self) -> list[str]:
        return list((self.body or {}).get("required", []))

    def url(self, **parameters: str) -> str:
        """The path with its placeholders filled in (each one quoted as one segment)."""
        return self.path.format(
            **{key: urllib.parse.quote(value, safe="") for key, value in parameters.items()}
        )


class AdminAPI:
    """Routes admin requests to the gate, or to the rollouts of a ``Rollouts``
    set by ``?rollout=NAME``; knows no protocol."""

    def __init__(
        self,
        gate: PromotionGate | Rollouts,
        *,
        token: str | None = None,
        token_name: str = "admin",
        operators: OperatorsLike = (),
        operators_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``token``: one admin operator named ``token_name``; ``operators``:
        more, as ``Operator`` values or tables of their fields;
        ``operators_file``: a TOML file of them, read again when it changes.
        At least one is required: the admin API refuses to start without."""
        if not isinstance(gate, PromotionGate | Rollouts):
            raise ConfigError("gate", gate, "a PromotionGate or a Rollouts set")
        if not isinstance(token_name, str) or not NAME.fullmatch(token_name):
            raise ConfigError("token_name", token_name, NAME_EXPECTED)
        given = list(operator_set(operators))
        if token is not None:
            if not isinstance(token, str):
                raise ConfigError("token", token, f"a bearer token of {TOKEN_EXPECTED}")
            try:
                given.insert(0, Operator(token_name, "admin", token=token))
            except ConfigError as exc:
                raise ConfigError(
                    "token", "<hidden>", f"a bearer token of {TOKEN_EXPECTED}"
                ) from exc
        fixed = operator_set(given)

        def beside_the_fixed(read: tuple[Operator, ...]) -> object:
            return operator_set([*fixed, *read])  # no name or token twice, at start or later

        self._file = (
            None if operators_file is None else OperatorFile(operators_file, beside_the_fixed)
        )
        if self._file is None and not fixed:
            raise ConfigError(
                "token",
                None,
                f"a bearer token of {TOKEN_EXPECTED}, or operators: the admin API refuses "
                "to start without one",
            )
        self.gate = gate
        self.token_name = token_name
        self._fixed = fixed

    def operators(self) -> tuple[Operator, ...]:
        """Every operator now in force."""
        if self._file is None:
            return self._fixed
        return (*self._fixed, *self._file.operators())

    def handle(
        self,
        method: str,
        path: str,
        authorization: str | None,
        body: bytes | None,
        content_type: str | None = None,
        actor: str | None = None,
        query: str | None = None,
    ) -> AdminResponse:
        """Answer one request; never raises for anything the client sent.

        A POST with a body must declare ``Content-Type: application/json``.
        ``actor``: the ``X-Gate-Actor`` header (kept beside the operator's
        name); ``query``: the query string (only the route's parameters).
        """
        path = "/" + path.strip("/") if path.strip("/") else "/"
        found = find_route(method, path)
        operator = self._operator(authorization)
        if (found is None or not found[0].public) and operator is None:
            return _error(401, "a valid 'Authorization: Bearer <token>' header is required")
        try:
            if found is None:
                raise _not_routed(method, path)
            route, path_args = found
            args: dict[str, Any] = dict(path_args)
            if operator is not None and not allows(operator.role, route.role):
                return _forbidden(route.name, route.role, operator.name, operator.role)
            args.update(self._query(route, query))
            payload = self._payload(method, body, content_type)
            self._only(payload, *route.fields)
            _check_values(payload, args)  # wrong whatever the rollout: 400 before a 404
            chosen = self._chosen(route, args)
            if chosen is not None:
                args["gate"] = chosen
            if route.changes_state:
                for gate in (chosen,) if chosen is not None else self._touched(route, args):
                    alone = gate.decides_alone
                    if alone is not None:
                        # A 200 would speak for one worker of several: refuse instead.
                        return _error(409, f"nothing changed: {alone}")
            if operator is not None:
                args["actor"] = self._actor_of(operator, actor)
                args["operator"] = operator.name
                args["role"] = operator.role
            return route.handler(self, payload, args)
        except _BadRequest as exc:
            return _error(exc.status, str(exc), exc.field)
        except ConfigError as exc:
            return _error(400, str(exc), exc.field)
        except PromotionError as exc:
            return _error(409, str(exc))

    def _chosen(self, route: Route, args: dict[str, Any]) -> PromotionGate | None:
        """The gate of the rollout the request acts on: ``?rollout=NAME``,
        or the only one when there is one. ``None`` for a route of the set,
        and for an "optional" route under a set without ``?rollout=`` (the
        Alertmanager receiver: the alerts' label picks). 400 when a set of several needs the name,
        404 for a name that is not one of the rollouts."""
        name = args.pop("rollout", None)
        if route.rollout == "set" or route.public:  # the page: no query, no rollout
            return None
        if isinstance(self.gate, PromotionGate):
            if name is None or name == self.gate.name:
                return self.gate
            raise _BadRequest(
                404,
                f"no rollout {name!r}; this API steers the rollout {self.gate.name!r}",
                "rollout",
            )
        if name is not None:
            gate = self.gate.get(name)
            if gate is None:
                raise _BadRequest(
                    404, f"no rollout {name!r}; the rollouts: {self._names()}", "rollout"
                )
            return gate
        if route.rollout == "optional":
            return None
        gates = self.gate.gates
        if len(gates) == 1:
            return gates[0]
        if not gates:
            raise _BadRequest(404, f"the set holds no rollout ({self._names()})", "rollout")
        raise _BadRequest(
            400,
            f"the query parameter 'rollout' is required: this API steers {len(gates)} "
            f"rollouts: {self._names()}",
            "rollout",
        )

    def _names(self) -> str:
        """The rollouts, named for an error."""
        if isinstance(self.gate, PromotionGate):
            return repr(self.gate.name)
        return ", ".join(repr(name) for name in self.gate.names) or "none"

    def _touched(self, route: Route, args: dict[str, Any]) -> tuple[PromotionGate, ...]:
        """The gates a change of the set or of the alerts' rollouts may change."""
        if isinstance(self.gate, PromotionGate):
            return (self.gate,)
        name = args.get("name")
        if route.rollout == "set" and isinstance(name, str):
            found = self.gate.get(name)
            return () if found is None else (found,)
        return self.gate.gates

    def _operator(self, authorization: str | None) -> Operator | None:
        # RFC 7235: the scheme is case-insensitive, and one or more spaces follow it.
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        presented = credentials.strip(" \t")
        if not valid_token(presented):  # an empty or short one matches no operator, whatever hash
            return None
        return find_operator(self.operators(), presented)

    @staticmethod
    def _actor_of(operator: Operator | str, header: str | None) -> str:
        """The operator's name, and beside it what the client says of itself
        (printable characters, cut to 64), marked as the client's note."""
        name = operator if isinstance(operator, str) else operator.name
        note = "".join(c for c in header or "" if c.isprintable())[:MAX_NOTE].strip()
        return f"{name} (client note: {note})" if note else name

    @staticmethod
    def _payload(method: str, body: bytes | None, content_type: str | None) -> dict[str, Any]:
        if method != "POST":
            return {}
        if content_type is not None and content_type.strip() and not _is_json(content_type):
            raise _BadRequest(415, f"the body must be application/json, not {content_type!r}")
        if not body:
            return {}
        if not _is_json(content_type):
            raise _BadRequest(415, "the body must be sent as Content-Type: application/json")
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequest(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(
                body,
                object_pairs_hook=_object_without_duplicates,
                parse_constant=_no_constant,
                parse_int=_double_sized,
            )
        except RecursionError as exc:
            raise _BadRequest(400, "the body is not valid JSON: nested too deeply") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, f"the body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise _BadRequest(400, "the body must be a JSON object")
        return payload

    @staticmethod
    def _query(route: Route, query: str | None) -> dict[str, str]:
        """The query's parameters, each one the route takes and given once (a
        public page ignores its query: a link may carry one)."""
        if not query or route.public:
            return {}
        try:
            pairs = urllib.parse.parse_qsl(
                query, keep_blank_values=True, strict_parsing=True, max_num_fields=20
            )
        except ValueError as exc:
            raise _BadRequest(400, f"the query string is malformed: {exc}") from None
        found: dict[str, str] = {}
        for name, value in pairs:
            if name not in route.query:
                raise _BadRequest(
                    400,
                    f"unknown query parameter {name!r}; {route.path} takes {list(route.query)}",
                    name,
                )
            if name in found:
                raise _BadRequest(400, f"the query parameter {name!r} is given twice", name)
            found[name] = value
        return found

    @staticmethod
    def _only(payload: dict[str, Any], *allowed: str) -> None:
        unknown = sorted(set(payload) - set(allowed))
        if unknown:
            raise _BadRequest(
                400,
                f"unknown field {unknown[0]!r}; this endpoint takes {list(allowed)}",
                unknown[0],
            )

    @staticmethod
    def _required(payload: dict[str, Any], name: str) -> Any:
        if name not in payload:
            raise _BadRequest(400, f"the field {name!r} is required", name)
        return payload[name]

    # -- endpoints: each is named in ROUTES, which has already refused unknown fields --

    def _dashboard(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        return AdminResponse(
            200, dashboard_html(), "text/html; charset=utf-8", list(DASHBOARD_HEADERS)
        )

    def _status(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        return _json(200, self._status_of(args["gate"], args))

    @staticmethod
    def _status_of(gate: PromotionGate, args: dict[str, Any]) -> dict[str, Any]:
        """What ``GET /status`` answers for ``gate``'s rollout."""
        status = gate.status().to_dict()
        status["series"] = [sample.to_dict() for sample in gate.get_health_series()]
        role = args["role"]
        status["operator"] = {
            "name": args["operator"],
            "role": role,
            "may": [r.name for r in ROUTES if not r.public and allows(role, r.role)],
        }
        return status

    def _gates(self) -> tuple[PromotionGate, ...]:
        """The rollouts' gates: the one, or the set's in its order."""
        return (self.gate,) if isinstance(self.gate, PromotionGate) else self.gate.gates

    def _rollouts(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gates = self._gates()
        created = {} if isinstance(self.gate, PromotionGate) else self.gate.created
        refused = {} if isinstance(self.gate, PromotionGate) else self.gate.refused
        retired = [gate.name for gate in gates if gate.retired]
        rollouts = [
            {
                "name": gate.name,
                "status": self._status_of(gate, args),
                "created": _created(created.get(gate.name)),
            }
            for gate in gates
        ]
        return _json(200, {"rollouts": rollouts, "retired": retired, "refused": refused})

    def _the_set(self, what: str) -> Rollouts:
        """The set the API steers; for one gate, a ``PromotionError`` (409)
        saying it cannot ``what``."""
        if isinstance(self.gate, PromotionGate):
            raise PromotionError(
                f"cannot {what}: creating, retiring and reinstating rollouts are for a "
                f"Rollouts set (this API steers one PromotionGate, the rollout {self.gate.name!r})"
            )
        return self.gate

    def _named_in_set(self, what: str, args: dict[str, Any]) -> tuple[Rollouts, str]:
        name = args["name"]
        rollouts = self._the_set(f"{what} the rollout {name!r}")
        if name not in rollouts:
            raise _BadRequest(404, f"no rollout {name!r}; the rollouts: {self._names()}", "name")
        return rollouts, name

    def _retire(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        rollouts, name = self._named_in_set("retire", args)
        event = rollouts.retire(name, actor=args["actor"])
        return self._set_answer(rollouts, name, event)

    def _reinstate(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        rollouts, name = self._named_in_set("reinstate", args)
        event = rollouts.reinstate(name, actor=args["actor"])
        return self._set_answer(rollouts, name, event)

    def _create(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        """Add the rollout the body describes to the set (``Rollouts.create``),
        the operator as its creator: 201 with its status, and whether the
        other processes serve it too."""
        config = _scenario_config(payload)
        rollouts = self._the_set(f"create the rollout {config.name!r}")
        gate = rollouts.create(config, actor=args["actor"])
        shared = rollouts.catalog_shared
        answer: dict[str, Any] = {
            "rollout": gate.name,
            "status": self._status_of(gate, args),
            "rollouts": list(rollouts.names),
            "retired": [other.name for other in rollouts if other.retired],
            "created": _created(rollouts.created.get(gate.name)),
            "shared": shared,
        }
        if not shared:
            answer["warning"] = (
                f"rollout {gate.name!r} serves this process only: its set keeps no store, so "
                "the app's other worker processes do not serve it, and it is gone after a "
                "restart (open the set with Rollouts.from_url to share it)"
            )
        return _json(201, answer)

    @staticmethod
    def _set_answer(rollouts: Rollouts, name: str, event: PromotionEvent) -> AdminResponse:
        return _json(
            200,
            {
                "rollout": name,
                "rollouts": list(rollouts.names),
                "retired": [gate.name for gate in rollouts if gate.retired],
                "event": event.to_dict(),
            },
        )

    def _history(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        events = gate.get_history()
        start: tuple[datetime, int] | None = None
        if "since" in args:
            start = _since(args["since"])
            events = _after(events, *start)
        more = False
        if "limit" in args:
            limit = _limit(args["limit"])
            more = len(events) > int(limit)
            events = events[: int(limit)]
        answer: dict[str, Any] = {"events": [event.to_dict() for event in events]}
        answer["next"] = _cursor(events, start) if more else None  # the next page's since
        return _json(200, answer)

    def _openapi(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        return _json(200, openapi_document([gate.name for gate in self._gates()]))

    def _promote(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        if "target" in payload and not isinstance(payload["target"], str):
            raise ConfigError("target", payload["target"], "'staging' or 'production'")
        target_name = payload.get("target")
        if target_name is None:
            target_name = gate.status(recent_events=0).next_stage
            if target_name is None:
                raise PromotionError(
                    "cannot promote from production: no release in progress (start one with /canary)"
                )
        if target_name not in ("staging", "production"):
            raise ConfigError("target", target_name, "'staging' or 'production'")
        force = payload.get("force", False)
        if not isinstance(force, bool):
            raise ConfigError("force", force, "true or false")
        environment = gate.promote(
            Environment.from_name(target_name), force=force, actor=args["actor"]
        )
        return _json(200, {"environment": environment.to_dict()})

    def _traffic(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        environment = gate.set_traffic_percent(
            self._required(payload, "percent"), actor=args["actor"]
        )
        return _json(200, {"environment": environment.to_dict()})

    def _canary(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        flags = payload.get("flags", [])
        if not isinstance(flags, list):
            raise ConfigError("flags", flags, "a list of flag names")
        environment = gate.start_canary(
            self._required(payload, "percent"), flags, actor=args["actor"]
        )
        return _json(200, {"environment": environment.to_dict()})

    def _rollback(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        event = gate.rollback(self._required(payload, "reason"), actor=args["actor"])
        return _json(200, {"event": event.to_dict()})

    def _alertmanager(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        """Roll back on a firing alert that names this rollout, while a
        release is in progress; any other notification answers 200 with why
        nothing was done (Alertmanager retries an answer that is not 2xx)."""
        alertmanager.check_notification(payload)
        label = args.get("label", alertmanager.ROLLOUT_LABEL)
        if not alertmanager.valid_label_name(label):
            raise ConfigError("label", label, "a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        actor = self._actor_of(args["operator"], alertmanager.client_note(payload))
        gate: PromotionGate | None = args.get("gate")
        if gate is not None:
            return _json(200, _alert_answer(gate, payload, label, actor))
        # A set, and no ?rollout=: each rollout an alert's label names.
        named = [g for g in self._gates() if alertmanager.alerts_about(payload, g.name, label)]
        if not named:
            return _nothing(
                f"no alert has the label {label} naming one of the rollouts: {self._names()}"
            )
        answers = [_alert_answer(g, payload, label, actor) for g in named]
        if len(answers) == 1:
            return _json(200, answers[0])
        done = [answer for answer in answers if answer["rolled_back"]]
        answer = {
            "rolled_back": bool(done),
            "why": "; ".join(f"{g.name}: {a['why']}" for g, a in zip(named, answers, strict=True)),
            "event": (done or answers)[0]["event"],
            "rollouts": {g.name: a for g, a in zip(named, answers, strict=True)},
        }
        return _json(200, answer)

    def _plan(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        return _json(200, {"plan": gate.plan_status()})

    @staticmethod
    def _plan_answer(gate: PromotionGate) -> AdminResponse:
        state = gate.state
        return _json(200, {"environment": state.environment.to_dict(), "plan": gate.plan_status()})

    def _pause(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        gate.pause(payload.get("reason", "paused by an operator"), actor=args["actor"])
        return self._plan_answer(gate)

    def _resume(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        position, plan = gate.state.plan, gate.plan
        if (
            position is not None
            and plan is not None
            and position.index < plan.last
            and plan.step(position.index).manual
            and not position.approved
            and not allows(args["role"], "admin")
        ):
            # Resuming here approves a manual step: that moves the release on.
            return _forbidden(
                "resumePlan at a manual step (an approval)", "admin", args["operator"], args["role"]
            )
        gate.resume(actor=args["actor"])
        return self._plan_answer(gate)

    def _abort(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        if gate.plan is None:
            raise PromotionError("cannot abort: the gate has no rollout plan (use /rollback)")
        gate.abort(self._required(payload, "reason"), actor=args["actor"])
        return self._plan_answer(gate)

    def _retry(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        gate.retry(actor=args["actor"])
        return self._plan_answer(gate)

    def _skip(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        force = payload.get("force", False)
        if not isinstance(force, bool):
            raise ConfigError("force", force, "true or false")
        step = payload.get("step")
        if step is None:
            gate.promote_now(force=force, actor=args["actor"])
        else:
            if isinstance(step, float) and step.is_integer():
                step = int(step)  # JSON Schema's integer: 3.0 is 3
            if isinstance(step, bool) or not isinstance(step, int):
                raise ConfigError("step", step, "the number of a later step of the plan")
            gate.skip_to(step, force=force, actor=args["actor"])
        return self._plan_answer(gate)

    def _enable(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        event = gate.enable_feature(args["name"], actor=args["actor"])  # named in the path
        answer: dict[str, Any] = {"flag": args["name"], "enabled": True}
        answer["event"] = None if event is None else event.to_dict()  # None: it was on already
        return _json(200, answer)

    def _disable(self, payload: dict[str, Any], args: dict[str, Any]) -> AdminResponse:
        gate: PromotionGate = args["gate"]
        name = validate_flag_name(args["name"], "feature")
        try:
            event = gate.disable_feature(name, actor=args["actor"])
        except ConfigError as exc:  # a valid name, but no such flag is on
            raise _BadRequest(404, str(exc), exc.field) from exc
        return _json(200, {"flag": args["name"], "enabled": False, "event": event.to_dict()})


def _alert_answer(
    gate: PromotionGate, payload: dict[str, Any], label: str, actor: str
) -> dict[str, Any]:
    """Roll ``gate``'s release back if an alert that names its rollout fires;
    the answer says what was done and why."""
    rollout = gate.name
    ours = alertmanager.alerts_about(payload, rollout, label)
    firing = alertmanager.firing(ours)
    if not ours:
        return _nothing_done(f"no alert has the label {label}={rollout!r}")
    if not firing:
        return _nothing_done(f"the alerts for rollout {rollout!r} are resolved")
    if gate.state.environment.name == PRODUCTION:
        return _nothing_done("no release in progress (the gate is in production)")
    try:
        event = gate.rollback(alertmanager.rollback_reason(firing), actor=actor)
    except PromotionError as exc:  # the release ended meanwhile
        return _nothing_done(str(exc))
    why = f"{len(firing)} firing alert(s) for rollout {rollout!r}"
    return {"rolled_back": True, "why": why, "event": event.to_dict()}


def _nothing_done(why: str) -> dict[str, Any]:
    return {"rolled_back": False, "why": why, "event": None}


def _nothing(why: str) -> AdminResponse:
    """200: a valid notification that asks nothing of the rollout now."""
    return _json(200, {"rolled_back": False, "why": why, "event": None})


def _scenario_config(payload: dict[str, Any]) -> PromotionConfig:
    """The config a ``POST /rollouts`` body describes (a scenario's table);
    a ``ConfigError`` naming the body's field (``plan.steps[2]``) when it
    is not one."""
    if "name" not in payload:
        raise _BadRequest(400, "the field 'name' is required: the new rollout's name", "name")
    if payload.get("store") is not None:
        raise ConfigError(
            "store", "…", "null or left out: a rollout created here is kept in its set's store"
        )
    try:
        return PromotionConfig.from_table(_whole_counts(payload), "body")
    except ConfigError as exc:
        field = exc.field.removeprefix("body.")
        if field == exc.field:
            raise
        raise ConfigError(field, exc.value, exc.expected) from None


def _whole(value: Any) -> Any:
    """JSON Schema's integer: 100.0 is 100 (as ``/plan/skip``'s step)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole_counts(payload: dict[str, Any]) -> dict[str, Any]:
    """The body with its counts (``min_requests``, the plan's and each
    step's) as the integers the document lets a client write as 100.0."""
    table = dict(payload)
    if "min_requests" in table:
        table["min_requests"] = _whole(table["min_requests"])
    plan = table.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("steps"), list):
        steps = [
            {**step, "min_requests": _whole(step["min_requests"])}
            if isinstance(step, dict) and "min_requests" in step
            else step
            for step in plan["steps"]
        ]
        table["plan"] = {**plan, "steps": steps}
    return table


def _created(entry: CatalogEntry | None) -> dict[str, str] | None:
    """Who added a rollout while the app ran, and when (ISO 8601, UTC);
    ``None`` for one the app's code declares."""
    if entry is None:
        return None
    try:
        added_at = datetime.fromtimestamp(entry.added_at, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # a catalog entry's clock past year 9999
        added_at = f"{entry.added_at!r} (Unix seconds)"
    return {"actor": entry.actor, "added_at": added_at}


def _check_values(payload: dict[str, Any], args: dict[str, Any]) -> None:
    """Refuse (``ConfigError``) a value no rollout would take, before the
    rollout is looked up: a malformed request answers 400 whichever rollout
    it names, as it did before ``?rollout=``."""
    if "since" in args:
        _since(args["since"])
    if "limit" in args:
        _limit(args["limit"])
    if "percent" in payload:
        validate_traffic_percent(payload["percent"])


def _limit(limit: str) -> str:
    """``?limit=``: ASCII digits, from 1 to ``MAX_HISTORY``."""
    if not _DIGITS.fullmatch(limit) or not 1 <= int(limit) <= MAX_HISTORY:
        raise ConfigError("limit", limit, f"an integer from 1 to {MAX_HISTORY}")
    return limit


def _since(since: str) -> tuple[datetime, int]:
    """``since``: an ISO 8601 time with its offset (the events after it), or
    a page's cursor ``TIME~K`` (the events after TIME, and those at TIME
    itself but the first K: events of one clock tick are not lost between
    pages). ``K`` is -1 for a plain time."""
    text, tilde, skip = since.partition("~")
    try:
        after = datetime.fromisoformat(text)
        if after.tzinfo is None or (tilde and not _DIGITS.fullmatch(skip)):
            raise ValueError
    except ValueError:
        raise ConfigError(
            "since", since, "an ISO 8601 time with its offset (+00:00), or a page's next"
        ) from None
    return after, int(skip) if tilde else -1


def _after(events: list[GateEvent], after: datetime, skip: int) -> list[GateEvent]:
    found = []
    for event in events:
        if event.timestamp > after:
            found.append(event)
        elif event.timestamp == after and skip >= 0:
            if skip == 0:
                found.append(event)
            else:
                skip -= 1
    return found


def _cursor(events: list[GateEvent], start: tuple[datetime, int] | None) -> str:
    """Where the next page starts: the last event's time, and how many events
    at that very time this page and the ones before it returned."""
    last = events[-1].timestamp
    count = sum(1 for event in events if event.timestamp == last)
    if start is not None and start[0] == last and start[1] > 0:
        count += start[1]
    return f"{last.isoformat()}~{count}"


# -- the routes -------------------------------------------------------------------

_ENVIRONMENT = {"$ref": "#/components/schemas/Environment"}
_PLAN = {"anyOf": [{"$ref": "#/components/schemas/Plan"}, {"type": "null"}]}
_EVENT = {"type": "object"}
_FLAG_NAME = {"type": "string", "pattern": FLAG_NAME_PATTERN}
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100}
_FORCE = {"type": "boolean", "default": False}
_REASON = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_REASON_LENGTH,
    "pattern": REASON_PATTERN,
}
_NO_FIELDS = {"type": "object", "additionalProperties": False, "maxProperties": 0}
#: The schema of each ``{placeholder}`` a route's path may hold (a flag's or
#: a rollout's name: one rule for both).
_PATH_PARAMETERS = {"name": _FLAG_NAME}
#: ``?rollout=NAME``, which every route of one rollout takes.
_ROLLOUT_QUERY = {
    "type": "string",
    "pattern": NAME_PATTERN,
    "description": "The rollout to act on (required when a Rollouts set holds several; "
    "404 for a name that is not one)",
}


def _fields(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """A body of these fields and no others."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _holds(properties: dict[str, Any]) -> dict[str, Any]:
    """An object that holds each of ``properties`` (and perhaps more)."""
    return {"type": "object", "required": sorted(properties), "properties": properties}


def _answer(description: str, properties: dict[str, Any]) -> Answer:
    return Answer(description, _holds(properties))


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to the route named ``operation_id`` (followed by schemathesis)."""
    return {"operationId": operation_id, **({"parameters": parameters} if parameters else {})}


_OK = Answer("OK", {"type": "object"})
_NEW_ENVIRONMENT = _answer("The gate's new environment", {"environment": _ENVIRONMENT})
_PLAN_NOW = _answer(
    "The gate's environment and plan now", {"environment": _ENVIRONMENT, "plan": _PLAN}
)
_FLAG = {"flag": {"type": "string"}, "enabled": {"type": "boolean"}}
_NAMES = {"type": "array", "items": {"type": "string"}}
_SET_NOW = _answer(
    "The rollout, the set's rollouts and the retired ones now, and the event recorded",
    {
        "rollout": {"type": "string"},
        "rollouts": _NAMES,
        "retired": _NAMES,
        "event": _EVENT,
    },
)
#: Who added a rollout while the app ran, and when; null for one the app's code declares.
_CREATED_BY = {
    "anyOf": [
        _holds({"actor": {"type": "string"}, "added_at": {"type": "string"}}),
        {"type": "null"},
    ]
}
_ROLLOUT_NAME = {"type": "string", "pattern": NAME_PATTERN}
_SECONDS = {"type": "number", "minimum": 0}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_STEP_PERCENT = {"type": "number", "exclusiveMinimum": 0, "maximum": 100}
#: A rollout plan's table (``RolloutPlan.from_dict``), as far as JSON Schema
#: can say it: that the steps rise, each by at most ``max_step_ratio``, the
#: API checks itself (400 naming the step).
_PLAN_TABLE = _fields(
    {
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    _STEP_PERCENT,
                    _fields(
                        {
                            "traffic_percent": _STEP_PERCENT,
                            "bake_seconds": _SECONDS,
                            "min_requests": {"type": ["integer", "null"], "minimum": 1},
                            "require_healthy": {"type": "boolean"},
                            "manual": {"type": "boolean"},
                        },
                        "traffic_percent",
                    ),
                ]
            },
        },
        "bake_seconds": _SECONDS,
        "staging_bake_seconds": _SECONDS,
        "staging_manual": {"type": "boolean"},
        "inconclusive_limit_seconds": _SECONDS,
        "max_step_ratio": {"type": "number", "minimum": 1},
        "approval_deadline_seconds": {"type": ["number", "null"], "minimum": 0},
        "on_deadline": {"enum": list(ON_DEADLINE)},
    }
)
#: A business metric's table (``MetricDefinition``).
_METRIC_TABLE = _fields(
    {
        "name": _ROLLOUT_NAME,
        "kind": {"enum": list(KINDS)},
        "bad": {"enum": list(DIRECTIONS)},
        "tolerance": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "guardrail": {"type": "boolean"},
    },
    "name",
)
#: ``POST /rollouts``: a scenario's table, as JSON (``PromotionConfig.from_table``).
_SCENARIO = {
    **_fields(
        {
            "name": {**_ROLLOUT_NAME, "description": "The new rollout's name"},
            "description": {"type": "string"},
            "promotion_environment": {
                "enum": ["canary", "staging", "production", "shadow"],
                "default": "production",
                "description": "Where the rollout starts (shadow: a canary at 0 %)",
            },
            "promotion_traffic_percent": {
                **_PERCENT,
                "default": 10,
                "description": "The canary's share of sessions (a canary only)",
            },
            "feature_flags": {"type": "array", "items": _FLAG_NAME},
            "auto_rollback_enabled": {"type": "boolean"},
            "slo_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "rollback_window_seconds": _POSITIVE,
            "min_requests": {"type": "integer", "minimum": 1},
            "evaluation_interval_seconds": _POSITIVE,
            "holdback_percent": {"type": "number", "minimum": 0, "maximum": 50},
            "initial_delay_seconds": _SECONDS,
            "salt": {"type": ["string", "null"], "pattern": NAME_PATTERN},
            "cohort": {"enum": ["rollout", "release"]},
            "plan": _PLAN_TABLE,
            "metrics": {"type": "array", "maxItems": MAX_METRICS, "items": _METRIC_TABLE},
            "store": {
                "type": "null",
                "description": "Left out: the new rollout is kept in its set's store",
            },
        },
        "name",
    ),
    "description": "A scenario's table, as a scenario file's [scenarios.NAME] holds it",
}
_NEW_ROLLOUT_FIELDS = {
    "rollout": {"type": "string"},
    "status": {"type": "object"},
    "rollouts": _NAMES,
    "retired": _NAMES,
    "created": _CREATED_BY,
    "shared": {"type": "boolean"},
}
_NEW_ROLLOUT = Answer(
    "The new rollout and its status, the set's rollouts now, and whether every process "
    "of the app serves it (shared) or this one only (then a warning says so)",
    {
        **_holds(_NEW_ROLLOUT_FIELDS),
        "properties": {**_NEW_ROLLOUT_FIELDS, "warning": {"type": "string"}},
    },
    status=201,
)

#: Every admin endpoint, once. A new one is a handler on ``AdminAPI`` and an
#: entry here (a new ``{placeholder}`` also needs its schema in
#: ``_PATH_PARAMETERS``); tests/operate/test_admin.py checks that the dispatch and the
#: served document still agree.
ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/",
        name="dashboard",
        handler=AdminAPI._dashboard,
        summary="The dashboard page (it holds no data)",
        answer=Answer("The page", {"type": "string"}, "text/html"),
        public=True,
    ),
    Route(
        "GET",
        "/status",
        name="getStatus",
        handler=AdminAPI._status,
        summary="Environment, traffic, flags, health, SLO, recent events",
        answer=_OK,
    ),
    Route(
        "GET",
        "/history",
        name="getHistory",
        handler=AdminAPI._history,
        summary="The events, oldest first: all, or a page (since, limit; next: the next page's since)",
        answer=_answer(
            "The events",
            {
                "events": {"type": "array", "items": _EVENT},
                "next": {"type": ["string", "null"]},
            },
        ),
        query={
            "since": {
                "type": "string",
                "description": "An ISO 8601 time with its offset, or a page's next (TIME~K)",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY},
        },
    ),
    Route(
        "GET",
        "/openapi.json",
        name="getOpenAPI",
        handler=AdminAPI._openapi,
        summary="The OpenAPI 3.1 document of this API",
        answer=_OK,
        rollout="optional",
    ),
    Route(
        "POST",
        "/promote",
        name="promote",
        role="admin",
        handler=AdminAPI._promote,
        summary="Promote the release (to the next stage when target is left out)",
        body=_fields(
            {"target": {"type": "string", "enum": ["staging", "production"]}, "force": _FORCE}
        ),
        answer=_NEW_ENVIRONMENT,
        links={"next": _link("startCanary"), "rollback": _link("rollback")},
    ),
    Route(
        "POST",
        "/traffic",
        name="setTraffic",
        role="admin",
        handler=AdminAPI._traffic,
        summary="Ramp the canary (-0.0 is refused too)",
        body=_fields({"percent": _PERCENT}, "percent"),
        answer=_NEW_ENVIRONMENT,
        links={"promote": _link("promote"), "rollback": _link("rollback")},
    ),
    Route(
        "POST",
        "/canary",
        name="startCanary",
        role="admin",
        handler=AdminAPI._canary,
        summary="Start the next release from production",
        body=_fields(
            {"percent": _PERCENT, "flags": {"type": "array", "items": _FLAG_NAME}}, "percent"
        ),
        answer=_NEW_ENVIRONMENT,
        links={
            "disable": _link("disableFlag", name="$request.body#/flags/0"),
            "ramp": _link("setTraffic"),
            "promote": _link("promote"),
            "rollback": _link("rollback"),
        },
    ),
    Route(
        "POST",
        "/rollback",
        name="rollback",
        role="operator",
        handler=AdminAPI._rollback,
        summary="Roll the release back",
        body=_fields({"reason": _REASON}, "reason"),
        answer=_answer("The rollback", {"event": _EVENT}),
        links={"next": _link("startCanary")},
    ),
    Route(
        "POST",
        "/alertmanager",
        name="alertmanagerRollback",
        role="operator",
        handler=AdminAPI._alertmanager,
        summary="Roll the release back on a firing Alertmanager alert for this rollout",
        body=alertmanager.NOTIFICATION,
        answer=_answer(
            "What was done, and why (200 also when nothing was: Alertmanager retries the rest)",
            {
                "rolled_back": {"type": "boolean"},
                "why": {"type": "string"},
                "event": {"anyOf": [_EVENT, {"type": "null"}]},
            },
        ),
        query={
            "label": {
                "type": "string",
                "pattern": alertmanager.LABEL_NAME_PATTERN,
                "default": alertmanager.ROLLOUT_LABEL,
                "description": "The alert label that holds the rollout's name",
            }
        },
        links={"next": _link("startCanary")},
        rollout="optional",
    ),
    Route(
        "POST",
        "/flags/{name}/enable",
        name="enableFlag",
        role="admin",
        handler=AdminAPI._enable,
        summary="Turn a flag on",
        body=_NO_FIELDS,
        answer=_answer("The flag", _FLAG),
        links={"disable": _link("disableFlag", name="$response.body#/flag")},
    ),
    Route(
        "POST",
        "/flags/{name}/disable",
        name="disableFlag",
        role="operator",
        handler=AdminAPI._disable,
        summary="Take a flag from every session (404: no such flag is on)",
        body=_NO_FIELDS,
        answer=_answer("The flag", {**_FLAG, "event": _EVENT}),
        links={"enable": _link("enableFlag", name="$response.body#/flag")},
        not_found=True,
    ),
    Route(
        "GET",
        "/plan",
        name="getPlan",
        handler=AdminAPI._plan,
        summary="The rollout plan: steps, current step, bake progress, ETA (null: no plan)",
        answer=_answer("The plan", {"plan": _PLAN}),
    ),
    Route(
        "POST",
        "/plan/pause",
        name="pausePlan",
        role="operator",
        handler=AdminAPI._pause,
        summary="Pause the plan (the judge still rolls back on a failing verdict)",
        body=_fields({"reason": _REASON}),
        answer=_PLAN_NOW,
        links={"resume": _link("resumePlan")},
    ),
    Route(
        "POST",
        "/plan/resume",
        name="resumePlan",
        role="operator",
        handler=AdminAPI._resume,
        summary="Resume the plan, or let it through a manual gate",
        body=_NO_FIELDS,
        answer=_PLAN_NOW,
    ),
    Route(
        "POST",
        "/plan/abort",
        name="abortPlan",
        role="operator",
        handler=AdminAPI._abort,
        summary="Roll the release back and end its plan",
        body=_fields({"reason": _REASON}, "reason"),
        answer=_PLAN_NOW,
        links={"retry": _link("retryPlan")},
    ),
    Route(
        "POST",
        "/plan/retry",
        name="retryPlan",
        role="admin",
        handler=AdminAPI._retry,
        summary="Start the plan again for the release last rolled back",
        body=_NO_FIELDS,
        answer=_PLAN_NOW,
    ),
    Route(
        "POST",
        "/plan/skip",
        name="skipPlan",
        role="admin",
        handler=AdminAPI._skip,
        summary="Move the plan to a later step now (no step: production); force skips the checks",
        body=_fields(
            {
                "step": {"type": "integer", "minimum": 1, "description": STEP_NUMBERS},
                "force": _FORCE,
            }
        ),
        answer=_PLAN_NOW,
    ),
    Route(
        "GET",
        "/rollouts",
        name="getRollouts",
        handler=AdminAPI._rollouts,
        summary="Every rollout of the set, in order, with its /status and who added it; the "
        "retired ones; those of the catalog not served here, with why",
        answer=_answer(
            "The rollouts",
            {
                "rollouts": {
                    "type": "array",
                    "items": _holds(
                        {
                            "name": {"type": "string"},
                            "status": {"type": "object"},
                            "created": _CREATED_BY,
                        }
                    ),
                },
                "retired": {"type": "array", "items": {"type": "string"}},
                "refused": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        ),
        rollout="set",
    ),
    Route(
        "POST",
        "/rollouts",
        name="createRollout",
        role="admin",
        handler=AdminAPI._create,
        summary="Add a rollout while the app runs, for every process that shares the set's "
        "store (201; 409: one gate)",
        body=_SCENARIO,
        answer=_NEW_ROLLOUT,
        links={"retire": _link("retireRollout", name="$response.body#/rollout")},
        rollout="set",
    ),
    Route(
        "POST",
        "/rollouts/{name}/retire",
        name="retireRollout",
        role="admin",
        handler=AdminAPI._retire,
        summary="Stop serving a rollout in every process (its flags off, nothing judged; 409: one gate)",
        body=_NO_FIELDS,
        answer=_SET_NOW,
        links={"reinstate": _link("reinstateRollout", name="$response.body#/rollout")},
        not_found=True,
        rollout="set",
    ),
    Route(
        "POST",
        "/rollouts/{name}/reinstate",
        name="reinstateRollout",
        role="admin",
        handler=AdminAPI._reinstate,
        summary="Serve a retired rollout again where it stood, in every process (409: one gate)",
        body=_NO_FIELDS,
        answer=_SET_NOW,
        links={"retire": _link("retireRollout", name="$response.body#/rollout")},
        not_found=True,
        rollout="set",
    ),
)
_NAMED = {route.name: route for route in ROUTES}


def route_named(name: str) -> Route:
    """The route whose operationId is ``name`` (``KeyError`` for none)."""
    return _NAMED[name]


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route that answers ``method path``, with the path's parameters."""
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        # HEAD reads a public page as GET does; every other route takes its one method.
        if match and (route.method == method or (route.public and method == "HEAD")):
            return route, match.groupdict()
    return None


def _not_routed(method: str, path: str) -> _BadRequest:
    allowed = [route.method for route in ROUTES if route.pattern.fullmatch(path)]
    if allowed:
        return _BadRequest(405, f"{path} takes {', '.join(allowed)}, not {method}")
    return _BadRequest(404, f"no admin endpoint at {path}")


def route_list() -> str:
    """``ROUTES`` as the list that ends this module's docstring (``?rollout=``,
    which every route of one rollout takes, is said once, above)."""
    lines = []
    for route in ROUTES:
        lines.append(f"    {route.method:<5} {route.path:<25} {route.summary}")
        if route.fields:
            fields = [f if f in route.required else f"{f}?" for f in route.fields]
            lines.extend(
                textwrap.wrap(
                    f"body {{{', '.join(fields)}}}",
                    width=99,
                    initial_indent=" " * 36,
                    subsequent_indent=" " * 41,
                    break_on_hyphens=False,
                )
            )
        query = [name for name in route.query if name != "rollout"]
        if query:
            lines.append(f"{'':<36}query ?{'&'.join(f'{q}=' for q in query)}")
    return "\n".join(lines) + "\n"


if __doc__ is not None:  # None under python -OO
    __doc__ += route_list()


class AdminASGIApp:
    """The admin API as an ASGI app: ``Mount("/gate", AdminASGIApp(gate, token=...))``."""

    def __init__(
        self,
        gate: PromotionGate | Rollouts,
        *,
        token: str | None = None,
        token_name: str = "admin",
        operators: OperatorsLike = (),
        operators_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.api = AdminAPI(
            gate,
            token=token,
            token_name=token_name,
            operators=operators,
            operators_file=operators_file,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more and len(body) <= MAX_BODY_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        authorization = content_type = actor = None
        authorizations = 0
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorizations += 1
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"x-gate-actor":
                actor = value.decode("utf-8", "replace")
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if authorizations > 1:  # which one would count depends on the server: none does
            authorization = None
        # A handler may wait on the shared store (Redis): never on the event loop.
        response = await asyncio.to_thread(
            self.api.handle,
            scope.get("method", "GET"),
            path,
            authorization,
            body,
            content_type,
            actor,
            scope.get("query_string", b"").decode("latin-1"),
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.all_headers()
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def wsgi_text(header: str | None) -> str | None:
    """A header's UTF-8 text: WSGI hands headers over decoded as Latin-1
    (PEP 3333), so the bytes are taken back and read as UTF-8, as ASGI's are."""
    if header is None:
        return None
    try:
        return header.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded it otherwise
        return header


def read_wsgi_body(environ: Environ) -> bytes | AdminResponse:
    """The whole request body of a WSGI request, chunked ones included, or
    the error to answer.

    Read through werkzeug's ``get_input_stream``: up to ``Content-Length``,
    or to the end of a chunked body when the server terminates the stream
    (``wsgi.input_terminated``). A chunked body the server cannot terminate
    is refused (411), never read as empty; one over 64 KB answers 413.
    """
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not environ.get("wsgi.input_terminated"):
        return _error(411, "this server cannot read a chunked body to its end: send Content-Length")
    try:
        stream = get_input_stream(environ, max_content_length=MAX_BODY_BYTES)
        body = b""
        while True:
            chunk = stream.read(16384)
            if not chunk:
                return body
            body += chunk
    except RequestEntityTooLarge:
        return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


class AdminWSGIApp:
    """The admin API as a WSGI app (mount it with werkzeug's ``DispatcherMiddleware``)."""

    def __init__(
        self,
        gate: PromotionGate | Rollouts,
        *,
        token: str | None = None,
        token_name: str = "admin",
        operators: OperatorsLike = (),
        operators_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.api = AdminAPI(
            gate,
            token=token,
            token_name=token_name,
            operators=operators,
            operators_file=operators_file,
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = read_wsgi_body(environ)
        if isinstance(body, AdminResponse):
            response = body
        else:
            response = self.api.handle(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO", "/"),
                environ.get("HTTP_AUTHORIZATION"),
                body,
                environ.get("CONTENT_TYPE"),
                wsgi_text(environ.get("HTTP_X_GATE_ACTOR")),
                environ.get("QUERY_STRING"),
            )
        reason = _REASONS.get(response.status, "Error")
        start_response(f"{response.status} {reason}", response.all_headers())
        return [response.body]


_DASHBOARD = resources.files("gate_middleware.operate").joinpath("dashboard.html").read_bytes()


def _inline_hashes(page: bytes, tag: bytes) -> str:
    """``'sha256-...'`` sources for each inline ``<tag>`` of ``page``, as CSP hashes them."""
    sources = []
    for content in re.findall(rb"<" + tag + rb">(.*?)</" + tag + rb">", page, re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode("ascii")
        sources.append(f"'sha256-{digest}'")
    return " ".join(sources)


#: The page's Content-Security-Policy: nothing but this origin, the inline
#: script and style pinned by their hashes (computed from the page here, so
#: they cannot drift), no framing, no base or form targets elsewhere.
DASHBOARD_CSP = (
    "default-src 'self'; "
    f"script-src {_inline_hashes(_DASHBOARD, b'script')}; "
    f"style-src {_inline_hashes(_DASHBOARD, b'style')}; "
    "connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DASHBOARD_HEADERS = (
    ("Content-Security-Policy", DASHBOARD_CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def dashboard_html() -> bytes:
    """The self-contained dashboard page (shipped in the package, no CDN)."""
    return _DASHBOARD


def openapi_document(rollouts: Sequence[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the admin API, built from ``ROUTES``
    (schemathesis checks the API against it: every answer it documents, and
    nothing it does not). ``rollouts``: the names ``?rollout=`` takes now
    (the served document lists them; any name is a 404 otherwise)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        item = paths.setdefault(route.path, {})
        item[route.method.lower()] = _operation(route, rollouts)
        if route.pattern.groupindex:
            item["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMETERS[name]}
                for name in route.pattern.groupindex
            ]
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {"title": "gate-middleware admin API", "version": "1"},
            "security": [{"bearer": []}],
            "paths": paths,
            "components": _COMPONENTS,
        }
    )


def _operation(route: Route, rollouts: Sequence[str] | None = None) -> dict[str, Any]:
    answer = route.answer
    ok: dict[str, Any] = {
        "description": answer.description,
        "content": {answer.media_type: {"schema": answer.schema}},
    }
    if route.links:
        ok["links"] = dict(route.links)
    if route.public:
        errors: list[int] = []
    elif route.changes_state:
        # 404: a ?rollout= or a path that names nothing
        found = route.not_found or route.rollout != "set"
        errors = [400, 401, 403, *([404] if found else []), 409, 413, 415]
    else:
        # 400: a query parameter the route does not take; 404: no such ?rollout=
        errors = [400, 401, *([404] if route.rollout != "set" else [])]
    error = {"$ref": "#/components/responses/Error"}
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "responses": {str(answer.status): ok, **{str(status): error for status in errors}},
    }
    if route.public:
        operation["security"] = []
    else:
        operation["x-gate-role"] = route.role  # the least role that may call it
        operation["description"] = f"Needs the {route.role} role (403 for a token without it)."
    if route.query:
        operation["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema
                if name != "rollout" or not rollouts
                else {**schema, "enum": list(rollouts)},
            }
            for name, schema in route.query.items()
        ]
    if route.body is not None:
        operation["requestBody"] = {
            "required": bool(route.required),
            "content": {"application/json": {"schema": route.body}},
        }
    return operation


_JSON_TYPES = {str: "string", float: "number", int: "integer", bool: "boolean", type(None): "null"}


def _schema_of(shape: Any) -> dict[str, Any]:
    """The JSON Schema of a typed shape: a TypedDict, a list, a union, a
    scalar (anything else: any value)."""
    if typing.is_typeddict(shape):
        hints = typing.get_type_hints(shape)
        return {
            "type": "object",
            "required": sorted(shape.__required_keys__),
            "properties": {key: _schema_of(hint) for key, hint in hints.items()},
        }
    origin, args = typing.get_origin(shape), typing.get_args(shape)
    if origin is list:
        return {"type": "array", "items": _schema_of(args[0])}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(arg) for arg in args]}
    if origin is Literal:
        return {"enum": list(args)}
    return {"type": _JSON_TYPES[shape]} if shape in _JSON_TYPES else {}


_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
        "Environment": _fields(
            {
                "name": {"type": "string", "enum": ["canary", "staging", "production"]},
                "traffic_percent": {"type": "number"},
            },
            "name",
            "traffic_percent",
        ),
        # PromotionGate.plan_status(), from its TypedDict: the one description.
        "Plan": _schema_of(PlanProgress),
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
        },
    },
    "responses": {
        "Error": {
            "description": "What was wrong; nothing changed",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    },
}
