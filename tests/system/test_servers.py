"""End to end: the examples under real servers on 127.0.0.1, over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, python, running

SERVERS = {
    "starlette-uvicorn": ["-m", "uvicorn", "--app-dir", "examples", "starlette_app:app"],
    "fastapi-uvicorn": ["-m", "uvicorn", "--app-dir", "examples", "fastapi_app:app"],
    "django-asgi-uvicorn": [
        "-m",
        "uvicorn",
        "--app-dir",
        "examples/django_app",
        "shop.asgi:application",
    ],
    "flask-gunicorn": ["-m", "gunicorn", "--chdir", "examples", "-w", "2", "flask_app:app"],
    "django-wsgi-gunicorn": [
        "-m",
        "gunicorn",
        "--chdir",
        "examples/django_app",
        "-w",
        "2",
        "shop.wsgi:application",
    ],
}


def command(name: str, port: int) -> list[str]:
    args = SERVERS[name]
    if "uvicorn" in args:
        return python(*args, "--host", "127.0.0.1", "--port", str(port))
    return python(*args, "--bind", f"127.0.0.1:{port}")


@pytest.mark.parametrize("name", list(SERVERS))
def test_example_under_a_real_server(name: str, tmp_path: Path) -> None:
    port = free_port()
    secret = "end-to-end-secret-0123456789"
    env = {"GATE_SECRET": secret, "GATE_STORE": f"sqlite://{tmp_path}/shop.db"}
    with running(command(name, port), port, env=env) as base:
        # A first visit gets a signed cookie and a decision.
        with httpx.Client(base_url=base, timeout=10.0) as client:
            first = client.get("/")
            assert first.status_code == 200
            cookie = first.headers["set-cookie"]
            assert re.match(r"gate_session=[A-Za-z0-9_-]{22}\.\d+\.[A-Za-z0-9_-]{43};", cookie)
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
            body = first.json()
            assert body["checkout"] == ("new" if body["variant"] == "canary" else "old")
            # Sticky across requests (and across gunicorn's two workers).
            for _ in range(15):
                again = client.get("/")
                assert again.json() == body
                assert "set-cookie" not in again.headers

        # Fresh sessions split between both variants at 50 %.
        variants = []
        for _ in range(60):
            with httpx.Client(base_url=base, timeout=10.0) as fresh:
                variants.append(fresh.get("/").json()["variant"])
        assert 10 < variants.count("canary") < 50

        # The request metrics reach Prometheus through the OpenTelemetry SDK.
        for _ in range(10):
            text = httpx.get(base + "/metrics", timeout=10.0).text
            if "gate_middleware_requests" in text:
                break
        assert 'gate_variant="canary"' in text or 'gate_variant="stable"' in text
        assert "gate_middleware_request_duration_seconds_bucket" in text
        assert "/metrics" not in re.findall(r'http_route="([^"]*)"', text)
