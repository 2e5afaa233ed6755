"""The admin API mounted in each framework: the README's "Admin API" and
"Operators and roles" blocks, completed.

Run:  GATE_ADMIN_TOKEN=... python examples/admin_api.py   (then
      curl -H "Authorization: Bearer $GATE_ADMIN_TOKEN" http://127.0.0.1:8000/gate/status)

``app`` is a Starlette app with the admin API at ``/gate`` (FastAPI mounts it
the same way), ``flask_app`` a Flask app with it at ``/gate``, ``urlpatterns``
a Django URLconf with it under ``gate/``, and ``create_team_app()`` builds a
Starlette app whose admin API has named operators with roles.
GATE_ADMIN_TOKEN (and, for the team's app, GATE_ONCALL_TOKEN) are bearer
tokens of at least 16 characters; GATE_SECRET, if set, signs the session
cookie. ``tests/system/test_readme.py`` builds every app here and asks each
for ``/gate/status``.
"""

import os

from django.http import HttpRequest, JsonResponse
from django.urls import path
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.integrations.django import admin_urls, gate_decision
from gate_middleware.integrations.flask import GateExtension
from gate_middleware.integrations.starlette import GateMiddleware
from gate_middleware.operate.admin import AdminASGIApp, AdminWSGIApp
from gate_middleware.operate.operators import Operator

# One process: an in-memory gate (several workers share one through a store:
# see the README's "Many workers, many replicas").
gate = PromotionGate(
    PromotionConfig(
        name="checkout",
        environment=Environment.canary(10.0),
        feature_flags=["new_checkout_flow"],
    )
)
TOKEN = os.environ["GATE_ADMIN_TOKEN"]
SECRET = os.environ.get("GATE_SECRET")


async def checkout(request: Request) -> JSONResponse:
    return JSONResponse({"variant": request.state.gate.variant})


# Starlette / FastAPI
app = Starlette(routes=[Route("/checkout", checkout)])
app.add_middleware(GateMiddleware, gate=gate, secret=SECRET, exclude_paths=["/gate"])
app.mount("/gate", AdminASGIApp(gate, token=os.environ["GATE_ADMIN_TOKEN"]))

# Flask
flask_app = Flask(__name__)
flask_app.config.update(GATE=gate, GATE_SECRET=SECRET, GATE_EXCLUDE_PATHS=["/gate"])
GateExtension(flask_app)
flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    flask_app.wsgi_app, {"/gate": AdminWSGIApp(gate, token=TOKEN)}
)


# Django (urls.py)
def django_checkout(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"variant": gate_decision(request).variant})


urlpatterns = [path("checkout", django_checkout)]
urlpatterns += admin_urls(gate, token=TOKEN, prefix="gate/")


def create_team_app() -> Starlette:
    """Operators and roles: a token each, with the least role it needs."""
    team_app = Starlette(routes=[Route("/checkout", checkout)])
    team_app.add_middleware(GateMiddleware, gate=gate, secret=SECRET, exclude_paths=["/gate"])
    team_app.mount(
        "/gate",
        AdminASGIApp(
            gate,
            operators=[
                # gate-middleware hash-token < alice.token
                Operator(
                    "alice",
                    "admin",
                    token_sha256="90a961472e281e6d344ea12364caf6a1252653b0579448405bd46dca213eabb3",
                ),
                Operator("oncall", "operator", token=os.environ["GATE_ONCALL_TOKEN"]),
                {
                    "name": "grafana",
                    "role": "viewer",
                    "token_sha256": "6659ce9b39a80c3472e7992a83a1867d34f7fa5f4b74006fe5ea1277c3fb8abd",
                },
            ],
        ),
    )
    return team_app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
