"""Loopback throughput with wrk: uvicorn (uvloop + httptools, 1 worker)
serving Starlette, and gunicorn serving Flask, each bare and with the gate.

Only 127.0.0.1, bounded durations; servers are started here and stopped by
PID. Reports requests per second and the server's CPU time per request
(user and system). Where ``taskset`` and two CPUs are available the server
runs on one and wrk on the other, so they do not take turns on a core.

Beside bare and the gate, the uvicorn rows include a middleware that does
nothing and middlewares that burn 2, 5 and 10 µs of CPU per request on a
warm cache: a calibration, in the same run, of what a middleware of known
in-process cost costs the loaded server (see ``benchmarks/PROFILE.md``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


BURNS_US = (2, 5, 10)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a server and its workers."""
    process = psutil.Process(pid)
    times = [process.cpu_times()]
    times += [child.cpu_times() for child in process.children(recursive=True)]
    return sum(t.user for t in times), sum(t.system for t in times)


def pinning() -> tuple[list[str], list[str]]:
    """Command prefixes that put the server and wrk on two different CPUs."""
    if shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"):
        return [], []
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], []
    return ["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])]


def measure(
    args: list[str], env: dict[str, str], port: int, seconds: int
) -> tuple[float, float, float]:
    """(requests per second, server user CPU µs per request, system µs)."""
    on_server, on_client = pinning()
    server = subprocess.Popen(
        on_server + args,
        cwd=HERE,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(port)
        url = f"http://127.0.0.1:{port}/"
        warm = [*on_client, "wrk", "-t1", "-c16", "-d1s", url]
        subprocess.run(warm, capture_output=True, timeout=30)
        user_before, system_before = cpu_seconds(server.pid)
        out = subprocess.run(
            [
                *on_client,
                "wrk",
                "-t1",
                "-c16",
                f"-d{seconds}s",
                "-H",
                "Cookie: gate_session=wrk-session-0123456789abcd",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
        user, system = cpu_seconds(server.pid)
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return rps, (user - user_before) / total * 1e6, (system - system_before) / total * 1e6
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def run(quick: bool, builds: dict[str, str] | None = None) -> list[str]:
    """``builds``: name → a folder to import ``gate_middleware`` from (one
    gate row each, as ``benchmarks.compare.export`` makes them); by default
    the one row of the installed package."""
    if shutil.which("wrk") is None:
        return ["Loopback throughput: skipped (wrk is not installed: apt-get install wrk)\n"]
    seconds = 3 if quick else 8
    rounds = 1 if quick else 3
    py = sys.executable
    servers = {
        "uvicorn + Starlette": lambda port: [
            py,
            "-m",
            "uvicorn",
            "loopback_apps:starlette_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        "gunicorn + Flask": lambda port: [
            py,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "loopback_apps:flask_app",
        ],
    }
    pinned = " (server and wrk on separate CPUs)" if pinning()[0] else ""
    lines = [
        f"Loopback throughput (wrk -t1 -c16, 127.0.0.1{pinned}; medians of "
        f"{rounds} interleaved {seconds} s runs)",
        "",
        f"  {'server':<20} {'app':<32} {'req/s':>9} {'× bare':>7} "
        f"{'CPU µs/req: user':>17} {'sys':>6} {'added':>6}",
    ]
    for server, command in servers.items():
        envs: dict[str, dict[str, str]] = {
            "bare": {"GATE_BENCH_WITH_GATE": ""},
            "a do-nothing middleware": {"GATE_BENCH_WITH_GATE": "passthrough"},
        }
        if server.startswith("uvicorn"):
            for burn in BURNS_US:
                envs[f"a middleware burning {burn} µs"] = {"GATE_BENCH_WITH_GATE": f"burn:{burn}"}
        if builds is None:
            envs["with gate (metrics API only)"] = {"GATE_BENCH_WITH_GATE": "1"}
        for name, folder in (builds or {}).items():
            envs[f"with gate, {name}"] = {"GATE_BENCH_WITH_GATE": "1", "PYTHONPATH": folder}
        samples: dict[str, list[tuple[float, float, float]]] = {variant: [] for variant in envs}
        for _ in range(rounds):
            for variant, env in envs.items():
                port = free_port()
                samples[variant].append(measure(command(port), env, port, seconds))

        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        bare_rps = median([r for r, _, _ in samples["bare"]])
        bare_cpu = median([u for _, u, _ in samples["bare"]])
        bare_cpu += median([s for _, _, s in samples["bare"]])
        for variant, values in samples.items():
            rps = median([r for r, _, _ in values])
            user, system = median([u for _, u, _ in values]), median([s for _, _, s in values])
            lines.append(
                f"  {server:<20} {variant:<32} {rps:>9,.0f} {rps / bare_rps:>7.2f} "
                f"{user:>17,.1f} {system:>6,.1f} {user + system - bare_cpu:>+6,.1f}"
            )
    return ["\n".join(lines) + "\n"]


def main() -> int:
    """``python -m benchmarks.loopback [--quick] [REV ...]``: bare, a
    do-nothing middleware, the burning ones, and the gate of each revision (default ``.
    .+mypyc``: the working tree's pure-Python and compiled builds; ``main``
    for the main branch; each made in a temporary folder, as
    ``benchmarks.compare`` makes them)."""
    import argparse
    import tempfile

    from benchmarks.compare import export

    parser = argparse.ArgumentParser(prog="python -m benchmarks.loopback")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("revisions", nargs="*", default=[".", ".+mypyc"])
    args = parser.parse_args()
    names = {".": "pure Python", ".+mypyc": "compiled"}
    with tempfile.TemporaryDirectory() as tmp:
        builds = {}
        for number, revision in enumerate(args.revisions):
            folder = Path(tmp) / str(number)
            folder.mkdir()
            builds[names.get(revision, revision)] = str(export(revision, folder))
        for section in run(args.quick, builds):
            print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
