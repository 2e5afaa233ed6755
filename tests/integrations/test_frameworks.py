"""Each framework's own idioms, as its users expect them.

Flask: ``GATE_*`` keys in ``app.config`` and the public extension in
``app.extensions``. Django: ``manage.py check`` reports a bad setting before
any request, ``manage.py gate`` steers the gate, the cookie's secret is
derived from ``SECRET_KEY``. Starlette and FastAPI: a typed accessor and a
dependency. Every adapter refuses a misspelt option when it is built, and
``mypy --strict`` (with django-stubs) passes on a user's app and on the
examples.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.routing import RoutingDecision
from gate_middleware.integrations.fastapi import GateDecision  # FastAPI reads annotations here
from gate_middleware.web.session import SessionCookie

ROOT = Path(__file__).resolve().parents[2]


def make_gate() -> PromotionGate:
    return PromotionGate(
        PromotionConfig(environment=Environment.canary(100), feature_flags=["new_api"])
    )


# -- Flask --------------------------------------------------------------------------------


def test_flask_reads_gate_keys_from_app_config() -> None:
    from flask import Flask

    from gate_middleware.integrations.flask import GateExtension, gate_decision

    gate = make_gate()
    app = Flask(__name__)
    app.config.update(GATE=gate, GATE_SECRET="s" * 32, GATE_EXCLUDE_PATHS=["/healthz"])

    @app.get("/")
    def index() -> str:
        return gate_decision().variant

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    extension = GateExtension(app)
    assert app.extensions["gate_middleware"] is extension and extension.gate is gate
    assert GateExtension.of(app) is extension
    client = app.test_client()
    response = client.get("/")
    assert response.text == "canary"
    cookie = response.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]
    assert SessionCookie(secret="s" * 32).read(f"gate_session={cookie}") is not None
    assert "Set-Cookie" not in client.get("/healthz").headers  # excluded by the config


def test_flask_refuses_a_misspelt_option_or_config_key() -> None:
    from flask import Flask

    from gate_middleware.integrations.flask import GateExtension

    with pytest.raises(TypeError, match="secert"):
        GateExtension(gate=make_gate(), secert="x" * 32)
    app = Flask(__name__)
    app.config.update(GATE=make_gate(), GATE_SECERT="x" * 32)
    with pytest.raises(TypeError, match="GATE_SECERT"):
        GateExtension(app)


# -- Starlette and FastAPI -----------------------------------------------------------------


def test_starlette_typed_accessor_and_misspelt_option() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gate_middleware.integrations.starlette import GateMiddleware, gate_decision

    async def index(request: Request) -> PlainTextResponse:
        decision = gate_decision(request)
        assert isinstance(decision, RoutingDecision)
        return PlainTextResponse(decision.variant)

    app = Starlette(routes=[Route("/", index)])
    app.add_middleware(GateMiddleware, gate=make_gate(), secret="s" * 32)
    with TestClient(app) as client:
        assert client.get("/").text == "canary"

    bad = Starlette(routes=[Route("/", index)])
    options: dict[str, Any] = {"secert": "s" * 32}
    bad.add_middleware(GateMiddleware, gate=make_gate(), **options)
    # Starlette builds its middleware at startup: the error comes then,
    # before any request is served, and names the option.
    with pytest.raises(TypeError, match="secert"), TestClient(bad):
        pass


def test_starlette_fails_the_lifespan_startup_when_the_middleware_cannot_be_built() -> None:
    # An exception is what a server's default lifespan mode reads as "no
    # lifespan support" (it would start and answer 500): the startup is
    # answered failed, with the error's message, which uvicorn and hypercorn
    # log before they exit. Then the error is raised, as Starlette's router
    # raises its own startup errors.
    import asyncio
    import traceback

    from starlette.applications import Starlette

    from gate_middleware.errors import ConfigError
    from gate_middleware.integrations.starlette import GateMiddleware

    app = Starlette()
    app.add_middleware(GateMiddleware, gate=make_gate(), secret="too-short")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(ConfigError, match="secret"):
        asyncio.run(app({"type": "lifespan", "state": {}}, receive, send))
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "GateMiddleware could not be built: ConfigError: secret must be "
            "None or a str/bytes of at least 16 bytes, got '<hidden>'",
        }
    ]
    # Without a lifespan (--lifespan off), each request raises it: a 500,
    # with the build's traceback, not one that grows with every request.
    http = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    depths = []
    for _ in range(3):
        sent.clear()
        with pytest.raises(ConfigError, match="secret") as raised:
            asyncio.run(app(dict(http), receive, send))
        assert sent[0]["status"] == 500
        depths.append(len(traceback.extract_tb(raised.value.__traceback__)))
    assert depths[0] == depths[1] == depths[2]


def test_fastapi_dependency() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from gate_middleware.integrations.fastapi import GateMiddleware

    app = FastAPI()
    app.add_middleware(GateMiddleware, gate=make_gate(), secret="s" * 32)

    @app.get("/")
    async def index(decision: GateDecision) -> dict[str, Any]:
        return {"variant": decision.variant, "new_api": decision.is_enabled("new_api")}

    with TestClient(app) as client:
        assert client.get("/").json() == {"variant": "canary", "new_api": True}
    # The dependency is no query parameter in the OpenAPI schema.
    assert "parameters" not in app.openapi()["paths"]["/"]["get"]


# -- Django -------------------------------------------------------------------------------

PROJECT_SETTINGS = """
SECRET_KEY = {secret_key!r}
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "proj.urls"
INSTALLED_APPS = ["gate_middleware.integrations"]
DATABASES = {{}}
USE_TZ = True
MIDDLEWARE = ["gate_middleware.integrations.django.GateMiddleware"]
GATE_MIDDLEWARE = {gate_middleware}
"""

PROJECT_FILES = {
    "proj/__init__.py": "",
    "proj/rollout.py": """
        from gate_middleware import Environment, PromotionConfig, PromotionGate

        gate = PromotionGate(
            PromotionConfig(environment=Environment.canary(10.0), feature_flags=["new_api"])
        )
    """,
    "proj/urls.py": """
        from django.http import HttpRequest, HttpResponse
        from django.urls import path

        from gate_middleware.integrations.django import gate_decision


        def index(request: HttpRequest) -> HttpResponse:
            return HttpResponse(gate_decision(request).variant)


        urlpatterns = [path("", index)]
    """,
}


def django_project(tmp_path: Path, gate_middleware: str, secret_key: str = "k" * 50) -> Path:
    for name, text in PROJECT_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "proj" / "settings.py").write_text(
        PROJECT_SETTINGS.format(secret_key=secret_key, gate_middleware=gate_middleware)
    )
    return tmp_path


def django_admin(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=project,
        env={
            **os.environ,
            "PYTHONPATH": str(project),
            "DJANGO_SETTINGS_MODULE": "proj.settings",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("setting", "secret_key", "expected", "fails"),
    [
        ('{"GATE": "proj.rollout.gate"}', "k" * 50, "no issues", False),
        ('{"GATE": "proj.rollout.gaet"}', "k" * 50, "gate_middleware.E001", True),
        ('{"GATE": "proj.rollout.gate", "SECERT": "x"}', "k" * 50, "gate_middleware.E001", True),
        (
            '{"GATE": "proj.rollout.gate", "SECRET": "short"}',
            "k" * 50,
            "gate_middleware.E001",
            True,
        ),
        (
            '{"GATE": "proj.rollout.gate", "SECRET": "x" * 20}',
            "k" * 50,
            "gate_middleware.W002",
            False,
        ),
        ('{"GATE": "proj.rollout.gate"}', "", "gate_middleware.W001", False),
    ],
)
def test_manage_py_check_reports_the_gate_setting(
    tmp_path: Path, setting: str, secret_key: str, expected: str, fails: bool
) -> None:
    result = django_admin(django_project(tmp_path, setting, secret_key), "check")
    assert expected in result.stdout + result.stderr, result.stdout + result.stderr
    assert (result.returncode != 0) == fails
    if "gaet" in setting:
        assert "proj.rollout.gaet" in result.stderr


def test_manage_py_gate_command(tmp_path: Path) -> None:
    import json

    project = django_project(tmp_path, '{"GATE": "proj.rollout.gate"}')
    status = django_admin(project, "gate", "status")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["environment"] == "canary" and shown["traffic_percent"] == 10.0
    assert shown["verdict"] == "INSUFFICIENT_DATA" and shown["flags"] == ["new_api"]
    # An in-memory gate: the command's own copy, which no server sees. Refused.
    for command in (
        ["promote", "staging", "--force"],
        ["rollback", "x"],
        ["flags", "--enable", "y"],
    ):
        refused = django_admin(project, "gate", *command)
        assert refused.returncode != 0 and "keeps its state in memory" in refused.stderr


def test_manage_py_gate_command_steers_a_shared_gate(tmp_path: Path) -> None:
    project = django_project(tmp_path, '{"GATE": "proj.shared.gate"}')
    (project / "proj" / "shared.py").write_text(
        textwrap.dedent(
            f"""
            from gate_middleware import Environment, PromotionConfig, PromotionGate

            gate = PromotionGate.from_url(
                "sqlite://{tmp_path}/gate.db",
                PromotionConfig(
                    name="shop", environment=Environment.canary(10.0), feature_flags=["new_api"]
                ),
            )
            """
        )
    )
    refused = django_admin(project, "gate", "promote", "staging")
    assert refused.returncode != 0 and "CommandError" in refused.stderr
    forced = django_admin(project, "gate", "promote", "staging", "--force")
    assert forced.returncode == 0 and "promoted to staging" in forced.stdout
    # Each command is a new process: what one did, the next one (and the server) sees.
    rolled = django_admin(project, "gate", "rollback", "checkout errors")
    assert rolled.returncode == 0 and "rolled back from staging" in rolled.stdout
    flags = django_admin(project, "gate", "flags", "--enable", "dark_mode")
    assert flags.returncode == 0 and flags.stdout.split() == ["dark_mode"]  # new_api rolled back
    status = django_admin(project, "gate", "status")
    assert '"environment": "production"' in status.stdout


def test_django_secret_defaults_from_secret_key(tmp_path: Path) -> None:
    project = django_project(tmp_path, '{"GATE": "proj.rollout.gate"}', secret_key="k" * 50)
    code = textwrap.dedent(
        """
        import django
        django.setup()
        from django.test import Client
        from gate_middleware.integrations.django import derived_secret
        response = Client().get("/")
        cookie = response.cookies["gate_session"].value
        print(derived_secret("k" * 50) != "k" * 50, response.content.decode(), cookie)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), "DJANGO_SETTINGS_MODULE": "proj.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    differs, variant, cookie = result.stdout.split()
    assert differs == "True" and variant in ("canary", "stable")
    from gate_middleware.integrations.django import derived_secret

    header = f"gate_session={cookie}"
    assert SessionCookie(secret=derived_secret("k" * 50)).read(header) is not None
    assert SessionCookie(secret=derived_secret("other" * 10)).read(header) is None


