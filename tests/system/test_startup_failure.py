"""A Starlette or FastAPI app whose middleware cannot be built does not start.

Starlette builds its middleware on its first ASGI call, the lifespan's
startup. Under uvicorn's default ``--lifespan auto`` an exception there reads
as "no lifespan support": the server started and answered every request 500.
Now the startup fails: uvicorn logs the error's message (the ``ConfigError``
naming the field, the ``TypeError`` naming the option) and exits non-zero,
with the default lifespan mode and with ``--lifespan on``, for a FastAPI app
with a lifespan of its own and a plain Starlette app without one. A
well-configured app starts and serves. Under hypercorn (its defaults) the
same: its worker stops at the failed startup with the error's message and
the server exits without ever listening (with status 0: hypercorn's own
choice, also for an app it cannot import).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port, python, running

# The option each case gives the middleware (GATE_CASE), beside gate=.
OPTIONS = """
import os

OPTIONS = {
    "good": {"secret": "s" * 32},
    "short-secret": {"secret": "too-short"},
    "misspelt": {"secert": "s" * 32},
}[os.environ["GATE_CASE"]]
"""

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.integrations.starlette import GateMiddleware, gate_decision
from shop_options import OPTIONS

gate = PromotionGate(PromotionConfig(environment=Environment.canary(100.0)))


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse(gate_decision(request).variant)


app = Starlette(routes=[Route("/", index)])
app.add_middleware(GateMiddleware, gate=gate, **OPTIONS)
"""

FASTAPI_APP = """
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.integrations.fastapi import GateDecision, GateMiddleware
from shop_options import OPTIONS

gate = PromotionGate(PromotionConfig(environment=Environment.canary(100.0)))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print("the app's own startup ran", flush=True)
    yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(GateMiddleware, gate=gate, **OPTIONS)


@app.get("/")
async def index(decision: GateDecision) -> str:
    return decision.variant
"""

APPS = {"starlette": STARLETTE_APP, "fastapi": FASTAPI_APP}
LIFESPANS = {"default": [], "on": ["--lifespan", "on"]}
MESSAGES = {
    "short-secret": "ConfigError: secret must be None or a str/bytes of at least 16 bytes",
    "misspelt": "TypeError: GateMiddleware() got an unexpected option 'secert'",
}
# Generous on a loaded machine: uvicorn and FastAPI import in about a second.
EXIT_SECONDS = 30.0


def write_app(framework: str, app_dir: Path) -> None:
    (app_dir / "shop_options.py").write_text(OPTIONS)
    (app_dir / f"{framework}_shop.py").write_text(APPS[framework])


def run_to_exit(command: list[str], port: int, env: dict[str, str]) -> tuple[int, str, str]:
    """(status, stdout, stderr) of a server expected to exit by itself; a
    failure naming what GET / answered if it is still running."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            served = str(httpx.get(f"http://127.0.0.1:{port}/", timeout=5.0).status_code)
        except httpx.HTTPError as exc:
            served = repr(exc)
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{command[2:4]} still running after {EXIT_SECONDS} s (GET / -> {served}):\n{stderr}"
        )
    return process.returncode, stdout, stderr


def hypercorn_command(framework: str, app_dir: Path, port: int) -> list[str]:
    write_app(framework, app_dir)
    return python(
        "-m",
        "hypercorn",
        "--bind",
        f"127.0.0.1:{port}",
        f"{framework}_shop:app",
    )


def uvicorn_command(framework: str, lifespan: str, app_dir: Path, port: int) -> list[str]:
    write_app(framework, app_dir)
    return python(
        "-m",
        "uvicorn",
        "--app-dir",
        str(app_dir),
        f"{framework}_shop:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *LIFESPANS[lifespan],
    )


@pytest.mark.parametrize(
    ("framework", "lifespan", "case"),
    [
        ("fastapi", "default", "short-secret"),
        ("fastapi", "on", "short-secret"),
        ("starlette", "default", "short-secret"),
        ("starlette", "on", "short-secret"),
        ("starlette", "default", "misspelt"),
    ],
)
def test_uvicorn_exits_at_startup_with_the_error(
    framework: str, lifespan: str, case: str, tmp_path: Path
) -> None:
    port = free_port()
    command = uvicorn_command(framework, lifespan, tmp_path, port)
    returncode, stdout, stderr = run_to_exit(command, port, {"GATE_CASE": case})
    assert returncode != 0, stderr
    assert MESSAGES[case] in stderr
    assert "Application startup failed. Exiting." in stderr
    assert "Application startup complete" not in stderr
    # Nothing of the app started: not even its own lifespan.
    assert "the app's own startup ran" not in stdout


@pytest.mark.parametrize("lifespan", list(LIFESPANS))
@pytest.mark.parametrize("framework", list(APPS))
def test_a_well_configured_app_starts_and_serves(
    framework: str, lifespan: str, tmp_path: Path
) -> None:
    port = free_port()
    command = uvicorn_command(framework, lifespan, tmp_path, port)
    with running(command, port, env={"GATE_CASE": "good"}) as base:
        response = httpx.get(base + "/", timeout=10.0)
        assert response.status_code == 200
        assert "canary" in response.text
        assert response.headers["set-cookie"].startswith("gate_session=")


@pytest.mark.parametrize(
    ("framework", "case"),
    [("fastapi", "short-secret"), ("starlette", "short-secret"), ("starlette", "misspelt")],
)
def test_hypercorn_stops_at_startup_with_the_error(
    framework: str, case: str, tmp_path: Path
) -> None:
    port = free_port()
    command = hypercorn_command(framework, tmp_path, port)
    _, stdout, stderr = run_to_exit(command, port, {"GATE_CASE": case, "PYTHONPATH": str(tmp_path)})
    assert "LifespanFailureError: Lifespan failure in startup" in stderr
    assert MESSAGES[case].replace("ConfigError: ", "") in stderr
    assert "Running on" not in stderr + stdout  # it never listened
    assert "the app's own startup ran" not in stdout


@pytest.mark.parametrize("framework", list(APPS))
def test_a_well_configured_app_serves_under_hypercorn(framework: str, tmp_path: Path) -> None:
    port = free_port()
    command = hypercorn_command(framework, tmp_path, port)
    env = {"GATE_CASE": "good", "PYTHONPATH": str(tmp_path)}
    with running(command, port, env=env) as base:
        response = httpx.get(base + "/", timeout=10.0)
        assert response.status_code == 200
        assert "canary" in response.text
