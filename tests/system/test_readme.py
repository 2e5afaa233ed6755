"""The README's per-framework blocks, written to files and served.

Each ``# file: NAME`` block of the README becomes that file in a fresh
directory; the app it defines serves ``/checkout`` through its framework's
test client, with a signed cookie, and the OpenFeature block evaluates.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "readme-secret-0123456789abcdefghij"


def readme_files() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    files = {}
    for block in blocks:
        first, _, rest = block.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ").split()[0]] = rest
    return files


CHECK = {
    "fastapi_shop.py": """
        from fastapi.testclient import TestClient
        from fastapi_shop import app
        client = TestClient(app)
    """,
    "starlette_shop.py": """
        from starlette.testclient import TestClient
        from starlette_shop import app
        client = TestClient(app)
    """,
    "flask_shop.py": """
        from flask_shop import app
        client = app.test_client()
    """,
}
ASSERT = """
    from gate_middleware.web.session import SessionCookie
    from rollout import gate
    response = client.get("/checkout")
    assert response.status_code == 200, response.status_code
    body = response.json() if callable(response.json) else response.json  # Flask: a property
    assert body in ({"checkout": "new"}, {"checkout": "old"}), body
    cookie = response.headers["set-cookie"].split(";", 1)[0]
    assert SessionCookie(secret=os.environ["GATE_SECRET"]).read(cookie) is not None
    import time
    deadline = time.monotonic() + 10  # the SQLite store writes its outcomes every 0.25 s
    while True:
        snapshot = gate.health_snapshot()
        counted = snapshot.canary_requests + snapshot.production_requests
        if counted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == 1, counted
    print("ok")
"""


def run(directory: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import os\n" + textwrap.dedent(code)],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(directory), "GATE_SECRET": SECRET, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(directory: Path, *names: str) -> None:
    files = readme_files()
    for name in ("rollout.py", *names):
        (directory / name).write_text(files[name])


def test_the_readme_has_a_block_per_framework() -> None:
    assert set(readme_files()) == {
        "rollout.py",
        "fastapi_shop.py",
        "starlette_shop.py",
        "flask_shop.py",
        "settings.py",
        "views.py",
        "openfeature_shop.py",
    }


@pytest.mark.parametrize("name", list(CHECK))
def test_the_readme_block_serves_a_request(name: str, tmp_path: Path) -> None:
    write(tmp_path, name)
    result = run(tmp_path, textwrap.dedent(CHECK[name]) + textwrap.dedent(ASSERT))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_readme_django_blocks_serve_a_request(tmp_path: Path) -> None:
    write(tmp_path, "views.py")
    project = tmp_path / "shop"
    project.mkdir()
    (project / "__init__.py").write_text("")
    # A project's settings as startproject leaves them, then the README's lines.
    (project / "settings.py").write_text(
        "SECRET_KEY = 'readme-django-secret-key-0123456789abcdefghijklmnop'\n"
        "ALLOWED_HOSTS = ['*']\nROOT_URLCONF = 'shop.urls'\nUSE_TZ = True\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes']\n"
        "MIDDLEWARE = ['django.middleware.common.CommonMiddleware']\n"
        "DATABASES = {}\n" + readme_files()["settings.py"]
    )
    (project / "urls.py").write_text(
        "from django.urls import path\nfrom views import checkout\n"
        "urlpatterns = [path('checkout', checkout)]\n"
    )
    code = """
        import django
        django.setup()
        from django.core.management import call_command
        call_command("check")
        from django.test import Client
        from gate_middleware.integrations.django import derived_secret
        from django.conf import settings
        os.environ["GATE_SECRET"] = derived_secret(settings.SECRET_KEY)
        client = Client()
        class Response:
            def __init__(self, response):
                self.status_code = response.status_code
                self.headers = {"set-cookie": response.cookies["gate_session"].OutputString()}
                self.json = response.json
        get = client.get
        client.get = lambda path: Response(get(path))
    """
    result = run(
        tmp_path,
        textwrap.dedent(code) + textwrap.dedent(ASSERT),
        DJANGO_SETTINGS_MODULE="shop.settings",
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_the_readme_openfeature_block(tmp_path: Path) -> None:
    write(tmp_path, "openfeature_shop.py")
    code = """
        import openfeature_shop as shop
        from rollout import gate
        assert shop.in_a_request is False  # no request and no targeting key: the default
        expected = gate.route_request("user-42").is_enabled("new_checkout_flow")
        assert shop.for_a_user is expected
        print("ok")
    """
    result = run(tmp_path, code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
