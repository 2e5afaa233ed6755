"""The request lifecycle, written once for every protocol and framework.

identify the session -> route (the decision goes on the active span) -> (inject: the caller) -> time -> classify the
outcome -> record it in the gate -> emit metrics.

``RequestLifecycle.begin`` does the first steps and returns a small
``GateRequest``; the caller puts ``request.decision`` where its framework
expects it and asks ``RequestLifecycle.response_headers`` for the response's
headers (the session cookie and the cache rule, or ``cacheable="public"``'s
way out); ``RequestLifecycle.finish`` does the rest, exactly once. The ASGI
and WSGI middlewares and the Django middleware only translate their protocol
into these calls.

A response that its client never finishes nor closes (a test client's
unread response) is recorded when it is dropped: ``RequestLifecycle.abandon``,
called from a finaliser, times it to then. A finaliser may run inside a
garbage collection that interrupted this very thread in the gate's own
locks, so an outcome dropped during a collection waits for the next
request's ``begin`` instead of taking them.

Fail open: an exception inside any step (routing, recording, metrics, a
user's ``session_key`` or ``is_success``) is caught, counted in
``gate_middleware.middleware.errors``, logged at most once a minute per
step, and the request is served on the stable path with the app's own
response. Only the app's own exceptions propagate, unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias, TypedDict, Unpack, cast

from opentelemetry.metrics import MeterProvider

from gate_middleware.domain.environment import Environment
from gate_middleware.domain.naming import TOKEN_EXPECTED, valid_token
from gate_middleware.domain.routing import STABLE, VARIANTS, RoutingDecision
from gate_middleware.errors import ConfigError
from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.web.metrics import RequestMetrics
from gate_middleware.web.session import SessionCookie
from gate_middleware.web.tracing import annotate_span

logger = logging.getLogger("gate_middleware")

SessionKey = Callable[[Any], "str | None"]
IsSuccess = Callable[[int | None, BaseException | None], bool]

OVERRIDE_VARIANT_HEADER = "x-gate-variant"
OVERRIDE_TOKEN_HEADER = "x-gate-override-token"
FAULT_LOG_INTERVAL_SECONDS = 60.0
COOKIE_MAX_AGE = 365 * 24 * 3600  # seconds: a year


class LifecycleOptions(TypedDict, total=False):
    """The options of the request lifecycle: the one list every adapter derives its own from.

    ``RequestLifecycle``, ``GateASGIMiddleware`` and ``GateWSGIMiddleware``
    (and so Starlette's and FastAPI's ``GateMiddleware``) take exactly these
    keywords; Flask's ``GateExtension`` too, or ``app.config["GATE_" + NAME]``;
    Django's ``GATE_MIDDLEWARE`` takes each as a key, the name in capitals.
    A type checker sees them (and a misspelt one) through Starlette's
    ``add_middleware``. Each option's default is in ``OPTION_DEFAULTS``.
    """

    #: The session cookie's name.
    cookie_name: str
    #: Signs the cookie with HMAC-SHA256 (at least 16 bytes); strongly recommended.
    secret: str | bytes | None
    #: Previous secrets: their cookies are accepted and signed again with
    #: ``secret``, so a rotation moves nobody.
    secret_fallbacks: Iterable[str | bytes]
    #: The cookie's ``Max-Age`` in seconds (``None``: a browser-session cookie).
    cookie_max_age: int | None
    #: ``Secure`` on the cookie (``None``: on for https requests).
    cookie_secure: bool | None
    #: Derives the identity from the framework's request (a user id, the
    #: framework's own session); returning ``None`` falls back to the cookie.
    session_key: SessionKey | None
    #: Enables the QA override: a request that sends ``X-Gate-Variant: canary``
    #: (or ``stable``) with ``X-Gate-Override-Token: <token>`` is served that
    #: variant. Without a configured token the headers are ignored: nobody
    #: picks the canary.
    override_token: str | None
    #: ``is_success(status, exception) -> bool``, the outcome rule (``None``:
    #: no exception and a status below 500).
    is_success: IsSuccess | None
    #: Path prefixes neither routed nor counted (health checks, static files,
    #: the metrics endpoint): ``"/healthz"`` excludes ``/healthz`` and ``/healthz/...``.
    exclude_paths: Iterable[str]
    #: ``"public"``: a response the app marks ``Cache-Control: public`` (and
    #: not ``private`` or ``no-store``) gets no session cookie and keeps its
    #: ``Cache-Control`` and ``Vary``, so shared caches may store it and
    #: serve it to anyone. ``None``: every response that sets the cookie is
    #: made private. Such a response must not depend on the variant.
    cacheable: Literal["public"] | None
    #: Receives the request instruments (``None``: the global one).
    meter_provider: MeterProvider | None


#: Each option's value when it is not given (mypy checks each against its
#: declared type; tests/web/test_options.py that every option has one).
OPTION_DEFAULTS: Final[LifecycleOptions] = {
    "cookie_name": "gate_session",
    "secret": None,
    "secret_fallbacks": (),
    "cookie_max_age": COOKIE_MAX_AGE,
    "cookie_secure": None,
    "session_key": None,
    "override_token": None,
    "is_success": None,
    "exclude_paths": (),
    "cacheable": None,
    "meter_provider": None,
}

#: The options' names, in their declared order.
OPTION_NAMES: Final[tuple[str, ...]] = tuple(OPTION_DEFAULTS)

#: ``cacheable``'s values besides ``None``.
CACHEABLE_VALUES: Final[tuple[str, ...]] = ("public",)


def check_option_names(names: Iterable[str], where: str) -> None:
    """A ``TypeError`` naming the first option that is not one of ``OPTION_NAMES``."""
    for name in names:
        if name not in OPTION_NAMES:
            raise TypeError(
                f"{where} got an unexpected option {name!r}; the options are {', '.join(OPTION_NAMES)}"
            )


def default_is_success(status: int | None, exception: BaseException | None) -> bool:
    """No exception and a status below 500."""
    return exception is None and status is not None and status < 500


class GateRequest:
    """One request's trip through the lifecycle."""

    __slots__ = (
        "decision",
        "session_id",
        "cookie_value",
        "set_cookie",
        "method",
        "started",
        "status",
        "finished",
        "scheme",
    )

    def __init__(
        self,
        decision: RoutingDecision,
        session_id: str,
        cookie_value: str | None,
        set_cookie: str | None,
        method: str,
        started: float,
        scheme: str = "http",
    ) -> None:
        self.decision = decision
        self.session_id = session_id
        #: The new cookie's value, and the whole ``Set-Cookie`` header value,
        #: when an id was minted for this request.
        self.cookie_value = cookie_value
        self.set_cookie = set_cookie
        self.method = method
        self.started = started
        self.status: int | None = None
        self.finished = False
        self.scheme = scheme