@pytest.mark.parametrize(
    ("app_headers", "vary", "cache_control"),
    [
        ({}, "Cookie", "private"),
        (
            {"Cache-Control": "public, max-age=60", "Vary": "Accept-Encoding"},
            "Accept-Encoding, Cookie",
            "private, max-age=60",
        ),
        ({"Cache-Control": "no-store"}, "Cookie", "no-store"),
        ({"Cache-Control": "private, max-age=5", "Vary": "*"}, "*", "private, max-age=5"),
    ],
)
def test_django_keeps_a_cookie_response_from_shared_caches_as_wsgi_does(
    app_headers: dict[str, str], vary: str, cache_control: str
) -> None:
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory
    from django.test.utils import override_settings

    from gate_middleware import GateWSGIMiddleware
    from gate_middleware.integrations.django import GateMiddleware
    from tests.apps import configure_django

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", list(app_headers.items()))
        return [b"ok"]

    sent: dict[str, list[str]] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        for name, value in headers:
            sent.setdefault(name.lower(), []).append(value)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    body = GateWSGIMiddleware(wsgi_app, gate=make_gate(), secret="s" * 32)(environ, start_response)
    try:
        assert b"".join(body) == b"ok"
    finally:
        getattr(body, "close", lambda: None)()  # as a server does: the request ends here
    assert (", ".join(sent["vary"]), ", ".join(sent["cache-control"])) == (vary, cache_control)

    def view(request: HttpRequest) -> HttpResponse:
        response = HttpResponse("ok")
        for name, value in app_headers.items():
            response[name] = value
        return response

    configure_django()
    with override_settings(GATE_MIDDLEWARE={"GATE": make_gate(), "SECRET": "s" * 32}):
        response = GateMiddleware(view)(RequestFactory().get("/"))
    assert response.cookies["gate_session"].value  # a cookie set: the headers apply
    assert (response["Vary"], response["Cache-Control"]) == (vary, cache_control)


