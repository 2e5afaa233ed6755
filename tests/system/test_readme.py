"""Every ```python block of the README runs in this suite, in one of three ways.

- ``# file: NAME`` (the per-framework blocks): written to ``NAME`` in a fresh
  directory; the app it defines serves ``/checkout`` through its framework's
  test client, with a signed cookie, and the OpenFeature block evaluates.
- ``# fragment: completed in PATH`` (a block that shows a few lines of a
  larger program, such as the admin API's mounts in three frameworks): the
  file ``PATH`` exists, imports every name the fragment imports, and is run
  here (``COMPLETIONS`` says how).
- Any other block runs verbatim: ``python -c BLOCK`` in a fresh directory
  that holds the README's ``rollout.py`` (so ``from rollout import gate``
  works), with the environment variables the blocks read set to test values,
  a real redis-server for a block that reads ``REDIS_URL``, and every proxy
  variable pointed at a closed port on 127.0.0.1, so that nothing leaves the
  machine.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from gate_middleware import Environment, PromotionConfig, PromotionGate

ROOT = Path(__file__).resolve().parents[2]
SECRET = "readme-secret-0123456789abcdefghij"
FENCE = re.compile(r"^\s*```(\w*)\s*$")
FRAGMENT = re.compile(r"# fragment: completed in (\S+)$")


@dataclass(frozen=True)
class Block:
    """One ```python block: the heading it sits under, its line, its code (dedented)."""

    heading: str
    line: int
    code: str

    @property
    def first_line(self) -> str:
        return self.code.partition("\n")[0]

    @property
    def completion(self) -> str | None:
        """A fragment's completion (a path from the checkout's root), else ``None``."""
        match = FRAGMENT.match(self.first_line)
        return match.group(1) if match else None


def readme_blocks() -> list[Block]:
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, heading, at = [], "", 0
    while at < len(lines):
        fence = FENCE.match(lines[at])
        if fence is None:
            if lines[at].startswith("#"):
                heading = lines[at].lstrip("#").strip()
            at += 1
            continue
        end = next(i for i in range(at + 1, len(lines)) if lines[i].strip() == "```")
        if fence.group(1) == "python":
            code = textwrap.dedent("\n".join(lines[at + 1 : end])) + "\n"
            blocks.append(Block(heading, at + 2, code))
        at = end + 1
    return blocks


def block_ids(blocks: list[Block]) -> list[str]:
    """``heading`` as a slug, numbered where one heading has several blocks."""
    ids: list[str] = []
    for block in blocks:
        slug = re.sub(r"[^a-z0-9]+", "-", block.heading.lower()).strip("-")
        ids.append(slug if slug not in ids else f"{slug}-{ids.count(slug) + 1}")
    return ids


BLOCKS = readme_blocks()
VERBATIM = [b for b in BLOCKS if not b.first_line.startswith("# file: ") and not b.completion]
FRAGMENTS = [b for b in BLOCKS if b.completion]


def readme_files() -> dict[str, str]:
    files = {}
    for block in BLOCKS:
        if block.first_line.startswith("# file: "):
            name = block.first_line.removeprefix("# file: ").split()[0]
            files[name] = block.code.partition("\n")[2]
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
    import os
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


