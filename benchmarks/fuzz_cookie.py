"""Coverage-guided fuzzing of the cookie, header and admin request parsing (atheris).

    python -m benchmarks.fuzz_cookie -runs=1000000          # a million inputs
    python -m benchmarks.fuzz_cookie -max_total_time=600    # or ten minutes
    python -m benchmarks.fuzz_cookie crash-<hash>            # replay one input

The arguments are libFuzzer's. Needs atheris (``pip install atheris``, in the
``test`` extra on Linux). Each input is turned into a ``Cookie`` header (raw
bytes, or a structured ``id.issued.signature`` value signed with the current
secret, an old one from ``secret_fallbacks`` or a wrong one, quoted or
repeated), the QA override headers, a set of response headers, and an admin
request (method, path, ``Authorization``, ``Content-Type``, body). Each goes
through:

- ``SessionCookie.read_and_check``: must not raise, must return ``None`` or a
  well-formed id, and must take less than ``MAX_PARSE_SECONDS`` (a campaign
  here is a measurement; ``GATE_FUZZ_TIMED=0``, as the test suite's bounded
  run sets it, leaves the clock out and checks the rest);
- a full request through ``GateWSGIMiddleware`` and ``GateASGIMiddleware``
  (several ``Cookie`` headers under ASGI): a 200 from the app, never a
  fail-open fault, a well-formed ``Set-Cookie`` when one is set, with
  ``Vary: Cookie`` and ``Cache-Control: private``;
- ``private_response_headers`` on fuzzed response headers;
- ``AdminAPI.handle``: never raises, never a 5xx, always a JSON error body.

Any failure raises, and atheris saves the input as ``crash-<hash>`` (in
``-artifact_prefix``). Inputs that broke something are kept as regression
cases in ``tests/web/test_security.py``. ``tests/web/test_fuzz.py`` runs a bounded
number of inputs in the test suite.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time
from typing import Any

import atheris

with atheris.instrument_imports(include=["gate_middleware", "werkzeug"]):
    from gate_middleware import (
        Environment,
        GateASGIMiddleware,
        GateWSGIMiddleware,
        PromotionConfig,
        PromotionGate,
    )
    from gate_middleware.operate.admin import AdminAPI
    from gate_middleware.web.lifecycle import private_response_headers
    from gate_middleware.web.session import SessionCookie

SECRET = "fuzz-current-secret-0123456789"
OLD_SECRET = "fuzz-previous-secret-0123456789"
WRONG_SECRET = "fuzz-wrong-secret-012345678901"
OVERRIDE_TOKEN = "fuzz-override-token-0123456789"
ADMIN_TOKEN = "fuzz-admin-token-0123456789abc"
MAX_PARSE_SECONDS = 0.05  # a header of up to 16 KB; linear parsing takes well under 1 ms
TIMED = os.environ.get("GATE_FUZZ_TIMED", "1") != "0"
_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
DIGITS = list("0123456789\xb2\xb3\xb9\u0660\u0661\u06f1\u0967\uff11\U0001d7ce")

OPTIONS: dict[str, Any] = {
    "secret": SECRET,
    "secret_fallbacks": [OLD_SECRET],
    "override_token": OVERRIDE_TOKEN,
}
GATE = PromotionGate(PromotionConfig(environment=Environment.canary(50), feature_flags=["f"]))
READER = SessionCookie(secret=SECRET, secret_fallbacks=[OLD_SECRET])
ADMIN = AdminAPI(GATE, token=ADMIN_TOKEN)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


WSGI = GateWSGIMiddleware(_wsgi_app, gate=GATE, **OPTIONS)
ASGI = GateASGIMiddleware(_asgi_app, gate=GATE, **OPTIONS)


def signature(secret: str, payload: str) -> str:
    """The signature the cookie carries (the format in gate_middleware.web.session)."""
    key = hashlib.sha256(b"gate_middleware.session\x00" + secret.encode()).digest()
    digest = hmac.new(key, payload.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def cookie_header(fdp: Any) -> str:
    """A Cookie header as a server hands it over (a latin-1 str, PEP 3333)."""
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048)).decode("latin-1")
    session_id = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if fdp.ConsumeBool():
        session_id = "A" * 16 + session_id[:10]
    issued = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 14))
    if fdp.ConsumeBool():
        issued = str(int(time.time()) - fdp.ConsumeIntInRange(-1000, 10**8))
    elif fdp.ConsumeBool():  # digits, ASCII or not: str.isdigit() takes them all
        issued = "".join(fdp.PickValueInList(DIGITS) for _ in range(fdp.ConsumeIntInRange(1, 13)))
    secret = fdp.PickValueInList([SECRET, OLD_SECRET, WRONG_SECRET])
    value = f"{session_id}.{issued}.{signature(secret, f'{session_id}.{issued}')}"
    if fdp.ConsumeBool():
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    pairs = [f"gate_session={value}"]
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        pairs.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 30)))
    header = fdp.PickValueInList(["; ", ";", ", "]).join(pairs)
    try:
        header.encode("latin-1")  # as a server hands it over, byte for byte
    except UnicodeEncodeError:
        # Text past latin-1 cannot arrive from a server: it comes as its UTF-8 bytes.
        return header.encode("utf-8", "surrogatepass").decode("latin-1")
    return header


def parse_seconds(header: str) -> float:
    started = time.perf_counter()
    READER.read_and_check(header)
    return time.perf_counter() - started


def check_reader(header: str) -> None:
    session_id, sign_again = READER.read_and_check(header)
    if TIMED and parse_seconds(header) > MAX_PARSE_SECONDS:
        # The best of five, so a busy machine's pause is not taken for the parser.
        elapsed = min(parse_seconds(header) for _ in range(5))
        if elapsed > MAX_PARSE_SECONDS:
            raise AssertionError(f"parsing a {len(header)}-character header took {elapsed:.3f} s")
    if session_id is not None and not _ID.fullmatch(session_id):
        raise AssertionError(f"a malformed id came out: {session_id!r}")
    if sign_again and session_id is None:
        raise AssertionError("asked to sign no session again")


def check_set_cookie(headers: list[tuple[str, str]]) -> None:
    cookies = [value for name, value in headers if name.lower() == "set-cookie"]
    if not cookies:
        return
    [cookie] = cookies
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    if READER.read_and_check(f"gate_session={value}") == (None, False):
        raise AssertionError(f"a Set-Cookie the middleware cannot read back: {cookie!r}")
    names = {name.lower(): value for name, value in headers}
    if "cookie" not in names.get("vary", "").lower() or "private" not in names.get(
        "cache-control", ""
    ):
        raise AssertionError(f"a cookie-setting response a shared cache may keep: {headers!r}")


def check_wsgi(header: str, variant: str, token: str) -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.url_scheme": "http",
        "HTTP_COOKIE": header,
        "HTTP_X_GATE_VARIANT": variant,
        "HTTP_X_GATE_OVERRIDE_TOKEN": token,
    }
    seen: list[Any] = []
    body = WSGI(environ, lambda status, headers, exc_info=None: seen.append((status, headers)))
    content = b"".join(body)
    body.close()  # type: ignore[attr-defined]
    [(status, headers)] = seen
    decision = environ["gate_middleware.decision"]
    if status != "200 OK" or content != b"ok" or decision.reason.startswith("fail open"):
        raise AssertionError(f"WSGI: {status} {decision.reason}")
    check_set_cookie(headers)


def check_asgi(cookies: list[bytes], variant: bytes, token: bytes) -> None:
    headers = [(b"cookie", c) for c in cookies]
    headers += [(b"x-gate-variant", variant), (b"x-gate-override-token", token)]
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    coroutine = ASGI(scope, receive, send)
    try:
        coroutine.send(None)  # nothing here waits: one step runs it to the end
    except StopIteration:
        pass
    else:
        raise AssertionError("the ASGI middleware waited on nothing")
    decision = scope["state"]["gate"]
    if sent[0]["status"] != 200 or decision.reason.startswith("fail open"):
        raise AssertionError(f"ASGI: {sent[0]['status']} {decision.reason}")
    check_set_cookie([(n.decode("latin-1"), v.decode("latin-1")) for n, v in sent[0]["headers"]])


def check_response_headers(fdp: Any) -> None:
    headers = [
        (
            fdp.PickValueInList(["Vary", "vary", "Cache-Control", "cache-control", "X-Other"]),
            fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 60)),
        )
        for _ in range(fdp.ConsumeIntInRange(0, 4))
    ]
    result = private_response_headers(headers)
    varies = [v.lower() for n, v in result if n.lower() == "vary"]
    controls = [v.lower() for n, v in result if n.lower() == "cache-control"]
    if not any("cookie" in v or "*" in v for v in varies):
        raise AssertionError(f"no Vary: Cookie in {result!r}")
    if not any("private" in v or "no-store" in v for v in controls):
        raise AssertionError(f"no Cache-Control: private in {result!r}")


def check_admin(fdp: Any) -> None:
    method = fdp.PickValueInList(["GET", "POST", "HEAD", "PUT", "DELETE", "get", ""])
    path = fdp.PickValueInList(
        ["/status", "/history", "/promote", "/traffic", "/canary", "/rollback", "/flags/f/disable"]
    )
    if fdp.ConsumeBool():
        path = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    authorization = fdp.PickValueInList(
        [f"Bearer {ADMIN_TOKEN}", f"bearer  {ADMIN_TOKEN}", "", "Bearer", None]
    )
    if fdp.ConsumeBool():
        authorization = fdp.ConsumeBytes(60).decode("latin-1")
    content_type = fdp.PickValueInList(
        ["application/json", "application/json; charset=utf-8", "text/plain", "", None]
    )
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    response = ADMIN.handle(method, path, authorization, body, content_type)
    if response.status >= 500:
        raise AssertionError(f"admin: {response.status} {response.body[:200]!r}")
    if response.status >= 400 and "error" not in json.loads(response.body):
        raise AssertionError(f"admin: an error without a message: {response.body[:200]!r}")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    header = cookie_header(fdp)
    variant = fdp.PickValueInList(["canary", "stable", "", "CANARY"])
    token = fdp.PickValueInList([OVERRIDE_TOKEN, OVERRIDE_TOKEN[:-1], ""])
    check_reader(header)
    check_wsgi(header, variant, token)
    extra = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    check_asgi([header.encode("latin-1"), extra], variant.encode(), token.encode())
    check_response_headers(fdp)
    check_admin(fdp)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
