"""Django: one entry in ``MIDDLEWARE`` and a ``GATE_MIDDLEWARE`` setting.

::

    MIDDLEWARE = ["gate_middleware.integrations.django.GateMiddleware", ...]
    GATE_MIDDLEWARE = {
        "GATE": "myproject.rollout.gate",   # a PromotionGate, or its dotted path
        "SECRET": "...",                     # signs the session cookie
        "SECRET_FALLBACKS": ["old secret"],  # accepted, signed again with SECRET
        "EXCLUDE_PATHS": ["/healthz", "/static"],
    }

``SECRET`` defaults to a secret derived from ``SECRET_KEY`` (salted, as
Django's signing does), and ``SECRET_FALLBACKS`` to ``SECRET_KEY_FALLBACKS``'s.
Add ``"gate_middleware.integrations"`` to ``INSTALLED_APPS`` for the system
checks (``manage.py check`` reports a bad ``GATE`` path, an unknown key, a
missing or short secret) and the ``manage.py gate`` command (status,
promote, rollback, flags). ``gate_decision(request)`` is ``request.gate``,
typed.

``GATE_MIDDLEWARE`` may also be just the gate (or its dotted path). The
other keys are the options (``gate_middleware.web.lifecycle.LifecycleOptions``)
in capitals: ``COOKIE_NAME``, ``EXCLUDE_PATHS`` and the rest; callables may
be given as dotted paths. A ``session_key`` callable receives the
``HttpRequest``. A response that sets the cookie gets ``Vary: Cookie`` and
``Cache-Control: private``; with ``"CACHEABLE": "public"`` a response the
view marks ``Cache-Control: public`` gets neither, nor the cookie.

The admin API and dashboard mount as URL patterns (exclude their prefix
from the gate)::

    urlpatterns = [..., *admin_urls(gate, token=os.environ["GATE_ADMIN_TOKEN"], prefix="gate/")]

The decision is ``request.gate``, and also ``request.META["gate_middleware.decision"]``
under WSGI (the environ) and ``request.scope["state"]["gate"]`` under ASGI.
The middleware is sync- and async-capable: under ASGI with async views it
stays async. A streamed response is timed to its last chunk (or to its
``close()``, or, unread and unclosed, to when it is dropped).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import Token
from typing import Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.apps import AppConfig
    from django.conf import settings
    from django.core.checks import CheckMessage, Error, Tags, Warning, register
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
    from django.urls import URLPattern, re_path
    from django.utils.crypto import salted_hmac
    from django.utils.module_loading import import_string
    from django.views.decorators.csrf import csrf_exempt
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gate_middleware.integrations.django needs Django: pip install "gate-middleware[django]"'
    ) from exc

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.errors import ConfigError
from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.operate.admin import AdminAPI, AdminResponse, read_wsgi_body, wsgi_text
from gate_middleware.operate.operators import OperatorsLike
from gate_middleware.web import context
from gate_middleware.web.lifecycle import (
    OPTION_NAMES,
    GateRequest,
    RequestLifecycle,
    private_response_headers,
)
from gate_middleware.web.wsgi import DECISION_KEY

__all__ = ["GateConfig", "GateMiddleware", "admin_urls", "gate_decision"]

#: GATE_MIDDLEWARE's keys: each option's name in capitals.
_OPTIONS = {name.upper(): name for name in OPTION_NAMES}
_DOTTED = {"GATE", "SESSION_KEY", "IS_SUCCESS", "METER_PROVIDER"}
_EXCEPTION_KEY = "gate_middleware.exception"


MIN_SECRET_LENGTH = 32
_SECRET_SALT = "gate_middleware.session_cookie"


def derived_secret(secret_key: str | bytes) -> str:
    """The cookie secret derived from Django's ``SECRET_KEY``, salted as
    Django's own signing salts it, so it says nothing about the key itself."""
    return salted_hmac(
        _SECRET_SALT, "cookie secret", secret=secret_key, algorithm="sha256"
    ).hexdigest()


