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

=======  ==========================  ===================================================
method   path                        does
=======  ==========================  ===================================================
GET      ``/``                       the dashboard page (no data in it; it asks for the
                                     token, or reads it from the URL's ``#token=...``)
GET      ``/status``                 environment, traffic, flags, health of both
                                     variants, SLO compliance, recent events, samples
GET      ``/history``                every event, oldest first
GET      ``/openapi.json``           the OpenAPI 3.1 document of this API
POST     ``/promote``                ``{"target": "staging"|"production", "force": false}``
                                     (``target`` defaults to the next stage)
POST     ``/traffic``                ``{"percent": 25}``
POST     ``/canary``                 ``{"percent": 5, "flags": ["new_checkout_flow"]}``
POST     ``/rollback``               ``{"reason": "checkout totals are wrong"}``
POST     ``/flags/{name}/enable``    turn a flag on
POST     ``/flags/{name}/disable``   take a flag from everyone (records a rollback event)
GET      ``/plan``                   the rollout plan: steps, current step, bake, ETA
POST     ``/plan/pause``             ``{"reason": "..."}`` (optional): stop the plan
POST     ``/plan/resume``            go on after a pause, or through a manual gate
POST     ``/plan/abort``             ``{"reason": "..."}``: roll back, end the plan
POST     ``/plan/retry``             restart the plan of a rolled-back release
POST     ``/plan/skip``              ``{"step": 3, "force": false}``: move to a step
                                     now (no ``step``: production, "promote now")
=======  ==========================  ===================================================

Each change is recorded with its actor: the token's name (``token_name``,
"admin" by default), followed by the user a client names in the
``X-Gate-Actor`` header (the CLI sends ``cli:<login>``), e.g.
``admin (cli:alice)``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from gate_middleware.domain.config import validate_flag_name
from gate_middleware.domain.environment import Environment
from gate_middleware.domain.naming import (
    MAX_REASON_LENGTH,
    NAME_PATTERN,
    REASON_PATTERN,
    TOKEN_EXPECTED,
    valid_token,
)
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.gate import PromotionGate
from gate_middleware.types import Environ, Receive, Scope, Send, StartResponse

