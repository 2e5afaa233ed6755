"""The admin API: watch and steer a rollout over HTTP, from inside the app.

One implementation (``AdminAPI``) behind an ASGI app (``AdminASGIApp``) and
a WSGI app (``AdminWSGIApp``), mounted at a path of the user's choice.
Every JSON endpoint requires ``Authorization: Bearer <token>``; without a
configured token the admin app refuses to start. Bad requests get a 4xx
with a JSON error (``{"error": ..., "field": ...}``) and change nothing; a
promotion, traffic change or rollback that the gate refuses answers 409
with the gate's reason.

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
=======  ==========================  ===================================================
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from gate_middleware.environment import Environment
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.gate import PromotionGate
from gate_middleware.types import Environ, Receive, Scope, Send, StartResponse

MAX_BODY_BYTES = 64 * 1024
_FLAG_PATH = re.compile(r"/flags/([^/]+)/(enable|disable)")


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


class AdminAPI:
    """Routes admin requests to the gate; knows no protocol."""

    def __init__(self, gate: PromotionGate, *, token: str | None) -> None:
        if not isinstance(gate, PromotionGate):
            raise ConfigError("gate", gate, "a PromotionGate")
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigError(
                "token",
                "<hidden>" if isinstance(token, str) else token,
                "a bearer token of at least 16 characters: the admin API refuses to start without one",
            )
        self.gate = gate
        self._token = token.encode("utf-8")
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any]], AdminResponse]] = {
            ("GET", "/status"): self._status,
            ("GET", "/history"): self._history,
            ("GET", "/openapi.json"): self._openapi,
            ("POST", "/promote"): self._promote,
            ("POST", "/traffic"): self._traffic,
            ("POST", "/canary"): self._canary,
            ("POST", "/rollback"): self._rollback,
        }

    def handle(
        self, method: str, path: str, authorization: str | None, body: bytes | None
    ) -> AdminResponse:
        """Answer one request; never raises for anything the client sent."""
        path = "/" + path.strip("/") if path.strip("/") else "/"
        if path == "/" and method in ("GET", "HEAD"):
            return AdminResponse(200, dashboard_html(), "text/html; charset=utf-8")
        if not self._authorized(authorization):
            return _error(401, "a valid 'Authorization: Bearer <token>' header is required")
        try:
            handler, args = self._route(method, path)
            payload = self._payload(method, body)
            return handler({**payload, **args})
        except _BadRequest as exc:
            return _error(exc.status, str(exc), exc.field)
        except ConfigError as exc:
            return _error(400, str(exc), exc.field)
        except PromotionError as exc:
            return _error(409, str(exc))

    def _authorized(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        presented = authorization[len("Bearer ") :].strip().encode("utf-8", "replace")
        return hmac.compare_digest(presented, self._token)

    def _route(
        self, method: str, path: str
    ) -> tuple[Callable[[dict[str, Any]], AdminResponse], dict[str, Any]]:
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
    def _payload(method: str, body: bytes | None) -> dict[str, Any]:
        if method != "POST" or not body:
            return {}
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequest(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
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

    def _status(self, payload: dict[str, Any]) -> AdminResponse:
        status = self.gate.status().to_dict()
        status["series"] = [sample.to_dict() for sample in self.gate.get_health_series()]
        return _json(200, status)

    def _history(self, payload: dict[str, Any]) -> AdminResponse:
        return _json(200, {"events": [event.to_dict() for event in self.gate.get_history()]})

    def _openapi(self, payload: dict[str, Any]) -> AdminResponse:
        return _json(200, openapi_document())

    def _promote(self, payload: dict[str, Any]) -> AdminResponse:
        self._only(payload, "target", "force")
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
        environment = self.gate.promote(Environment.from_name(target_name), force=force)
        return _json(200, {"environment": environment.to_dict()})

    def _traffic(self, payload: dict[str, Any]) -> AdminResponse:
        self._only(payload, "percent")
        environment = self.gate.set_traffic_percent(self._required(payload, "percent"))
        return _json(200, {"environment": environment.to_dict()})

    def _canary(self, payload: dict[str, Any]) -> AdminResponse:
        self._only(payload, "percent", "flags")
        flags = payload.get("flags", [])
        if not isinstance(flags, list):
            raise ConfigError("flags", flags, "a list of flag names")
        environment = self.gate.start_canary(self._required(payload, "percent"), flags)
        return _json(200, {"environment": environment.to_dict()})

    def _rollback(self, payload: dict[str, Any]) -> AdminResponse:
        self._only(payload, "reason")
        event = self.gate.rollback(self._required(payload, "reason"))
        return _json(200, {"event": event.to_dict()})

    def _enable(self, payload: dict[str, Any]) -> AdminResponse:
        self.gate.enable_feature(payload["name"])
        return _json(200, {"flag": payload["name"], "enabled": True})

    def _disable(self, payload: dict[str, Any]) -> AdminResponse:
        event = self.gate.disable_feature(payload["name"])
        return _json(200, {"flag": payload["name"], "enabled": False, "event": event.to_dict()})


class AdminASGIApp:
    """The admin API as an ASGI app: ``Mount("/gate", AdminASGIApp(gate, token=...))``."""

    def __init__(self, gate: PromotionGate, *, token: str | None) -> None:
        self.api = AdminAPI(gate, token=token)

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
        authorization = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        # A handler may wait on the shared store (Redis): never on the event loop.
        response = await asyncio.to_thread(
            self.api.handle, scope.get("method", "GET"), path, authorization, body
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


class AdminWSGIApp:
    """The admin API as a WSGI app (mount it with werkzeug's ``DispatcherMiddleware``)."""

    def __init__(self, gate: PromotionGate, *, token: str | None) -> None:
        self.api = AdminAPI(gate, token=token)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = (
            environ["wsgi.input"].read(min(max(length, 0), MAX_BODY_BYTES + 1)) if length else b""
        )
        response = self.api.handle(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", "/"),
            environ.get("HTTP_AUTHORIZATION"),
            body,
        )
        reason = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            405: "Method Not Allowed",
            409: "Conflict",
            413: "Content Too Large",
        }
        start_response(
            f"{response.status} {reason.get(response.status, 'Error')}", response.all_headers()
        )
        return [response.body]