def gate_settings() -> tuple[PromotionGate | Rollouts, dict[str, Any]]:
    """The gate and ``RequestLifecycle`` options from ``settings.GATE_MIDDLEWARE``.

    ``SECRET`` (absent or ``None``) defaults to a secret derived from
    ``SECRET_KEY``, and ``SECRET_FALLBACKS`` to those of
    ``SECRET_KEY_FALLBACKS``: rotating Django's key rotates the cookie's.
    ``ConfigError`` names what is wrong.
    """
    raw = getattr(settings, "GATE_MIDDLEWARE", None)
    if raw is None:
        raise ConfigError(
            "GATE_MIDDLEWARE", None, "a setting naming the gate: {'GATE': 'myproject.rollout.gate'}"
        )
    values: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {"GATE": raw}
    unknown = sorted(set(values) - set(_OPTIONS) - {"GATE"})
    if unknown:
        raise ConfigError(
            f"GATE_MIDDLEWARE[{unknown[0]!r}]", values[unknown[0]], f"one of {['GATE', *_OPTIONS]}"
        )
    for key in _DOTTED & set(values):
        if isinstance(values[key], str):
            try:
                values[key] = import_string(values[key])
            except ImportError as exc:
                raise ConfigError(
                    f"GATE_MIDDLEWARE[{key!r}]", values[key], f"an importable dotted path ({exc})"
                ) from exc
    gate = values.pop("GATE", None)
    if not isinstance(gate, PromotionGate | Rollouts):
        raise ConfigError(
            "GATE_MIDDLEWARE['GATE']", gate, "a PromotionGate, Rollouts, or its dotted path"
        )
    try:
        secret_key = getattr(settings, "SECRET_KEY", None)
    except ImproperlyConfigured:  # an empty SECRET_KEY raises when read
        secret_key = None
    if values.get("SECRET") is None and secret_key:
        values["SECRET"] = derived_secret(secret_key)
        if "SECRET_FALLBACKS" not in values:
            fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", ())
            values["SECRET_FALLBACKS"] = [derived_secret(key) for key in fallbacks]
    return gate, {_OPTIONS[key]: value for key, value in values.items()}


def lifecycle_from_settings() -> RequestLifecycle:
    """Build the lifecycle from ``settings.GATE_MIDDLEWARE``."""
    gate, options = gate_settings()
    return RequestLifecycle(gate, **options)


def gate_decision(request: HttpRequest) -> RoutingDecision:
    """The request's decision (``request.gate``), typed for django-stubs.

    ``RuntimeError`` on a path the gate excludes or without the middleware.
    """
    decision = getattr(request, "gate", None)
    if not isinstance(decision, RoutingDecision):
        raise RuntimeError("no gate decision: an excluded path, or GateMiddleware is not installed")
    return decision


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """``manage.py check``: the ``GATE_MIDDLEWARE`` setting, before any request.

    - ``gate_middleware.E001``: the setting is missing, names no gate (a
      dotted path that does not import), or has an unknown key or a bad value.
    - ``gate_middleware.W001``: no ``SECRET`` and no ``SECRET_KEY``: the
      session cookie is not signed, so anyone can pick their bucket.
    - ``gate_middleware.W002``: a ``SECRET`` shorter than 32 characters.
    """
    middleware = "gate_middleware.integrations.django.GateMiddleware"
    configured = getattr(settings, "GATE_MIDDLEWARE", None) is not None
    if not configured and middleware not in getattr(settings, "MIDDLEWARE", ()):
        return []
    try:
        gate, options = gate_settings()
        RequestLifecycle(gate, **options)
    except (ConfigError, TypeError) as exc:
        return [
            Error(
                str(exc),
                hint="GATE_MIDDLEWARE = {'GATE': 'myproject.rollout.gate', ...}; "
                "see gate_middleware.integrations.django",
                id="gate_middleware.E001",
            )
        ]
    secret = options.get("secret")
    if secret is None:
        return [
            Warning(
                "The gate's session cookie is not signed: no GATE_MIDDLEWARE['SECRET'] "
                "and no SECRET_KEY to derive one from.",
                hint="Set SECRET_KEY (the secret is derived from it) or GATE_MIDDLEWARE['SECRET'].",
                id="gate_middleware.W001",
            )
        ]
    if len(secret) < MIN_SECRET_LENGTH:
        return [
            Warning(
                f"GATE_MIDDLEWARE['SECRET'] has {len(secret)} characters; "
                f"use at least {MIN_SECRET_LENGTH}.",
                hint="python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                id="gate_middleware.W002",
            )
        ]
    return []