# -- mypy --strict on a user's app and on the examples ------------------------------------

USER_APP = """
from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from gate_middleware import Environment, PromotionConfig, PromotionGate, RoutingDecision
from gate_middleware.integrations import django as gate_django
from gate_middleware.integrations import fastapi as gate_fastapi
from gate_middleware.integrations import flask as gate_flask
from gate_middleware.integrations import starlette as gate_starlette

gate = PromotionGate(PromotionConfig(environment=Environment.canary(10.0)))

star = Starlette()
star.add_middleware(gate_starlette.GateMiddleware, gate=gate, secret="s" * 32)


async def star_view(request: Request) -> PlainTextResponse:
    decision: RoutingDecision = gate_starlette.gate_decision(request)
    return PlainTextResponse(decision.variant)


api = FastAPI()
api.add_middleware(gate_fastapi.GateMiddleware, gate=gate, exclude_paths=["/healthz"])


@api.get("/")
async def api_view(decision: gate_fastapi.GateDecision) -> dict[str, Any]:
    return {"variant": decision.variant}


flask_app = Flask(__name__)
gate_flask.GateExtension(flask_app, gate=gate)


@flask_app.get("/")
def flask_view() -> str:
    return gate_flask.gate_decision().variant


def django_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(gate_django.gate_decision(request).variant)
"""

