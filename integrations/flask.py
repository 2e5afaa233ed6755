"""Flask: ``GateExtension(gate=gate).init_app(app)``.

``init_app`` wraps ``app.wsgi_app`` in the core's ``GateWSGIMiddleware``
(so the timing covers the whole response, streamed bodies included, until
the server closes it) and, before the app's other before-request functions,
copies the decision to ``flask.g.gate`` and tells the middleware the matched URL rule (the
``http.route`` metric attribute). A ``session_key`` callable receives the
app's request object (``app.request_class(environ)``).
"""

from __future__ import annotations

from typing import Any

try:
    from flask import Flask, g, request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gate_middleware.integrations.flask needs Flask: pip install "gate-middleware[flask]"'
    ) from exc

from gate_middleware.errors import ConfigError
from gate_middleware.gate import PromotionGate
from gate_middleware.types import Environ, WSGIApp
from gate_middleware.wsgi import DECISION_KEY, ROUTE_KEY, GateWSGIMiddleware

__all__ = ["GateExtension"]


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


class GateExtension:
    """The Flask extension; ``gate`` and the options may be given here or to ``init_app``."""

    def __init__(
        self, app: Flask | None = None, *, gate: PromotionGate | None = None, **options: Any
    ) -> None:
        self.gate = gate
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, gate: PromotionGate | None = None, **options: Any) -> None:
        gate = gate or self.gate
        if gate is None:
            raise ConfigError(
                "gate", None, "a PromotionGate, given to GateExtension() or init_app()"
            )
        middleware = _FlaskGateMiddleware(
            app.wsgi_app, app, gate=gate, **{**self.options, **options}
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        # First of the app's before-request functions, so g.gate is there for
        # the others too. (A request_started receiver costs a signal dispatch.)
        app.before_request_funcs.setdefault(None, []).insert(0, _inject)
        app.extensions["gate_middleware"] = middleware