class GateConfig(AppConfig):
    """``INSTALLED_APPS = [..., "gate_middleware.integrations"]``: the system
    checks and the ``manage.py gate`` command."""

    name = "gate_middleware.integrations"
    label = "gate_middleware"
    verbose_name = "gate-middleware"

    def ready(self) -> None:
        register(check_settings, Tags.security)


class GateMiddleware:
    """Django middleware: route, inject ``request.gate``, time and record."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.lifecycle = lifecycle_from_settings()
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        started = self._begin(request)
        if started is None:
            return self.get_response(request)
        gate_request, entered = started
        try:
            response = self.get_response(request)
        except BaseException as exc:
            self._failed(request, gate_request, entered, exc)
            raise
        return self._end(request, gate_request, entered, response)

    async def __acall__(self, request: HttpRequest) -> Any:
        started = self._begin(request)
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if started is None:
            return await get_response(request)
        gate_request, entered = started
        try:
            response = await get_response(request)
        except BaseException as exc:
            self._failed(request, gate_request, entered, exc)
            raise
        return self._end(request, gate_request, entered, response)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        # Django turns a view's exception into a 500 response before it
        # reaches us; keep it for the outcome's error.type.
        request.META[_EXCEPTION_KEY] = exception

    def _begin(
        self, request: HttpRequest
    ) -> tuple[GateRequest, Token[RoutingDecision | None]] | None:
        if self.lifecycle.is_excluded(request.path_info):
            return None
        meta = request.META
        gate_request = self.lifecycle.begin(
            method=request.method or "GET",
            cookie_header=meta.get("HTTP_COOKIE"),
            https=request.is_secure(),
            request=request,
            override_variant=meta.get("HTTP_X_GATE_VARIANT"),
            override_token=meta.get("HTTP_X_GATE_OVERRIDE_TOKEN"),
        )
        decision = gate_request.decision
        request.gate = decision  # type: ignore[attr-defined]
        scope = getattr(request, "scope", None)
        if isinstance(scope, dict):
            scope.setdefault("state", {})["gate"] = decision
        else:
            meta[DECISION_KEY] = decision
        return gate_request, context.enter(decision)

    def _failed(
        self,
        request: HttpRequest,
        gate_request: GateRequest,
        entered: Token[RoutingDecision | None],
        exc: BaseException,
    ) -> None:
        self.lifecycle.finish(gate_request, exception=exc, route=_route(request))
        context.leave(entered)

    def _end(
        self,
        request: HttpRequest,
        gate_request: GateRequest,
        entered: Token[RoutingDecision | None],
        response: HttpResponseBase,
    ) -> HttpResponseBase:
        context.leave(entered)
        if gate_request.cookie_value is not None and not self.lifecycle.leaves_cacheable(
            [("Cache-Control", response["Cache-Control"])] if "Cache-Control" in response else ()
        ):
            cookie = self.lifecycle.cookie
            response.set_cookie(
                cookie.name,
                gate_request.cookie_value,
                max_age=cookie.max_age,
                path="/",
                secure=cookie.secure_for(request.is_secure()),
                httponly=True,
                samesite="Lax",
            )
            _keep_from_shared_caches(response)
        gate_request.status = response.status_code
        exception = request.META.get(_EXCEPTION_KEY)
        route = _route(request)
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = self._timed(response, gate_request, exception, route)
        else:
            self.lifecycle.finish(gate_request, exception=exception, route=route)
        return response

    def _timed(
        self,
        response: StreamingHttpResponse,
        gate_request: GateRequest,
        exception: BaseException | None,
        route: str | None,
    ) -> Iterator[bytes] | AsyncIterator[bytes]:
        """The streamed body, recorded after its last chunk (or when closed early)."""
        if response.is_async:
            finish = self.lifecycle.finish
            source: Any = response.streaming_content

            async def timed_async() -> AsyncIterator[bytes]:
                error = exception
                try:
                    async for chunk in source:
                        yield chunk
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(gate_request, exception=error, route=route)

            return timed_async()

        sync_source: Iterator[bytes] = iter(response.streaming_content)  # type: ignore[arg-type]
        return _TimedStream(sync_source, self.lifecycle, gate_request, exception, route)


class _TimedStream:
    """A sync streamed body: recorded after its last chunk, at ``close()``
    (Django's ``response.close()`` calls it), or, neither read nor closed
    (a test client's unread response), when it is dropped. Not a
    generator: one never started runs no ``finally``."""

    def __init__(
        self,
        source: Iterator[bytes],
        lifecycle: RequestLifecycle,
        request: GateRequest,
        exception: BaseException | None,
        route: str | None,
    ) -> None:
        self._source = source
        self._lifecycle = lifecycle
        self._request = request
        self._error = exception
        self._route = route

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._source)
        except StopIteration:
            self._finish()
            raise
        except BaseException as exc:
            self._error = exc
            self._finish()
            raise

    def close(self) -> None:
        self._finish()

    def _finish(self) -> None:
        self._lifecycle.finish(self._request, exception=self._error, route=self._route)

    def __del__(self) -> None:
        if not self._request.finished:
            self._lifecycle.abandon(self._request, exception=self._error, route=self._route)


def _keep_from_shared_caches(response: HttpResponseBase) -> None:
    """The lifecycle's ``Vary``/``Cache-Control`` rule, on Django's one value per header name."""
    present = [(name, response[name]) for name in ("Vary", "Cache-Control") if name in response]
    values: dict[str, list[str]] = {"vary": [], "cache-control": []}
    for name, value in private_response_headers(present):
        values[name.lower()].append(value)
    response["Vary"] = ", ".join(values["vary"])
    response["Cache-Control"] = ", ".join(values["cache-control"])


def _route(request: HttpRequest) -> str | None:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    return route if isinstance(route, str) and route else None


def admin_urls(
    gate: PromotionGate | Rollouts,
    *,
    token: str | None = None,
    prefix: str = "gate/",
    token_name: str = "admin",
    operators: OperatorsLike = (),
    operators_file: str | os.PathLike[str] | None = None,
) -> list[URLPattern]:
    """URL patterns serving the admin API and dashboard under ``prefix``
    (the operators as ``AdminAPI`` takes them)."""
    api = AdminAPI(
        gate,
        token=token,
        token_name=token_name,
        operators=operators,
        operators_file=operators_file,
    )

    @csrf_exempt
    def admin(request: HttpRequest, path: str = "") -> HttpResponse:
        result = _admin_answer(api, request, path)
        response = HttpResponse(result.body, status=result.status, content_type=result.content_type)
        for name, value in result.all_headers():
            if name not in ("Content-Type", "Content-Length"):
                response[name] = value
        return response

    prefix = prefix.strip("/")
    return [re_path(rf"^{re.escape(prefix)}/(?P<path>.*)$", admin)]


def _admin_answer(api: AdminAPI, request: HttpRequest, path: str) -> AdminResponse:
    if (
        getattr(request, "scope", None) is None
        and "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    ):
        # Under WSGI Django reads a body without Content-Length as empty.
        body = read_wsgi_body(request.META)
        if isinstance(body, AdminResponse):
            return body
    else:
        body = request.body
    return api.handle(
        request.method or "GET",
        path,
        request.headers.get("Authorization"),
        body,
        request.headers.get("Content-Type"),
        wsgi_text(request.headers.get("X-Gate-Actor")),  # Django reads headers as Latin-1
        request.META.get("QUERY_STRING"),
    )