#: ``[True]`` while the garbage collector runs (its finalisers included).
_collecting = [False]


def _note_collection(phase: str, info: dict[str, int]) -> None:
    _collecting[0] = phase == "start"


gc.callbacks.append(_note_collection)

_UNSIGNED_WARNED: set[str] = set()


def _warn_unsigned_once(cookie_name: str) -> None:
    """Say once per cookie name that its value is the bare session id."""
    if cookie_name in _UNSIGNED_WARNED:
        return
    _UNSIGNED_WARNED.add(cookie_name)
    logger.warning(
        "gate-middleware: the %r cookie is not signed (no secret and no session_key): a "
        "visitor can choose their own session id and, by trying ids, the canary. Pass "
        "secret= (at least 16 bytes) or session_key=",
        cookie_name,
    )


class RequestLifecycle:
    """Identify, route, time, classify, record and emit, for one gate.

    Its options are ``LifecycleOptions`` (what each one is) with the
    defaults of ``OPTION_DEFAULTS``; an unknown one is a ``TypeError``
    naming it. ``clock`` is for tests: it times the requests. ``gate`` is
    one rollout's ``PromotionGate`` or several rollouts' ``Rollouts``: each
    request is then routed and recorded in every rollout, and its metrics
    carry each rollout's own decision.
    """

    def __init__(
        self,
        gate: PromotionGate | Rollouts,
        *,
        clock: Callable[[], float] = time.perf_counter,
        **options: Unpack[LifecycleOptions],
    ) -> None:
        check_option_names(options, "RequestLifecycle()")
        given = OPTION_DEFAULTS | options
        session_key = given["session_key"]
        is_success = given["is_success"]
        override_token = given["override_token"]
        secret = given["secret"]
        cookie_name = given["cookie_name"]
        # Read untyped: the compiled build checks a typed read's type, and a
        # misspelt value (True, ["public"]) must be a ConfigError, not a TypeError.
        cacheable = cast(Mapping[str, object], given).get("cacheable")
        if not isinstance(gate, PromotionGate | Rollouts):
            raise ConfigError("gate", gate, "a PromotionGate, or Rollouts for several rollouts")
        if session_key is not None and not callable(session_key):
            raise ConfigError(
                "session_key", session_key, "None or a callable(request) -> str | None"
            )
        if is_success is not None and not callable(is_success):
            raise ConfigError(
                "is_success", is_success, "None or a callable(status, exception) -> bool"
            )
        if override_token is not None and not valid_token(override_token):
            raise ConfigError("override_token", "<hidden>", f"None or {TOKEN_EXPECTED}")
        if cacheable is not None and cacheable not in CACHEABLE_VALUES:
            raise ConfigError(
                "cacheable",
                cacheable,
                "None or 'public' (a response marked Cache-Control: public stays cacheable)",
            )
        self.gate = gate
        self.cookie = SessionCookie(
            name=cookie_name,
            secret=secret,
            secret_fallbacks=given["secret_fallbacks"],
            max_age=given["cookie_max_age"],
            secure=given["cookie_secure"],
        )
        self._session_key = session_key
        #: Whether begin() needs the framework's request (for ``session_key``).
        self.wants_request = session_key is not None
        self._override_token = None if override_token is None else override_token.encode("utf-8")
        self._is_success = is_success or default_is_success
        self.exclude_paths = self._prefixes(given["exclude_paths"])
        #: Whether a response marked ``Cache-Control: public`` is left cacheable.
        self.cacheable_public = cacheable == "public"
        self.metrics = RequestMetrics(gate.name, given["meter_provider"])
        self._meter_provider = given["meter_provider"]
        #: Each rollout's request instruments, under ``Rollouts``.
        self._rollout_metrics: dict[str, RequestMetrics] = {}
        self._clock = clock
        self._fault_logged: dict[str, float] = {}
        if secret is None and session_key is None:
            _warn_unsigned_once(cookie_name)

    @staticmethod
    def _prefixes(paths: Iterable[str]) -> tuple[str, ...]:
        if isinstance(paths, str):
            raise ConfigError(
                "exclude_paths", paths, "a list of path prefixes such as ['/healthz']"
            )
        prefixes = tuple(paths)
        for path in prefixes:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError("exclude_paths", path, "path prefixes that start with '/'")
        return tuple(p.rstrip("/") or "/" for p in prefixes)

    def is_excluded(self, path: str) -> bool:
        for prefix in self.exclude_paths:
            if path == prefix or path.startswith(prefix + "/") or prefix == "/":
                return True
        return False

    # -- begin: identify and route ----------------------------------------

    def begin(
        self,
        *,
        method: str,
        cookie_header: str | None,
        https: bool,
        request: Any,
        override_variant: str | None = None,
        override_token: str | None = None,
        set_cookie: bool = True,
    ) -> GateRequest:
        """Identify the session and route it; never raises."""
        if _abandoned:
            _record_abandoned()
        started = self._clock()
        scheme = "https" if https else "http"
        try:
            session_id, needs_cookie = self._identify(cookie_header, request)
        except Exception as exc:
            stage = "session_key" if self._session_key is not None else "session_cookie"
            decision = self.fail_open(stage, exc)
            return GateRequest(decision, "", None, None, method, started, scheme)
        value = header = None
        try:
            if needs_cookie and set_cookie:
                value = self.cookie.value_for(session_id)
                header = self.cookie.set_cookie_header(value, https)
            decision = self.gate.route_request(session_id)
            expected = self._override_token
            if override_variant is not None and expected is not None:
                decision = self._override(decision, override_variant, override_token, expected)
        except Exception as exc:
            decision = self.fail_open("route", exc)
        try:
            annotate_span(decision, decision.rollout or self.gate.name)
        except Exception as exc:
            self.report_fault("trace", exc)
        return GateRequest(decision, session_id, value, header, method, started, scheme)

    def _identify(self, cookie_header: str | None, request: Any) -> tuple[str, bool]:
        """(session id, whether the response sets the cookie: a new id, or an
        old secret's signature to replace)."""
        if self._session_key is not None:
            key = self._session_key(request)
            if key is not None:
                return str(key), False
        session_id, sign_again = self.cookie.read_and_check(cookie_header)
        if session_id is not None:
            return session_id, sign_again
        return self.cookie.mint(), True

    def _override(
        self, decision: RoutingDecision, variant: str, token: str | None, expected: bytes
    ) -> RoutingDecision:
        if token is None or variant not in VARIANTS:
            return decision
        if not hmac.compare_digest(expected, token.encode("utf-8", "replace")):
            return decision
        reason = f"override: {variant} requested with the QA token"
        gate = self.gate
        if isinstance(gate, Rollouts):  # every rollout's variant, each with its own bucket
            return gate.override(decision, variant, reason)
        return gate.decision_for_variant(variant, bucket=decision.bucket, reason=reason)

    def fail_open(self, stage: str, exc: BaseException) -> RoutingDecision:
        """Count and log the fault, and return the stable path's decision."""
        self.report_fault(stage, exc)
        reason = f"fail open: {stage} raised {type(exc).__name__}"
        try:
            return self.gate.decision_for_variant(STABLE, reason=reason)
        except Exception:
            return RoutingDecision(False, Environment.PRODUCTION, (), -1, reason)

    def report_fault(self, stage: str, exc: BaseException) -> None:
        """Count a fault always; log it at most once a minute per stage."""
        with contextlib.suppress(Exception):  # the metrics pipeline may be what failed
            self.metrics.count_error(stage)
        now = time.monotonic()
        last = self._fault_logged.get(stage)
        if last is None or now - last >= FAULT_LOG_INTERVAL_SECONDS:
            self._fault_logged[stage] = now
            logger.error(
                "gate-middleware failed open in %s; the request is served on the stable path",
                stage,
                exc_info=exc,
            )

    # -- finish: time, classify, record, emit --------------------------------

    def finish(
        self,
        request: GateRequest,
        *,
        status: int | None = None,
        exception: BaseException | None = None,
        route: str | None = None,
        ended: float | None = None,
    ) -> None:
        """Record the request's outcome once (later calls do nothing); never raises.

        ``route`` is the matched route's template; ``None`` or ``""`` (no
        route matched: a 404) leaves ``http.route`` out, as OpenTelemetry's
        HTTP conventions ask. ``ended``: the clock's reading when the
        response ended (default: now).
        """
        if request.finished:
            return
        request.finished = True
        if not route or not isinstance(route, str):
            route = None
        duration = (self._clock() if ended is None else ended) - request.started
        if duration < 0.0:
            duration = 0.0
        if status is None:
            status = request.status
            if status is None and isinstance(exception, Exception):
                status = 500  # raised before responding: the server answers 500
        is_success = self._is_success
        if is_success is default_is_success:  # the common case, without a call
            success = exception is None and status is not None and status < 500
        else:
            try:
                success = bool(is_success(status, exception))
            except Exception as exc:
                self.report_fault("is_success", exc)
                success = default_is_success(status, exception)
        decision = request.decision
        gate = self.gate
        if isinstance(gate, Rollouts):
            self._finish_rollouts(gate, request, status, exception, route, duration, success)
            return
        try:
            gate.record_outcome(
                decision.variant,
                success,
                duration,
                decision.step,
                decision.bucket,
                route,
                decision.sample,
            )
        except Exception as exc:
            self.report_fault("record", exc)
        if self.metrics.enabled:  # False for the no-op meter: nothing would be seen
            try:
                self.metrics.record(
                    decision, request.method, status, route, exception, duration, request.scheme
                )
            except Exception as exc:
                self.report_fault("metrics", exc)

    def _finish_rollouts(
        self,
        rollouts: Rollouts,
        request: GateRequest,
        status: int | None,
        exception: BaseException | None,
        route: str | None,
        duration: float,
        success: bool,
    ) -> None:
        """``finish`` under several rollouts: the outcome in each, with each one's decision."""
        decision = request.decision
        try:
            rollouts.record_decision(decision, success, duration, route)
        except Exception as exc:
            self.report_fault("record", exc)
        if not self.metrics.enabled:
            return
        try:
            method, scheme = request.method, request.scheme
            for part in decision.parts or (decision,):
                gate = rollouts.get(part.rollout)
                if gate is not None and not gate.retired:  # a retired rollout serves nothing
                    self._metrics_of(part.rollout).record(
                        part, method, status, route, exception, duration, scheme, timed=False
                    )
            # One histogram point per request, under the set's name: the
            # point is the SDK's dearest call (see web.metrics).
            self.metrics.record(
                decision, method, status, route, exception, duration, scheme, counted=False
            )
        except Exception as exc:
            self.report_fault("metrics", exc)

    def _metrics_of(self, rollout: str) -> RequestMetrics:
        metrics = self._rollout_metrics.get(rollout)
        if metrics is None:
            metrics = self._rollout_metrics[rollout] = RequestMetrics(rollout, self._meter_provider)
        return metrics

    def abandon(
        self,
        request: GateRequest,
        *,
        exception: BaseException | None = None,
        route: str | None = None,
    ) -> None:
        """Record the outcome of a response dropped unfinished and unclosed
        (by a client that never closes it: a test client's unread response),
        timed to now; a finaliser calls it. Never raises, and records once.

        During a garbage collection the collector may have interrupted this
        thread anywhere, the gate's own locks held: the outcome then waits
        for the next request's ``begin``.
        """
        try:
            if request.finished:
                return
            ended = self._clock()
            if _collecting[0]:
                _abandoned.append((self, request, exception, route, ended))
                return
            self.finish(request, exception=exception, route=route, ended=ended)
        except Exception as exc:  # a finaliser must not raise
            with contextlib.suppress(Exception):
                self.report_fault("record", exc)

    # -- the response's headers: the session cookie and the cache rule --------

    def leaves_cacheable(self, headers: Iterable[Any], *, raw: bool = False) -> bool:
        """Whether a response with ``headers`` gets no session cookie and keeps
        its caching headers: ``cacheable="public"`` and the app marked it
        ``Cache-Control: public`` (neither ``private`` nor ``no-store``)."""
        return self.cacheable_public and marked_public(headers, raw=raw)

    def response_headers(
        self, request: GateRequest, headers: Iterable[Any], *, raw: bool = False
    ) -> list[tuple[Any, Any]] | None:
        """The response's headers with the session cookie added, made
        private (``private_response_headers``); ``None`` when they stay as
        the app sent them: no cookie to set, or a response left cacheable
        (``leaves_cacheable``), which then sets no cookie (the next
        response that is not cacheable does). ``raw``: ASGI's byte strings."""
        set_cookie = request.set_cookie
        if set_cookie is None:
            return None
        if self.cacheable_public:
            headers = list(headers)  # read twice
            if marked_public(headers, raw=raw):
                return None
        result = private_response_headers(headers, raw=raw)
        if raw:
            result.append((b"set-cookie", set_cookie.encode("latin-1")))
        else:
            result.append(("Set-Cookie", set_cookie))
        return result


