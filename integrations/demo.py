"""The demo: a whole release through the gate, in one command.

``gate-middleware demo`` starts a real Starlette app wrapped in the gate's
middleware under uvicorn on 127.0.0.1 (a free port) with two worker
processes, which share one rollout through a SQLite file (a temporary one,
deleted at the end), with the admin API and dashboard mounted at ``/gate``,
and drives bounded traffic from many simulated users over real HTTP. Either
worker may make a step: the timeline says which did. The gate carries a rollout plan, time
compressed (seconds of bake instead of hours); the demo only starts the
release (``POST /gate/canary``) and watches. Nobody steers it:

- ``--scenario healthy``: the plan ramps 5 % → 10 % → 25 % → 50 % → staging →
  production by itself, each step once it has baked and the judge says
  HEALTHY with enough data;
- ``--scenario faulty``: the canary's path has extra errors and latency, and
  the judge rolls it back at its first step;
- ``--scenario manual``: the plan stops at a manual gate (25 %); the demo
  prints the command that lets it through, then runs that command's request
  itself (as the operator would) and the plan goes on to production;
- ``--scenario metric``: every response is quick and successful, but on the
  canary's path no checkout completes: the app reports ``checkout_completed``
  with ``track()``, and the guardrail on it rolls the release back.

The app itself is ``create_app()`` (run by uvicorn in its own process).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import math
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

try:
    import uvicorn  # noqa: F401 - the server the demo runs
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f'the demo needs: pip install "gate-middleware[demo]" ({exc})') from exc

from gate_middleware import Environment, PromotionConfig, PromotionGate, SloConfig
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.integrations.starlette import GateMiddleware
from gate_middleware.operate.admin import AdminASGIApp
from gate_middleware.operate.cli import (
    AdminClient,
    AdminError,
    environment_label,
    event_line,
    outcome,
    printable,
    progress_line,
    render_status,
)

FLAG = "new_checkout_flow"
TOKEN_ENV = "GATE_DEMO_TOKEN"
SCENARIO_ENV = "GATE_DEMO_SCENARIO"
BAKE_ENV = "GATE_DEMO_BAKE_SECONDS"
STORE_ENV = "GATE_DEMO_STORE"
SECRET_ENV = "GATE_DEMO_SECRET"  # signs the session cookie, as a real app's secret does
WORKERS = 2
WORKER_PID = re.compile(rb'"worker":(\d+)')
PLAN_STEPS = (5, 10, 25, 50)
BASE_LATENCY = 0.008
BASE_ERRORS = 0.003
FAULTY_ERRORS = 0.15
FAULTY_EXTRA_LATENCY = 0.030
PURCHASE_RATE = 0.15  # a visit to /checkout that completes an order
METRIC = "checkout_completed"


def create_app() -> Starlette:
    """The demo shop: ``/checkout`` reads the flag; ``/gate`` is the admin API."""
    scenario = os.environ.get(SCENARIO_ENV)
    faulty = scenario == "faulty"
    broken_checkout = scenario == "metric"
    bake = float(os.environ.get(BAKE_ENV, "3"))
    steps: list[Any] = list(PLAN_STEPS)
    if scenario == "manual":
        steps[2] = {"traffic_percent": steps[2], "manual": True}
    plan = RolloutPlan(
        steps=steps,
        bake_seconds=bake,
        staging_bake_seconds=bake,
        inconclusive_limit_seconds=bake * 20,
    )
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.PRODUCTION,
            name="demo-shop",
            store=os.environ.get(STORE_ENV),  # the workers' shared file
            rollback_window_seconds=10,
            min_requests=40,
            evaluation_interval_seconds=0.5,
            plan=plan,
            # The metric scenario judges the shop's orders too (the others
            # keep the plan's timing as it was: a guardrail waits for sessions).
            metrics=[
                MetricDefinition(METRIC, tolerance=0.05),
                MetricDefinition("order_value", kind="mean", guardrail=False),
            ]
            if broken_checkout
            else [],
        ),
        SloConfig(latency_objective_seconds=0.1),
    )
    rng = random.Random()

    async def checkout(request: Request) -> JSONResponse:
        decision = request.state.gate
        latency = rng.lognormvariate(math.log(BASE_LATENCY), 0.25)
        error_rate = BASE_ERRORS
        if faulty and decision.is_canary:
            latency += FAULTY_EXTRA_LATENCY
            error_rate = FAULTY_ERRORS
        await asyncio.sleep(latency)
        # An order: a metric the business counts, not an error or a slow answer.
        if (
            broken_checkout
            and rng.random() < PURCHASE_RATE
            and not decision.is_canary  # the release breaks the order silently
        ):
            decision.track(METRIC)
            decision.track("order_value", round(rng.lognormvariate(3.5, 0.8), 2))
        body = {
            "variant": decision.variant,
            "checkout": "new" if decision.is_enabled(FLAG) else "old",
            "worker": os.getpid(),
        }
        return JSONResponse(body, status_code=500 if rng.random() < error_rate else 200)

    app = Starlette(
        routes=[
            Route("/checkout", checkout),
            Mount("/gate", AdminASGIApp(gate, token=os.environ.get(TOKEN_ENV))),
        ]
    )
    app.add_middleware(
        GateMiddleware, gate=gate, exclude_paths=["/gate"], secret=os.environ.get(SECRET_ENV)
    )
    return app


class Traffic:
    """Simulated users over real HTTP: each keeps its cookie for a few
    requests, then leaves and a new one arrives."""

    def __init__(self, port: int, users: int, threads: int = 8) -> None:
        self.port = port
        self.users = max(1, users)
        self.threads = max(1, min(threads, self.users))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.workers: Counter[int] = Counter()  # requests answered per worker process
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def close(self) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        mine = range(number, self.users, self.threads)
        cookies: dict[int, str | None] = {user: None for user in mine}
        left: dict[int, int] = {user: rng.randint(3, 12) for user in mine}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            for user in mine:
                if self.stop.is_set():
                    break
                headers = {"Cookie": cookies[user]} if cookies[user] else {}
                try:
                    connection.request("GET", "/checkout", headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    with self.lock:
                        self.counts["connection errors"] += 1
                    time.sleep(0.05)
                    continue
                cookie = response.getheader("set-cookie")
                if cookie:
                    cookies[user] = cookie.split(";", 1)[0]
                variant = "canary" if b'"variant":"canary"' in body else "stable"
                worker = WORKER_PID.search(body)
                with self.lock:
                    self.counts[variant] += 1
                    if worker is not None:
                        self.workers[int(worker.group(1))] += 1
                    if response.status >= 500:
                        self.counts[f"{variant} errors"] += 1
                left[user] -= 1
                if left[user] <= 0:  # this user leaves; a new one arrives
                    cookies[user] = None
                    left[user] = rng.randint(3, 12)
                    if rng.random() < 0.2:  # on a new connection: any worker may take it
                        connection.close()
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    port: int, token: str, scenario: str, store: str, bake_seconds: float = 3.0
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "gate_middleware.integrations.demo:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={
            **os.environ,
            TOKEN_ENV: token,
            SCENARIO_ENV: scenario,
            BAKE_ENV: str(bake_seconds),
            STORE_ENV: store,
            SECRET_ENV: secrets.token_urlsafe(32),
        },
        start_new_session=True,
    )


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def wait_until_up(client: AdminClient, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the demo server exited with {server.returncode}")
        try:
            client.status()
            return
        except (OSError, AdminError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Progress:
    """A live view on a terminal; a line every 2 s otherwise."""

    def __init__(self, console: Console, traffic: Traffic) -> None:
        self.console = console
        self.traffic = traffic
        self.step = ""
        self._live: Live | None = None
        self._last_line = 0.0

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def show(self, status: dict[str, Any]) -> None:
        with self.traffic.lock:
            counts = dict(self.traffic.counts)
        sent = Text(
            f"sent: {counts.get('canary', 0)} canary ({counts.get('canary errors', 0)} errors), "
            f"{counts.get('stable', 0)} stable ({counts.get('stable errors', 0)} errors)",
            "dim",
        )
        if self._live is not None:
            view = Group(Text(self.step, "bold cyan"), render_status(status), sent)
            self._live.update(view, refresh=True)
            return
        now = time.monotonic()
        if now - self._last_line >= 2.0:
            self._last_line = now
            health = status["health"]
            self.console.print(
                f"[{self.step}] {environment_label(status['environment'])}: "
                f"canary {health['canary_requests']} req, {health['canary_error_rate']:.1%} err, "
                f"p99 {health['canary_p99_latency'] * 1000:.1f} ms | production "
                f"{health['production_requests']} req, {health['production_error_rate']:.1%} err, "
                f"p99 {health['production_p99_latency'] * 1000:.1f} ms | "
                f"health {health['health_score']:.2f} {health['verdict']}",
                markup=False,
                soft_wrap=True,
            )


def watch_the_plan(
    client: AdminClient, progress: Progress, deadline: float, *, token: str, manual: bool
) -> dict[str, Any] | None:
    """Start the release and watch the plan carry it out; the last event once
    it reached production or was rolled back (the scenario decides which is
    right), ``None`` if the time ran out."""
    client.call("startCanary", {"percent": PLAN_STEPS[0], "flags": [FLAG]})
    announced = False
    while time.monotonic() < deadline:
        status = client.status()
        progress.step = progress_line(status)
        progress.show(status)
        # Either worker may answer; one that has not yet seen the release
        # (its follower reads the file every 0.25 s) still shows production.
        started = any(e.get("action") == "start_canary" for e in status["recent_events"])
        if started and outcome(status) is not None:
            last: dict[str, Any] = status["recent_events"][-1]
            return last
        position = (status.get("plan") or {}).get("position") or {}
        if manual and position.get("awaiting") and not announced:
            announced = True
            progress.console.print(
                "The plan waits at a manual gate. To let it through, an operator runs:\n"
                f"  gate-middleware --url {client.url} --token {token} plan resume\n"
                "(the demo now sends that request itself)",
                markup=False,
                soft_wrap=True,
            )
            time.sleep(1.0)
            client.call("resumePlan", {})
        time.sleep(0.25)
    return None


def settled(client: AdminClient, last: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """The status and the history once the answering worker has read ``last``
    (the event the outcome was seen in): either worker may answer, and one
    may not have read the file yet (its follower reads it every 0.25 s)."""
    deadline = time.monotonic() + 5
    while True:
        status, history = client.status(), client.history()
        events = status["recent_events"]
        agreed = last is None or (history[-1:] == [last] and events[-1:] == [last])
        if agreed or time.monotonic() > deadline:
            return status, history
        time.sleep(0.1)


def plan_timeline(events: list[dict[str, Any]], started: float) -> list[str]:
    """(step, time entered, verdict) of each step the release went through."""
    lines = []
    entered: dict[str, Any] | None = None
    for event in events:
        if event["kind"] == "rollback" or event["action"] in (
            "start_canary",
            "plan_step",
            "retry",
            "skip",
            "promote",
            "set_traffic",
        ):
            if entered is not None:
                verdict = (event.get("health") or {}).get("verdict", "-")
                lines[-1] += f"  left on {verdict} ({event.get('actor', '')}{made_in(event)})"
            target = (
                "production (rolled back)"
                if event["kind"] == "rollback"
                else environment_label(event["to_environment"])
            )
            at = datetime.fromisoformat(event["timestamp"]).timestamp() - started
            lines.append(f"  {target:<26} entered at {at:6.1f} s")
            entered = event
    return lines


def made_in(event: dict[str, Any]) -> str:
    """``, worker <pid>`` of the process that made ``event``."""
    pid = str(event.get("process", "")).rpartition(":")[2]
    return f", worker {pid}" if pid else ""


def verify_everyone_gets_the_flag(port: int, users: int) -> bool:
    for _ in range(users):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/checkout")
        body = connection.getresponse().read()
        connection.close()
        if b'"checkout":"new"' not in body:
            return False
    return True


def run_demo(scenario: str, duration: float, users: int, keep_serving: bool, port: int) -> int:
    """Run one scenario; 0 when it ended as it should, 1 otherwise."""
    console = Console(highlight=False, soft_wrap=True)
    port = port or free_port()
    token = secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    client = AdminClient(f"{base}/gate", token)
    bake = max(1.0, duration / 16)
    directory = tempfile.TemporaryDirectory(prefix="gate-demo-")
    store = f"sqlite://{directory.name}/demo-shop.db"
    server = start_server(port, token, scenario, store, bake)
    started = time.monotonic()
    started_wall = time.time()
    deadline = started + duration
    traffic = Traffic(port, users)
    ok = False
    # SIGTERM (a pipeline's timeout, kill) ends the demo as Ctrl-C does: through
    # the finally below, which stops the server's process group.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        wait_until_up(client, server, timeout=30)
        console.print(
            f"gate-middleware demo ({scenario}): the app serves {base}/checkout "
            f"from {WORKERS} worker processes sharing {store}"
        )
        console.print(f"dashboard: {base}/gate/#token={token}")
        traffic.start()
        console.print(
            f"plan: {' -> '.join(f'{p}%' for p in PLAN_STEPS)} -> staging -> production, "
            f"{bake:g} s of bake per step"
        )
        with Progress(console, traffic) as progress:
            last = watch_the_plan(
                client, progress, deadline, token=token, manual=scenario == "manual"
            )
        traffic.close()
        status, history = settled(client, last)
        ok = summarise(
            console,
            status,
            history,
            traffic,
            scenario,
            port,
            users,
            last is not None,
            time.monotonic() - started,
        )
        console.print("Plan timeline:")
        for line in plan_timeline(history, started_wall):
            console.print(line, markup=False, soft_wrap=True)
        if keep_serving:
            console.print(
                f"still serving; the dashboard is at {base}/gate/#token={token} (Ctrl-C stops)"
            )
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    finally:
        traffic.close()
        stop_server(server)
        directory.cleanup()
        signal.signal(signal.SIGTERM, previous)
    return 0 if ok else 1


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def summarise(
    console: Console,
    status: dict[str, Any],
    history: list[dict[str, Any]],
    traffic: Traffic,
    scenario: str,
    port: int,
    users: int,
    reached: bool,
    elapsed: float,
) -> bool:
    counts = traffic.counts
    console.print()
    console.print(f"Summary after {elapsed:.1f} s")
    console.print(
        f"  requests sent: {counts['canary']} canary ({counts['canary errors']} errors), "
        f"{counts['stable']} stable ({counts['stable errors']} errors), "
        f"{counts['connection errors']} connection errors"
    )
    with traffic.lock:
        served = ", ".join(f"worker {pid}: {n}" for pid, n in sorted(traffic.workers.items()))
    console.print(f"  answered by {len(traffic.workers)} workers ({served})")
    console.print(f"Final environment: {environment_label(status['environment'])}")
    console.print("History:")
    for event in history:
        console.print(printable(f"  {event_line(event)}"))
    ok = reached
    if scenario in ("healthy", "manual"):
        everyone = (
            reached
            and FLAG in status["flags"]["stable"]
            and verify_everyone_gets_the_flag(port, users)
        )
        if everyone:
            console.print(f"{FLAG} is on for every session")
        ok = ok and everyone
    else:
        rollbacks = [e for e in history if e["kind"] == "rollback" and e["automatic"]]
        if rollbacks:
            console.print(
                printable(
                    f"Rolled back automatically, {len(rollbacks)} time(s) by "
                    f"{WORKERS} workers{made_in(rollbacks[-1])}: {rollbacks[-1]['reason']}"
                )
            )
        ok = ok and len(rollbacks) == 1 and FLAG not in status["flags"]["stable"]
        if scenario == "metric":  # rolled back by the guardrail, not by errors or latency
            ok = ok and f"metric {METRIC}" in rollbacks[-1]["reason"]
    console.print("RESULT: OK" if ok else "RESULT: FAILED (the scenario did not end as it should)")
    return ok