MISSPELT = """
from starlette.applications import Starlette

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.integrations.starlette import GateMiddleware

app = Starlette()
app.add_middleware(
    GateMiddleware,
    gate=PromotionGate(PromotionConfig(environment=Environment.canary(10.0))),
    secert="s" * 32,
)
"""


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a user installs it (mypy cannot follow the editable install):
    the wheel under test in the compiled pass, else one built from the checkout."""
    build = tmp_path_factory.mktemp("wheel")
    if os.environ.get("GATE_WHEEL"):
        wheel = Path(os.environ["GATE_WHEEL"])
    else:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
            + ["-w", str(build), str(ROOT)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        [wheel] = build.glob("gate_middleware-*.whl")
    site = build / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def mypy(site: Path, cwd: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file=", *paths],
        cwd=cwd,
        env={**os.environ, "MYPYPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mypy_strict_passes_on_a_users_app_and_the_examples(
    installed_package: Path, tmp_path: Path
) -> None:
    (tmp_path / "user_app.py").write_text(USER_APP)
    result = mypy(installed_package, tmp_path, "user_app.py")
    assert result.returncode == 0, result.stdout + result.stderr
    examples = ROOT / "examples"
    files = [
        "admin_api.py",
        "fastapi_app.py",
        "flask_app.py",
        "starlette_app.py",
        "promotion_gates_example.py",
        "shop_guardrail.py",
    ]
    result = mypy(installed_package, examples, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    result = mypy(installed_package, examples / "django_app", "shop", "manage.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_names_a_misspelt_option(installed_package: Path, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(MISSPELT)
    result = mypy(installed_package, tmp_path, "app.py")
    assert result.returncode != 0 and '"secert"' in result.stdout, result.stdout