_DASHBOARD: bytes | None = None


def dashboard_html() -> bytes:
    """The self-contained dashboard page (shipped in the package, no CDN)."""
    global _DASHBOARD
    if _DASHBOARD is None:
        _DASHBOARD = resources.files("gate_middleware").joinpath("dashboard.html").read_bytes()
    return _DASHBOARD


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the admin API."""
    error = {"$ref": "#/components/responses/Error"}
    environment_result = {
        "description": "The gate's new environment",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["environment"],
                    "properties": {"environment": {"$ref": "#/components/schemas/Environment"}},
                }
            }
        },
    }

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def post(summary: str, request: dict[str, Any] | None, ok: dict[str, Any]) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": ok, "400": error, "401": error, "409": error},
        }
        if request is not None:
            operation["requestBody"] = body(request)
        return {"post": operation}

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
    flag_path = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "gate-middleware admin API", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/status": {
                "get": {
                    "summary": "Environment, traffic, flags, health, SLO, recent events",
                    "responses": {"200": any_object, "401": error},
                }
            },
            "/history": {
                "get": {
                    "summary": "Every event, oldest first",
                    "responses": {"200": any_object, "401": error},
                }
            },
            "/promote": post(
                "Promote the release",
                obj(
                    {
                        "target": {"type": "string", "enum": ["staging", "production"]},
                        "force": {"type": "boolean", "default": False},
                    },
                    [],
                ),
                environment_result,
            ),
            "/traffic": post(
                "Ramp the canary",
                obj({"percent": {"type": "number", "minimum": 0, "maximum": 100}}, ["percent"]),
                environment_result,
            ),
            "/canary": post(
                "Start the next release from production",
                obj(
                    {
                        "percent": {"type": "number", "minimum": 0, "maximum": 100},
                        "flags": {"type": "array", "items": {"type": "string"}},
                    },
                    ["percent"],
                ),
                environment_result,
            ),
            "/rollback": post(
                "Roll the release back",
                obj({"reason": {"type": "string", "minLength": 1, "maxLength": 1000}}, ["reason"]),
                any_object,
            ),
            "/flags/{name}/enable": {
                **post("Turn a flag on", None, any_object),
                "parameters": [flag_path],
            },
            "/flags/{name}/disable": {
                **post("Take a flag from every session", None, any_object),
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