MAX_BODY_BYTES = 64 * 1024
FLAG_NAME_PATTERN = NAME_PATTERN  # the one rule (gate_middleware.domain.naming)
_FLAG_PATH = re.compile(r"/flags/([^/]+)/(enable|disable)")
_ACTOR = re.compile(r"[ -~]{1,64}")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
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


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _BadRequest(400, f"the field {key!r} appears twice in the body", key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _BadRequest(400, f"the body is not valid JSON: {name} is not a JSON number")


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


Handler = Callable[[dict[str, Any], dict[str, str]], AdminResponse]


class AdminAPI:
    """Routes admin requests to the gate; knows no protocol."""

    def __init__(
        self, gate: PromotionGate, *, token: str | None, token_name: str = "admin"
    ) -> None:
        if not isinstance(gate, PromotionGate):
            raise ConfigError("gate", gate, "a PromotionGate")
        if not valid_token(token):
            raise ConfigError(
                "token",
                "<hidden>" if isinstance(token, str) else token,
                f"a bearer token of {TOKEN_EXPECTED}: the admin API refuses to start without one",
            )
        if not isinstance(token_name, str) or not _ACTOR.fullmatch(token_name):
            raise ConfigError("token_name", token_name, "1 to 64 printable ASCII characters")
        self.gate = gate
        self.token_name = token_name
        self._actor = token_name
        self._token = token.encode("ascii")
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/status"): self._status,
            ("GET", "/history"): self._history,
            ("GET", "/openapi.json"): self._openapi,
            ("POST", "/promote"): self._promote,
            ("POST", "/traffic"): self._traffic,
            ("POST", "/canary"): self._canary,
            ("POST", "/rollback"): self._rollback,
            ("GET", "/plan"): self._plan,
            ("POST", "/plan/pause"): self._pause,
            ("POST", "/plan/resume"): self._resume,
            ("POST", "/plan/abort"): self._abort,
            ("POST", "/plan/retry"): self._retry,
            ("POST", "/plan/skip"): self._skip,
        }

    def handle(
        self,
        method: str,
        path: str,
        authorization: str | None,
        body: bytes | None,
        content_type: str | None = None,
        actor: str | None = None,
    ) -> AdminResponse:
        """Answer one request; never raises for anything the client sent.

        A POST with a body must declare ``Content-Type: application/json``.
        ``actor``: the ``X-Gate-Actor`` header (kept after the token's name).
        """
        path = "/" + path.strip("/") if path.strip("/") else "/"
        if path == "/" and method in ("GET", "HEAD"):
            return AdminResponse(
                200, dashboard_html(), "text/html; charset=utf-8", list(DASHBOARD_HEADERS)
            )
        if not self._authorized(authorization):
            return _error(401, "a valid 'Authorization: Bearer <token>' header is required")
        try:
            handler, args = self._route(method, path)
            alone = self.gate.decides_alone
            if method == "POST" and alone is not None:
                # A 200 would speak for one worker of several: refuse instead.
                return _error(409, f"nothing changed: {alone}")
            payload = self._payload(method, body, content_type)
            args["actor"] = self._actor_of(actor)
            return handler(payload, args)
        except _BadRequest as exc:
            return _error(exc.status, str(exc), exc.field)
        except ConfigError as exc:
            return _error(400, str(exc), exc.field)
        except PromotionError as exc:
            return _error(409, str(exc))

    def _authorized(self, authorization: str | None) -> bool:
        # RFC 7235: the scheme is case-insensitive, and one or more spaces follow it.
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = credentials.strip(" \t").encode("utf-8", "replace")
        return hmac.compare_digest(presented, self._token)

    def _actor_of(self, header: str | None) -> str:
        """The token's name, and the user the client names (printable, cut to 64)."""
        if not header:
            return self.token_name
        user = "".join(c for c in header if c.isprintable())[:64].strip()
        return f"{self.token_name} ({user})" if user else self.token_name

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        handler = self._routes.get((method, path))
        if handler is not None:
            return handler, {}
        match = _FLAG_PATH.fullmatch(path)
        if match is not None:
            if method != "POST":
                raise _BadRequest(405, f"{path} takes POST, not {method}")
            action = self._enable if match.group(2) == "enable" else self._disable
            return action, {"name": match.group(1)}
        allowed = [m for (m, p) in self._routes if p == path]
        if allowed:
            raise _BadRequest(405, f"{path} takes {', '.join(allowed)}, not {method}")
        raise _BadRequest(404, f"no admin endpoint at {path}")

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
            )
        except RecursionError as exc:
            raise _BadRequest(400, "the body is not valid JSON: nested too deeply") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, f"the body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise _BadRequest(400, "the body must be a JSON object")
        return payload

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

    # -- endpoints ----------------------------------------------------------

    def _status(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        status = self.gate.status().to_dict()
        status["series"] = [sample.to_dict() for sample in self.gate.get_health_series()]
        return _json(200, status)

    def _history(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        return _json(200, {"events": [event.to_dict() for event in self.gate.get_history()]})

    def _openapi(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        return _json(200, openapi_document())

    def _promote(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "target", "force")
        if "target" in payload and not isinstance(payload["target"], str):
            raise ConfigError("target", payload["target"], "'staging' or 'production'")
        target_name = payload.get("target")
        if target_name is None:
            target_name = self.gate.status(recent_events=0).next_stage
            if target_name is None:
                raise PromotionError(
                    "cannot promote from production: no release in progress (start one with /canary)"
                )
        if target_name not in ("staging", "production"):
            raise ConfigError("target", target_name, "'staging' or 'production'")
        force = payload.get("force", False)
        if not isinstance(force, bool):
            raise ConfigError("force", force, "true or false")
        environment = self.gate.promote(
            Environment.from_name(target_name), force=force, actor=args["actor"]
        )
        return _json(200, {"environment": environment.to_dict()})

    def _traffic(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "percent")
        environment = self.gate.set_traffic_percent(
            self._required(payload, "percent"), actor=args["actor"]
        )
        return _json(200, {"environment": environment.to_dict()})

    def _canary(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "percent", "flags")
        flags = payload.get("flags", [])
        if not isinstance(flags, list):
            raise ConfigError("flags", flags, "a list of flag names")
        environment = self.gate.start_canary(
            self._required(payload, "percent"), flags, actor=args["actor"]
        )
        return _json(200, {"environment": environment.to_dict()})

    def _rollback(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "reason")
        event = self.gate.rollback(self._required(payload, "reason"), actor=args["actor"])
        return _json(200, {"event": event.to_dict()})

    def _plan(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        return _json(200, {"plan": self.gate.plan_status()})

    def _plan_answer(self) -> AdminResponse:
        state = self.gate.state
        return _json(
            200, {"environment": state.environment.to_dict(), "plan": self.gate.plan_status()}
        )

    def _pause(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "reason")
        self.gate.pause(payload.get("reason", "paused by an operator"), actor=args["actor"])
        return self._plan_answer()

    def _resume(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload)
        self.gate.resume(actor=args["actor"])
        return self._plan_answer()

    def _abort(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "reason")
        if self.gate.plan is None:
            raise PromotionError("cannot abort: the gate has no rollout plan (use /rollback)")
        self.gate.abort(self._required(payload, "reason"), actor=args["actor"])
        return self._plan_answer()

    def _retry(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload)
        self.gate.retry(actor=args["actor"])
        return self._plan_answer()

    def _skip(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload, "step", "force")
        force = payload.get("force", False)
        if not isinstance(force, bool):
            raise ConfigError("force", force, "true or false")
        step = payload.get("step")
        if step is None:
            self.gate.promote_now(force=force, actor=args["actor"])
        else:
            if isinstance(step, float) and step.is_integer():
                step = int(step)  # JSON Schema's integer: 3.0 is 3
            if isinstance(step, bool) or not isinstance(step, int):
                raise ConfigError("step", step, "the number of a later step of the plan")
            self.gate.skip_to(step, force=force, actor=args["actor"])
        return self._plan_answer()

    def _enable(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload)  # the flag is named in the path; the body has no fields
        self.gate.enable_feature(args["name"])
        return _json(200, {"flag": args["name"], "enabled": True})

    def _disable(self, payload: dict[str, Any], args: dict[str, str]) -> AdminResponse:
        self._only(payload)
        name = validate_flag_name(args["name"], "feature")
        try:
            event = self.gate.disable_feature(name, actor=args["actor"])
        except ConfigError as exc:  # a valid name, but no such flag is on
            raise _BadRequest(404, str(exc), exc.field) from exc
        return _json(200, {"flag": args["name"], "enabled": False, "event": event.to_dict()})


class AdminASGIApp:
    """The admin API as an ASGI app: ``Mount("/gate", AdminASGIApp(gate, token=...))``."""

    def __init__(
        self, gate: PromotionGate, *, token: str | None, token_name: str = "admin"
    ) -> None:
        self.api = AdminAPI(gate, token=token, token_name=token_name)

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
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"x-gate-actor":
                actor = value.decode("utf-8", "replace")
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        # A handler may wait on the shared store (Redis): never on the event loop.
        response = await asyncio.to_thread(
            self.api.handle,
            scope.get("method", "GET"),
            path,
            authorization,
            body,
            content_type,
            actor,
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
        self, gate: PromotionGate, *, token: str | None, token_name: str = "admin"
    ) -> None:
        self.api = AdminAPI(gate, token=token, token_name=token_name)

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
                environ.get("HTTP_X_GATE_ACTOR"),
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


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the admin API (schemathesis checks the
    API against it: every answer it documents, and nothing it does not)."""
    error = {"$ref": "#/components/responses/Error"}
    flag_name = {"type": "string", "pattern": FLAG_NAME_PATTERN}

    def result(description: str, properties: dict[str, Any]) -> dict[str, Any]:
        schema = {"type": "object", "required": sorted(properties), "properties": properties}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    environment_result = result(
        "The gate's new environment", {"environment": {"$ref": "#/components/schemas/Environment"}}
    )

    def post(
        summary: str,
        request: dict[str, Any] | None,
        ok: dict[str, Any],
        *,
        required: bool = True,
        not_found: bool = False,
        operation_id: str | None = None,
        links: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {**ok, "links": links} if links else ok,
                "400": error,
                "401": error,
                **({"404": error} if not_found else {}),
                "409": error,
                "413": error,
                "415": error,
            },
        }
        if operation_id is not None:
            operation["operationId"] = operation_id
        if request is not None:
            operation["requestBody"] = {
                "required": required,
                "content": {"application/json": {"schema": request}},
            }
        return {"post": operation}

    def flag_link(operation_id: str, name: str) -> dict[str, Any]:
        return {"operationId": operation_id, "parameters": {"name": name}}

    def get(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": ok, "401": error}}}

    def obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }

    any_object = {
        "description": "OK",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    percent = {"type": "number", "minimum": 0, "maximum": 100}
    flag_path = {"name": "name", "in": "path", "required": True, "schema": flag_name}
    flag_result = {
        "flag": {"type": "string"},
        "enabled": {"type": "boolean"},
    }
    empty_body = {"type": "object", "additionalProperties": False, "maxProperties": 0}
    reason = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_REASON_LENGTH,
        "pattern": REASON_PATTERN,
    }
    plan_result = result(
        "The gate's environment and plan now",
        {
            "environment": {"$ref": "#/components/schemas/Environment"},
            "plan": {"type": ["object", "null"]},
        },
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "gate-middleware admin API", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/": {
                "get": {
                    "summary": "The dashboard page (it holds no data)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/status": get("Environment, traffic, flags, health, SLO, recent events", any_object),
            "/history": get(
                "Every event, oldest first",
                result("Every event", {"events": {"type": "array", "items": {"type": "object"}}}),
            ),
            "/openapi.json": get("This document", any_object),
            "/promote": post(
                "Promote the release (to the next stage when target is left out)",
                obj(
                    {
                        "target": {"type": "string", "enum": ["staging", "production"]},
                        "force": {"type": "boolean", "default": False},
                    },
                    [],
                ),
                environment_result,
                required=False,
                operation_id="promote",
                links={
                    "next": {"operationId": "startCanary"},
                    "rollback": {"operationId": "rollback"},
                },
            ),
            "/traffic": post(
                "Ramp the canary (-0.0 is refused too)",
                obj({"percent": percent}, ["percent"]),
                environment_result,
                operation_id="setTraffic",
                links={
                    "promote": {"operationId": "promote"},
                    "rollback": {"operationId": "rollback"},
                },
            ),
            "/canary": post(
                "Start the next release from production",
                obj(
                    {"percent": percent, "flags": {"type": "array", "items": flag_name}},
                    ["percent"],
                ),
                environment_result,
                operation_id="startCanary",
                links={
                    "disable": flag_link("disableFlag", "$request.body#/flags/0"),
                    "ramp": {"operationId": "setTraffic"},
                    "promote": {"operationId": "promote"},
                    "rollback": {"operationId": "rollback"},
                },
            ),
            "/rollback": post(
                "Roll the release back",
                obj(
                    {
                        "reason": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_REASON_LENGTH,
                            "pattern": REASON_PATTERN,
                        }
                    },
                    ["reason"],
                ),
                result("The rollback", {"event": {"type": "object"}}),
                operation_id="rollback",
                links={"next": {"operationId": "startCanary"}},
            ),
            "/plan": get(
                "The rollout plan: steps, current step, bake progress, ETA (null: no plan)",
                result("The plan", {"plan": {"type": ["object", "null"]}}),
            ),
            "/plan/pause": post(
                "Pause the plan (the judge still rolls back on a failing verdict)",
                obj({"reason": reason}, []),
                plan_result,
                required=False,
                operation_id="pausePlan",
                links={"resume": {"operationId": "resumePlan"}},
            ),
            "/plan/resume": post(
                "Resume the plan, or let it through a manual gate",
                empty_body,
                plan_result,
                required=False,
                operation_id="resumePlan",
            ),
            "/plan/abort": post(
                "Roll the release back and end its plan",
                obj({"reason": reason}, ["reason"]),
                plan_result,
                operation_id="abortPlan",
                links={"retry": {"operationId": "retryPlan"}},
            ),
            "/plan/retry": post(
                "Start the plan again for the release last rolled back",
                empty_body,
                plan_result,
                required=False,
                operation_id="retryPlan",
            ),
            "/plan/skip": post(
                "Move the plan to a later step now (no step: production); force skips the checks",
                obj(
                    {
                        "step": {"type": "integer", "minimum": 0},
                        "force": {"type": "boolean", "default": False},
                    },
                    [],
                ),
                plan_result,
                required=False,
                operation_id="skipPlan",
            ),
            "/flags/{name}/enable": {
                **post(
                    "Turn a flag on",
                    empty_body,
                    result("The flag", flag_result),
                    required=False,
                    operation_id="enableFlag",
                    links={"disable": flag_link("disableFlag", "$response.body#/flag")},
                ),
                "parameters": [flag_path],
            },
            "/flags/{name}/disable": {
                **post(
                    "Take a flag from every session (404: no such flag is on)",
                    empty_body,
                    result("The flag", {**flag_result, "event": {"type": "object"}}),
                    required=False,
                    not_found=True,
                    operation_id="disableFlag",
                    links={"enable": flag_link("enableFlag", "$response.body#/flag")},
                ),
                "parameters": [flag_path],
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Environment": obj(
                    {
                        "name": {"type": "string", "enum": ["canary", "staging", "production"]},
                        "traffic_percent": {"type": "number"},
                    },
                    ["name", "traffic_percent"],
                ),
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                },
            },
            "responses": {
                "Error": {
                    "description": "What was wrong; nothing changed",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        },
    }