# What the blocks read, as test values; and no way off the machine.
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there
ENV = {
    "GATE_SECRET": SECRET,
    "GATE_ADMIN_TOKEN": "readme-admin-token-0123456789",
    "GATE_ONCALL_TOKEN": "readme-oncall-token-0123456789",
    "GATE_WEBHOOK_SECRET": "readme-webhook-secret-0123456789",
    **{name: CLOSED for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{name: CLOSED for name in ("all_proxy", "ALL_PROXY")},
    "no_proxy": "127.0.0.1,localhost",
    "NO_PROXY": "127.0.0.1,localhost",
}


def run(directory: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` (dedented) in ``directory``, which is on its path."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(directory), **ENV, **env},
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
        "fastapi_api_clients.py",
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
        import os
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


def test_the_readme_fastapi_block_keys_cookieless_api_clients(tmp_path: Path) -> None:
    """A client that keeps no cookie gets one variant per API key, every call."""
    write(tmp_path, "fastapi_api_clients.py")
    code = """
        from fastapi.testclient import TestClient
        from fastapi_api_clients import app
        client = TestClient(app)
        seen = set()
        for n in range(40):
            answers = set()
            for _ in range(5):
                client.cookies.clear()  # as curl: no cookie kept
                response = client.get("/checkout", headers={"X-API-Key": f"key-{n}"})
                assert response.status_code == 200, response.status_code
                assert "set-cookie" not in response.headers  # the key is the identity
                answers.add(response.json()["checkout"])
            assert len(answers) == 1, (n, answers)
            seen |= answers
        assert seen == {"new", "old"}, seen  # the keys are routed, not all sent one way
        client.cookies.clear()
        assert "set-cookie" in client.get("/checkout").headers  # no key: the cookie, as before
        print("ok")
    """
    result = run(tmp_path, code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("block", VERBATIM, ids=block_ids(VERBATIM))
def test_the_readme_block_runs_verbatim(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    write(tmp_path)  # rollout.py: the gate the later blocks import
    env = {}
    if "REDIS_URL" in block.code:
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    result = run(tmp_path, block.code, **env)
    assert result.returncode == 0, f"README.md line {block.line}:\n{result.stderr}"


def imported_names(code: str) -> set[str]:
    """``module.name`` for each name ``code`` imports (``module`` for ``import module``)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


# How the suite runs each completion of a fragment (with its folder on the path).
COMPLETIONS = {
    "examples/admin_api.py": """
        import os

        import django
        from django.conf import settings

        settings.configure(
            ROOT_URLCONF="admin_api",
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="readme-django-secret-key-0123456789abcdefghijklmnop",
        )
        django.setup()
        from django.test import Client
        from starlette.testclient import TestClient

        import admin_api

        admin = {"Authorization": "Bearer " + os.environ["GATE_ADMIN_TOKEN"]}
        oncall = {"Authorization": "Bearer " + os.environ["GATE_ONCALL_TOKEN"]}
        answers = [
            TestClient(admin_api.app).get("/gate/status", headers=admin),
            admin_api.flask_app.test_client().get("/gate/status", headers=admin),
            Client().get("/gate/status", headers=admin),
            TestClient(admin_api.create_team_app()).get("/gate/status", headers=oncall),
        ]
        assert [answer.status_code for answer in answers] == [200] * 4, answers
        assert answers[-1].json()["operator"]["role"] == "operator"
        print("ok")
    """,
}


@pytest.mark.parametrize("block", FRAGMENTS, ids=block_ids(FRAGMENTS))
def test_a_readme_fragment_names_a_completion_the_suite_runs(block: Block) -> None:
    assert block.completion is not None
    completion = ROOT / block.completion
    assert completion.is_file(), f"README.md line {block.line}: no {block.completion}"
    assert block.completion in COMPLETIONS, f"run {block.completion} in COMPLETIONS"
    missing = imported_names(block.code) - imported_names(completion.read_text())
    assert not missing, f"README.md line {block.line}: {block.completion} never imports {missing}"


@pytest.mark.parametrize("path", list(COMPLETIONS))
def test_a_fragments_completion_runs(path: str, tmp_path: Path) -> None:
    folder = (ROOT / path).parent
    result = run(tmp_path, COMPLETIONS[path], PYTHONPATH=str(folder))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_readme_gunicorn_hook_says_what_to_install_and_sets_up_the_sdk(
    tmp_path: Path,
) -> None:
    """The hook's SDK and exporter come from no extra of the package: the block
    says what to install. The OTLP exporter is no dependency of the suite
    either; where it is missing, a stand-in that writes nowhere takes its place."""
    [block] = [b for b in BLOCKS if b.first_line.startswith("# gunicorn.conf.py")]
    assert "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http" in block.code
    (tmp_path / "gunicorn_conf.py").write_text(block.code)
    if importlib.util.find_spec("opentelemetry.exporter.otlp") is None:
        stub = tmp_path / "opentelemetry" / "exporter" / "otlp" / "proto" / "http"
        stub.mkdir(parents=True)
        (stub / "metric_exporter.py").write_text(
            "import os\n"
            "from opentelemetry.sdk.metrics.export import ConsoleMetricExporter\n"
            "class OTLPMetricExporter(ConsoleMetricExporter):\n"
            "    def __init__(self):\n"
            "        super().__init__(out=open(os.devnull, 'w'))\n"
        )
    code = """
        import gunicorn_conf
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider

        gunicorn_conf.post_fork(server=None, worker=None)
        assert isinstance(metrics.get_meter_provider(), MeterProvider)
        print("ok")
    """
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}  # the real one, if any
    result = run(tmp_path, code, **endpoint)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_readme_routing_formula_is_the_gates() -> None:
    [block] = [b for b in VERBATIM if "def on_canary" in b.code]
    formula: dict[str, object] = {}
    exec(block.code, formula)
    bucket, on_canary = formula["bucket"], formula["on_canary"]
    assert callable(bucket) and callable(on_canary)
    with open(ROOT / "tests" / "data" / "bucket_vectors.csv", newline="") as vectors:
        for row in csv.DictReader(vectors):
            assert bucket(row["rollout"], row["session_id"]) == int(row["bucket"]), row
    gate = PromotionGate(PromotionConfig(name="checkout", environment=Environment.canary(12.5)))
    for n in range(2000):
        session = f"user-{n}"
        assert gate.route_request(session).is_canary == on_canary("checkout", session, 12.5)
