"""Loopback throughput with wrk: uvicorn (uvloop + httptools, 1 worker)
serving Starlette, and gunicorn serving Flask, each bare and with the gate.

Only 127.0.0.1, bounded durations; servers are started here and stopped by
PID. Reports requests per second and the server's CPU time per request.
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


def cpu_seconds(pid: int) -> float:
    process = psutil.Process(pid)
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return total


def measure(args: list[str], env: dict[str, str], port: int, seconds: int) -> tuple[float, float]:
    """(requests per second, server CPU µs per request)."""
    server = subprocess.Popen(
        args,
        cwd=HERE,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(port)
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["wrk", "-t1", "-c16", "-d1s", url], capture_output=True, timeout=30)  # warm
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [
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
        cpu = cpu_seconds(server.pid) - before
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return rps, cpu / total * 1e6
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
    lines = [
        "Loopback throughput (wrk -t1 -c16, 127.0.0.1; medians of "
        f"{rounds} interleaved {seconds} s runs)",
        "",
        f"  {'server':<22} {'app':<30} {'req/s':>10} {'× bare':>8} {'server CPU µs/req':>18}",
    ]
    for server, command in servers.items():
        envs: dict[str, dict[str, str]] = {"bare": {"GATE_BENCH_WITH_GATE": ""}}
        if builds is not None:
            envs["a do-nothing middleware"] = {"GATE_BENCH_WITH_GATE": "passthrough"}
        if builds is None:
            envs["with gate (metrics API only)"] = {"GATE_BENCH_WITH_GATE": "1"}
        for name, folder in (builds or {}).items():
            envs[f"with gate, {name}"] = {"GATE_BENCH_WITH_GATE": "1", "PYTHONPATH": folder}
        samples: dict[str, list[tuple[float, float]]] = {variant: [] for variant in envs}
        for _ in range(rounds):
            for variant, env in envs.items():
                port = free_port()
                samples[variant].append(measure(command(port), env, port, seconds))
        bare_rps = sorted(r for r, _ in samples["bare"])[len(samples["bare"]) // 2]
        for variant, values in samples.items():
            rps = sorted(r for r, _ in values)[len(values) // 2]
            cpu = sorted(c for _, c in values)[len(values) // 2]
            lines.append(
                f"  {server:<22} {variant:<30} {rps:>10,.0f} {rps / bare_rps:>8.2f} {cpu:>18,.1f}"
            )
    return ["\n".join(lines) + "\n"]


def main() -> int:
    """``python -m benchmarks.loopback [--quick] [REV ...]``: bare, a
    do-nothing middleware, and the gate of each revision (default ``.
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
