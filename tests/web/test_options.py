"""The middleware options are declared once, and every adapter takes exactly those.

``LifecycleOptions`` (``gate_middleware.web.lifecycle``) declares each
option and ``OPTION_DEFAULTS`` its default; the ASGI and WSGI middlewares
(so Starlette's and FastAPI's), Flask's keywords and ``app.config`` keys,
Django's ``GATE_MIDDLEWARE`` keys and the README's table all follow from
them. An option added in one place and not the others fails here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gate_middleware import (
    Environment,
    GateASGIMiddleware,
    GateWSGIMiddleware,
    PromotionConfig,
    PromotionGate,
    RequestLifecycle,
)
from gate_middleware.errors import ConfigError
from gate_middleware.web.lifecycle import OPTION_DEFAULTS, OPTION_NAMES, LifecycleOptions

ROOT = Path(__file__).resolve().parents[2]


def make_gate() -> PromotionGate:
    return PromotionGate(PromotionConfig(environment=Environment.canary(50)))


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    pass  # never called: only the middlewares are built


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    return []


# -- each adapter, built with some options its own way: its lifecycle -----------------


def lifecycle(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    return RequestLifecycle(gate, **options)


def asgi(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    return GateASGIMiddleware(asgi_app, gate=gate, **options).lifecycle


def wsgi(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    return GateWSGIMiddleware(wsgi_app, gate=gate, **options).lifecycle


def starlette(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    from starlette.applications import Starlette

    from gate_middleware.integrations.starlette import GateMiddleware

    app = Starlette()
    app.add_middleware(GateMiddleware, gate=gate, **options)
    return started(app).lifecycle


def fastapi(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    from fastapi import FastAPI

    from gate_middleware.integrations.fastapi import GateMiddleware

    app = FastAPI()
    app.add_middleware(GateMiddleware, gate=gate, **options)
    return started(app).lifecycle


def started(app: Any) -> GateASGIMiddleware:
    """Start a Starlette app as a server does: it builds its middleware on
    the lifespan's startup, which options that cannot build the gate's fail
    (raising the error). Its gate middleware."""
    from starlette.testclient import TestClient

    with TestClient(app):
        pass
    layer = app.middleware_stack
    while not isinstance(layer, GateASGIMiddleware):
        layer = layer.app
    return layer


def flask(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    from flask import Flask

    from gate_middleware.integrations.flask import GateExtension

    middleware = GateExtension(Flask(__name__), gate=gate, **options).middleware
    assert middleware is not None
    return middleware.lifecycle


def flask_config(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    from flask import Flask

    from gate_middleware.integrations.flask import GateExtension

    app = Flask(__name__)
    app.config.update(GATE=gate, **{f"GATE_{name.upper()}": v for name, v in options.items()})
    middleware = GateExtension(app).middleware
    assert middleware is not None
    return middleware.lifecycle


def django(gate: PromotionGate, options: dict[str, Any]) -> RequestLifecycle:
    from django.test.utils import override_settings

    from gate_middleware.integrations.django import GateMiddleware
    from tests.apps import configure_django

    configure_django()
    setting = {"GATE": gate, **{name.upper(): value for name, value in options.items()}}
    with override_settings(GATE_MIDDLEWARE=setting):
        return GateMiddleware(lambda request: None).lifecycle


Build = Callable[[PromotionGate, dict[str, Any]], RequestLifecycle]
ADAPTERS: dict[str, Build] = {
    "RequestLifecycle": lifecycle,
    "asgi": asgi,
    "wsgi": wsgi,
    "starlette": starlette,
    "fastapi": fastapi,
    "flask": flask,
    "flask app.config": flask_config,
    "django": django,
}


def test_each_option_is_declared_with_a_default() -> None:
    declared = tuple(LifecycleOptions.__annotations__)
    assert declared == OPTION_NAMES == tuple(OPTION_DEFAULTS)


@pytest.mark.parametrize("name", OPTION_NAMES)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_every_adapter_takes_each_declared_option(adapter: str, name: str) -> None:
    built = ADAPTERS[adapter](make_gate(), {name: OPTION_DEFAULTS[name]})  # type: ignore[literal-required]
    assert isinstance(built, RequestLifecycle)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_every_adapter_refuses_an_undeclared_option(adapter: str) -> None:
    # A TypeError for a keyword, Django's ConfigError for a settings key,
    # each naming the option, when the middleware is built.
    with pytest.raises((TypeError, ConfigError), match="(?i)cookie_domain"):
        ADAPTERS[adapter](make_gate(), {"cookie_domain": "example.com"})


@pytest.mark.parametrize("middleware", [GateASGIMiddleware, GateWSGIMiddleware])
def test_the_middlewares_spell_out_no_option_of_their_own(middleware: type) -> None:
    try:
        parameters = inspect.signature(middleware).parameters
    except ValueError:  # pragma: no cover - a compiled class may carry no signature
        pytest.skip("no signature to read")
    kinds = {name: p.kind for name, p in parameters.items()}
    assert kinds == {
        "app": inspect.Parameter.POSITIONAL_OR_KEYWORD,
        "gate": inspect.Parameter.KEYWORD_ONLY,
        "options": inspect.Parameter.VAR_KEYWORD,
    }


def test_django_dotted_path_keys_are_options() -> None:
    from gate_middleware.integrations import django

    assert {"GATE"} | {name.upper() for name in OPTION_NAMES} >= django._DOTTED


def test_the_readme_table_lists_the_declared_options() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Options", 1)[1].split("\n\n", 2)[1]
    assert tuple(re.findall(r"^\| `(\w+)` \|", table, re.M)) == OPTION_NAMES


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("value", ["pubic", "Public", True, ["public"]])
def test_every_adapter_refuses_a_misspelt_cacheable(adapter: str, value: Any) -> None:
    with pytest.raises(ConfigError, match="cacheable"):
        ADAPTERS[adapter](make_gate(), {"cacheable": value})
