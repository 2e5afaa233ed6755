"""Framework adapters for gate-middleware, installed as ``gate_middleware.integrations``.

- ``gate_middleware.integrations.starlette.GateMiddleware`` (Starlette and
  FastAPI; also ``gate_middleware.integrations.fastapi``):
  ``app.add_middleware(GateMiddleware, gate=gate)``; ``request.state.gate``,
  ``gate_decision(request)``; FastAPI's ``GateDecision`` dependency.
- ``gate_middleware.integrations.flask.GateExtension``:
  ``GateExtension(app, gate=gate)`` (or ``GATE_*`` in ``app.config``);
  ``flask.g.gate``, ``gate_decision()``.
- ``gate_middleware.integrations.django.GateMiddleware``: one entry in
  ``MIDDLEWARE`` and a ``GATE_MIDDLEWARE`` setting; ``request.gate``,
  ``gate_decision(request)``; ``"gate_middleware.integrations"`` in
  ``INSTALLED_APPS`` for the system checks and ``manage.py gate``.

Each adapter only translates its framework's details into the core's
``GateASGIMiddleware``, ``GateWSGIMiddleware`` or ``RequestLifecycle``.
Importing this package imports no framework.
"""
