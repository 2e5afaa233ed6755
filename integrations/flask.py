"""Flask: ``GateExtension(app, gate=gate)`` or ``GateExtension(gate=gate).init_app(app)``.

``init_app`` wraps ``app.wsgi_app`` in the core's ``GateWSGIMiddleware``
(so the timing covers the whole response, streamed bodies included) and,
before the app's other before-request functions, copies the decision to
``flask.g.gate`` and tells the middleware the matched URL rule (the
``http.route`` metric attribute). A ``session_key`` callable receives the
app's request object (``app.request_class(environ)``).

The options may come from ``app.config``, as Flask extensions do:
``GATE`` (the ``PromotionGate``) and ``GATE_`` + an option's name in
capitals (``GATE_SECRET``, ``GATE_EXCLUDE_PATHS``, ``GATE_COOKIE_NAME``,
...). Keyword arguments win over the config. A ``GATE_*`` key or a keyword
that is not an option is a ``TypeError`` naming it, when the extension is
built. The extension itself is ``app.extensions["gate_middleware"]`` (its
``.gate`` is the gate), and ``gate_decision()`` is the current request's
decision, typed.
"""

from __future__ import annotations

from typing import Any, Unpack, cast

try:
    from flask import Flask, current_app, g, request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gate_middleware.integrations.flask needs Flask: pip install "gate-middleware[flask]"'
    ) from exc

from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.errors import ConfigError
from gate_middleware.gate import PromotionGate, Rollouts
from gate_middleware.types import Environ, WSGIApp
from gate_middleware.web.lifecycle import OPTION_NAMES, LifecycleOptions, check_option_names
from gate_middleware.web.wsgi import DECISION_KEY, ROUTE_KEY, GateWSGIMiddleware

__all__ = ["GateExtension", "gate_decision"]

EXTENSION_KEY = "gate_middleware"
_CONFIG_KEYS = {f"GATE_{name.upper()}": name for name in OPTION_NAMES}


class _FlaskGateMiddleware(GateWSGIMiddleware):
    def __init__(self, app: WSGIApp, flask_app: Flask, **options: Any) -> None:
        super().__init__(app, **options)
        self._request_class = flask_app.request_class

    def session_key_input(self, environ: Environ) -> Any:
        return self._request_class(environ)


def _inject() -> None:
    g.gate = request.environ.get(DECISION_KEY)
    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule


def gate_decision() -> RoutingDecision:
    """The current request's decision (``flask.g.gate``), typed.

    ``RuntimeError`` outside a request, or on a path the gate excludes.
    """
    decision = g.get("gate")
    if not isinstance(decision, RoutingDecision):
        raise RuntimeError(
            "no gate decision: outside a request, on an excluded path, "
            "or the app has no GateExtension"
        )
    return decision


class GateExtension:
    """The Flask extension; ``gate`` and the options come from here, ``init_app`` or ``app.config``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        gate: PromotionGate | Rollouts | None = None,
        **options: Unpack[LifecycleOptions],
    ) -> None:
        check_option_names(options, "GateExtension()")
        self.gate = gate
        self.options = options
        #: The middleware around ``app.wsgi_app`` (of the last app initialised).
        self.middleware: GateWSGIMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        gate: PromotionGate | Rollouts | None = None,
        **options: Unpack[LifecycleOptions],
    ) -> None:
        check_option_names(options, "GateExtension.init_app()")
        configured: dict[str, Any] = {}
        for key, value in app.config.items():
            if key.startswith("GATE_"):
                if key not in _CONFIG_KEYS:
                    raise TypeError(
                        f"app.config[{key!r}] is not a gate option; "
                        f"the keys are GATE, {', '.join(_CONFIG_KEYS)}"
                    )
                configured[_CONFIG_KEYS[key]] = value
        if gate is None:
            gate = self.gate if self.gate is not None else app.config.get("GATE")
        if not isinstance(gate, PromotionGate | Rollouts):
            raise ConfigError(
                "gate",
                gate,
                "a PromotionGate (or Rollouts), given to GateExtension(), init_app() or app.config['GATE']",
            )
        self.gate = gate
        wsgi_app = cast(WSGIApp, app.wsgi_app)  # typeshed's StartResponse; the same protocol
        middleware = _FlaskGateMiddleware(
            wsgi_app, app, gate=gate, **{**configured, **self.options, **options}
        )
        self.middleware = middleware
        app.wsgi_app = middleware  # type: ignore[method-assign]
        # First of the app's before-request functions, so g.gate is there for
        # the others too. (A request_started receiver costs a signal dispatch.)
        app.before_request_funcs.setdefault(None, []).insert(0, _inject)
        app.extensions[EXTENSION_KEY] = self

    @staticmethod
    def of(app: Flask | None = None) -> GateExtension:
        """The extension of ``app`` (default: the current app)."""
        extension = (app or current_app).extensions.get(EXTENSION_KEY)
        if not isinstance(extension, GateExtension):
            raise RuntimeError("the app has no GateExtension: call GateExtension(app, gate=...)")
        return extension