#: Outcomes dropped during a garbage collection, for the next ``begin`` of
#: any lifecycle (the one they belong to may be gone: each of Django's test
#: clients builds its own middleware).
_Dropped: TypeAlias = tuple[RequestLifecycle, GateRequest, BaseException | None, str | None, float]
_abandoned: deque[_Dropped] = deque()


def _record_abandoned() -> None:
    while True:
        try:
            lifecycle, request, exception, route, ended = _abandoned.popleft()
        except IndexError:
            return
        lifecycle.finish(request, exception=exception, route=route, ended=ended)


def marked_public(headers: Iterable[Any], *, raw: bool = False) -> bool:
    """Whether ``headers`` say ``Cache-Control: public`` and neither
    ``private`` nor ``no-store`` (every ``Cache-Control`` header, together)."""
    cache_control = b"cache-control" if raw else "cache-control"
    directives: set[str] = set()
    for name, value in headers:
        if name.lower() == cache_control:
            text = value.decode("latin-1") if raw else value
            directives.update(d.split("=", 1)[0].strip().lower() for d in text.split(","))
    return "public" in directives and not directives & {"private", "no-store"}


def private_response_headers(headers: Iterable[Any], *, raw: bool = False) -> list[tuple[Any, Any]]:
    """``headers`` made fit for a response that sets the session cookie: the
    one rule of every adapter (Django's one value per name joins the result).

    Its body depends on the variant and it carries the visitor's cookie, so
    a shared cache must not store it: ``Vary: Cookie`` (as Django's session
    middleware adds) and ``Cache-Control: private`` (``public`` dropped;
    ``no-store`` or ``private`` already there are kept). ``raw``: ASGI's
    headers, byte strings with lower-case names; only ``Vary`` and
    ``Cache-Control`` are decoded. The headers are typed ``Any``: an app may
    send tuples or lists, and the compiled build checks annotated types at
    run time.
    """
    vary, cache_control = (b"vary", b"cache-control") if raw else ("vary", "cache-control")
    result: list[tuple[Any, Any]] = []
    varies = controlled = False
    for name, value in headers:
        lower = name.lower()
        if lower == vary:
            varies = varies or _varies_by_cookie(value.decode("latin-1") if raw else value)
        elif lower == cache_control:
            controlled = True
            if raw:
                value = _private_cache_control(value.decode("latin-1")).encode("latin-1")
            else:
                value = _private_cache_control(value)
        result.append((name, value))
    if not varies:
        result.append((b"vary", b"Cookie") if raw else ("Vary", "Cookie"))
    if not controlled:
        result.append((b"cache-control", b"private") if raw else ("Cache-Control", "private"))
    return result


def _varies_by_cookie(vary: str) -> bool:
    tokens = {token.strip().lower() for token in vary.split(",")}
    return "cookie" in tokens or "*" in tokens


def _private_cache_control(value: str) -> str:
    directives = [d.strip() for d in value.split(",") if d.strip()]
    names = {d.split("=", 1)[0].strip().lower() for d in directives}
    if names & {"private", "no-store"}:
        return value
    kept = [d for d in directives if d.split("=", 1)[0].strip().lower() != "public"]
    return ", ".join(["private", *kept])
