"""What several test folders use: a clock to move by hand, the metric
points of a reader, the shared gates to close after each test, traffic to
feed a gate, a webhook receiver on 127.0.0.1, the command line run as a user
would."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gate_middleware import PromotionGate

TOKEN = "cli-token-0123456789abcdef"


CLI = str(Path(sys.executable).parent / "gate-middleware")


def run(url: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_MIDDLEWARE_")}
    env["GATE_MIDDLEWARE_URL"] = url
    if token is not None:
        env["GATE_MIDDLEWARE_TOKEN"] = token
    env["COLUMNS"] = "160"
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


SECRET = "a-webhook-secret-of-some-length"


class Receiver:
    """An HTTP server that records each POST and checks its signature."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(self.headers["X-Gate-Signature-256"], expected):
                    receiver.bad_signatures += 1
                receiver.received.append(
                    {
                        "path": self.path,
                        "delivery": self.headers["X-Gate-Delivery"],
                        "event": self.headers["X-Gate-Event"],
                        "authorization": self.headers["Authorization"],
                        "body": json.loads(body),
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def healthy_traffic(gate: PromotionGate) -> None:
    feed(gate, "canary", 200, error_every=50)
    feed(gate, "stable", 200, error_every=50)


def feed(
    gate: PromotionGate,
    variant: str,
    count: int,
    *,
    error_every: int = 0,
    duration: float = 0.05,
) -> None:
    for i in range(count):
        failed = bool(error_every) and i % error_every == 0
        gate.record_request_outcome(f"{variant}-{i}", not failed, duration, variant=variant)


class FakeClock:
    """A monotonic clock that tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[object]]:
    """{instrument name: [data points]} from one collection."""
    found: dict[str, list[object]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


OPEN_GATES: list[PromotionGate] = []
