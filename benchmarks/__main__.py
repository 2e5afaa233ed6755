"""Run every benchmark and print (and save) the tables.

    python -m benchmarks            # everything, a few minutes
    python -m benchmarks --quick    # fewer repetitions, no 10^7 gate, shorter wrk runs

Groups: routing against the raw sha256 floor and against GrowthBook,
OpenFeature and UnleashClient doing the same 10 % rollout; recording;
monitor_canary_health after 10^3, 10^5 and 10^7 outcomes; full in-process
requests (Starlette over ASGI, Flask and Django over WSGI) bare, with the
gate (metrics API only, and with the OpenTelemetry SDK) and with
OpenTelemetry's own instrumentation; what each extra rollout of a
``Rollouts`` costs a request (routing, recording, metrics, memory) against
one SHA-256; loopback throughput with wrk.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from importlib import metadata
from pathlib import Path

import gate_middleware
from benchmarks import gate_bench, loopback, requests_bench, rollout_cost

RESULTS = Path(__file__).parent / "results"


def versions() -> str:
    names = [
        "gate-middleware",
        "opentelemetry-sdk",
        "starlette",
        "flask",
        "django",
        "uvicorn",
        "gunicorn",
        "growthbook",
        "openfeature-sdk",
        "UnleashClient",
        "opentelemetry-instrumentation-asgi",
        "opentelemetry-instrumentation-wsgi",
    ]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    parser.add_argument("--skip-loopback", action="store_true", help="no wrk runs")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()

    header = (
        f"gate-middleware benchmarks, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()} ({sys.implementation.name}), "
        f"{__import__('os').cpu_count()} cores\n"
        f"versions: {versions()}\n"
        f"build: {'compiled (mypyc)' if gate_middleware.COMPILED else 'pure Python'}\n"
    )
    print(header, flush=True)
    sections = [header]
    for run in (gate_bench.run, requests_bench.run, rollout_cost.run):
        for section in run(quick=args.quick):
            print(section, flush=True)
            sections.append(section)
    if not args.skip_loopback:
        for section in loopback.run(quick=args.quick):
            print(section, flush=True)
            sections.append(section)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M")
        path = RESULTS / f"{stamp}{'-quick' if args.quick else ''}.txt"
        path.write_text("\n".join(sections), encoding="utf-8")
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
