"""What each extra rollout costs a request, against the issue's target of
at most one SHA-256 per extra rollout.

    PYTHONPATH=. python -m benchmarks.rollout_cost           # about 3 minutes
    PYTHONPATH=. python -m benchmarks.rollout_cost --quick   # seconds (the test's)

``Rollouts`` of 1, 5 and 20 rollouts (each its own ``PromotionGate``, its
own name and one declared flag, a canary started at 10 %), returning
visitors with signed cookies, no network. In one run, interleaved rounds
(``benchmarks.timing``), medians:

- the request path's overhead: ``RequestLifecycle.begin`` + ``finish``
  against an empty loop, and a bare ASGI app against the same app in
  ``GateASGIMiddleware``, each with the no-op meter and with the
  OpenTelemetry SDK (a ``MeterProvider`` with an ``InMemoryMetricReader``);
- its parts, measured apart: the set's ``route_request``, its
  ``record_decision``, and the request metrics of each rollout's decision
  (each rollout's count, one histogram point for the set: ``RequestMetrics.record``,
  SDK; the no-op meter records nothing);
- one SHA-256 of a session id as routing does it (a copy of the hasher
  fed with the salt, update, digest), the unit of the "per extra rollout"
  column;
- the floor of what each extra rollout must do for a request, whatever the
  code around it: hash the session once (its own salt) and count the
  outcome once in its window (``SlidingWindow.record_bucket``: the
  dashboard's and the SLO's figures) and once in its judge's evidence
  (``Evidence.add``: the session groups the judge's tests need), each
  measured bare (no call chain, lock or decision object);
- memory: ``tracemalloc`` growth from building N rollouts and serving
  them some traffic, less the same with an empty set, per rollout.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import gate_middleware
from benchmarks import requests_bench
from benchmarks.timing import Result, interleaved, table
from gate_middleware import GateASGIMiddleware, PromotionConfig, PromotionGate, Rollouts
from gate_middleware.domain.environment import Environment
from gate_middleware.domain.routing import RoutingTable, compute_bucket
from gate_middleware.judge.evidence import CLUSTERS, Evidence
from gate_middleware.judge.sketch import bucket_index
from gate_middleware.stores.windows import SlidingWindow
from gate_middleware.web.lifecycle import RequestLifecycle
from gate_middleware.web.metrics import RequestMetrics
from gate_middleware.web.session import SessionCookie

PERCENT = 10.0
COUNTS = (1, 5, 20)
MEMORY_COUNTS = (1, 5, 20, 100)
SESSIONS = [f"bench-session-{i:06d}-abcdef" for i in range(1000)]
SECRET = "rollout-cost-benchmark-secret"
METERS = ("no-op meter", "OpenTelemetry SDK")

Case = Callable[[int], None]


def meter_provider(meter: str) -> MeterProvider:
    if meter == "no-op meter":
        return NoOpMeterProvider()
    return SdkMeterProvider(metric_readers=[InMemoryMetricReader()])


def build_rollouts(count: int, provider: MeterProvider) -> Rollouts:
    """``count`` rollouts, ``rollout-<i>`` declaring ``flag_<i>``, each a
    release of its flag in a canary at 10 % (configured in progress: a
    declared flag of a gate in production is on for everyone, and
    ``start_canary`` refuses to release it again)."""
    return Rollouts(
        PromotionGate(
            PromotionConfig(
                name=f"rollout-{i}",
                environment=Environment.canary(PERCENT),
                feature_flags=[f"flag_{i}"],
            ),
            meter_provider=provider,
        )
        for i in range(count)
    )


def lifecycle(rollouts: Rollouts, provider: MeterProvider) -> RequestLifecycle:
    return RequestLifecycle(rollouts, secret=SECRET, meter_provider=provider)


def signed_cookies() -> list[str]:
    """Returning visitors' ``Cookie`` headers: no response sets a cookie."""
    signer = SessionCookie(secret=SECRET)
    return [f"gate_session={signer.value_for(session)}" for session in SESSIONS]


def hashes_per_request(rollouts: Rollouts, session: str) -> int:
    """How many rollouts hashed ``session`` for one ``route_request``: the
    decision's parts (the decision itself for one rollout) whose bucket is
    the one the published formula gives under that rollout's name, one
    part per rollout of the set."""
    decision = rollouts.route_request(session)
    parts = decision.parts or (decision,)
    if [part.rollout for part in parts] != list(rollouts.names):
        raise RuntimeError(f"not one part per rollout: {[part.rollout for part in parts]}")
    return sum(part.bucket == compute_bucket(part.rollout, session) for part in parts)


# -- the cases ---------------------------------------------------------------------


def nothing_case() -> Case:
    """The loop alone: the lifecycle's baseline."""
    cookies = signed_cookies()

    def run(number: int) -> None:
        for i in range(number):
            _ = cookies[i % 1000]

    return run


def sha256_case() -> Case:
    """One SHA-256 of a session id exactly as ``RoutingTable.route`` takes it."""
    path = (False, Environment.PRODUCTION, (), frozenset[str](), "")
    hasher = RoutingTable("rollout-0", 0, path, path, 0).hasher

    def run(number: int) -> None:
        for i in range(number):
            copy = hasher.copy()
            copy.update(SESSIONS[i % 1000].encode())
            copy.digest()

    return run


def window_count_case() -> Case:
    """One outcome counted in one variant's window, bare."""
    window = SlidingWindow(300.0)
    index = bucket_index(0.012)

    def run(number: int) -> None:
        for i in range(number):
            window.record_bucket(True, True, index, 100.0 + (i & 1023) / 1024)

    return run


def evidence_count_case() -> Case:
    """One outcome counted in one variant's evidence (its session group), bare."""
    evidence = Evidence()
    index = bucket_index(0.012)

    def run(number: int) -> None:
        for i in range(number):
            evidence.add(1, False, False, index, i % CLUSTERS, None)

    return run


def route_case(rollouts: Rollouts) -> Case:
    route = rollouts.route_request

    def run(number: int) -> None:
        for i in range(number):
            route(SESSIONS[i % 1000])

    return run


def record_case(rollouts: Rollouts) -> Case:
    decisions = [rollouts.route_request(session) for session in SESSIONS]
    record = rollouts.record_decision

    def run(number: int) -> None:
        for i in range(number):
            record(decisions[i % 1000], True, 0.002, None)

    return run


def metrics_case(rollouts: Rollouts, provider: MeterProvider) -> Case:
    """The request metrics of one request, as ``finish`` emits them under a
    set: each rollout's count of its own decision, and one histogram point
    under the set's name."""
    decisions = [rollouts.route_request(session) for session in SESSIONS]
    instruments = {name: RequestMetrics(name, provider) for name in rollouts.names}
    timed = RequestMetrics(rollouts.name, provider)

    def run(number: int) -> None:
        for i in range(number):
            decision = decisions[i % 1000]
            for part in decision.parts or (decision,):
                instruments[part.rollout].record(
                    part, "GET", 200, None, None, 0.002, "http", timed=False
                )
            timed.record(decision, "GET", 200, None, None, 0.002, "http", counted=False)

    return run


def lifecycle_case(gated: RequestLifecycle) -> Case:
    cookies = signed_cookies()
    begin, finish = gated.begin, gated.finish

    def run(number: int) -> None:
        for i in range(number):
            request = begin(
                method="GET", cookie_header=cookies[i % 1000], https=False, request=None
            )
            finish(request, status=200)

    return run


async def bare_asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def asgi_case(app: Any) -> Case:
    """``app`` called directly with a scope, ``receive`` and ``send``: no server, no network."""
    return requests_bench.asgi_case(app, [cookie.encode() for cookie in signed_cookies()])


# -- the measurements ----------------------------------------------------------------

NOTHING = "nothing (the loop alone)"
SHA256 = "one SHA-256 of a session id (copy, update, digest)"
WINDOW_COUNT = "one outcome counted in a window (SlidingWindow)"
EVIDENCE_COUNT = "one outcome counted in the evidence (Evidence.add)"
BARE_ASGI = "bare ASGI app"


def lifecycle_label(count: int, meter: str) -> str:
    return f"begin + finish, {count:>2} rollouts, {meter}"


def asgi_label(count: int, meter: str) -> str:
    return f"GateASGIMiddleware, {count:>2} rollouts, {meter}"


def part_label(part: str, count: int) -> str:
    return f"{part}, {count:>2} rollouts"


def component_cases() -> dict[str, Case]:
    """The lifecycle against nothing, its parts, and the SHA-256: one group."""
    cases: dict[str, Case] = {
        NOTHING: nothing_case(),
        SHA256: sha256_case(),
        WINDOW_COUNT: window_count_case(),
        EVIDENCE_COUNT: evidence_count_case(),
    }
    for count in COUNTS:
        sdk = meter_provider("OpenTelemetry SDK")
        cases[part_label("route_request", count)] = route_case(
            build_rollouts(count, NoOpMeterProvider())
        )
        cases[part_label("record_decision", count)] = record_case(
            build_rollouts(count, NoOpMeterProvider())
        )
        cases[part_label("request metrics (SDK)", count)] = metrics_case(
            build_rollouts(count, sdk), sdk
        )
    for meter in METERS:
        for count in COUNTS:
            provider = meter_provider(meter)
            cases[lifecycle_label(count, meter)] = lifecycle_case(
                lifecycle(build_rollouts(count, provider), provider)
            )
    return cases


def asgi_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {BARE_ASGI: asgi_case(bare_asgi_app)}
    for meter in METERS:
        for count in COUNTS:
            provider = meter_provider(meter)
            app = GateASGIMiddleware(
                bare_asgi_app,
                gate=build_rollouts(count, provider),
                secret=SECRET,
                meter_provider=provider,
            )
            cases[asgi_label(count, meter)] = asgi_case(app)
    return cases


def memory_kib(count: int, meter: str, requests: int) -> float:
    """KiB that ``count`` rollouts hold (``tracemalloc``) once built into a
    ``Rollouts`` under a lifecycle and served ``requests`` requests."""
    cookies = signed_cookies()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        provider = meter_provider(meter)
        gated = lifecycle(build_rollouts(count, provider), provider)
        for i in range(requests):
            request = gated.begin(
                method="GET", cookie_header=cookies[i % 1000], https=False, request=None
            )
            gated.finish(request, status=200)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del gated, provider
    return (after - before) / 1024


def memory_per_rollout(counts: tuple[int, ...], requests: int) -> dict[str, dict[int, float]]:
    """KiB per rollout for each count and meter: the set's growth less an
    empty set's under the same traffic, divided by the count."""
    for meter in METERS:  # warm-up: imports, interned strings, caches
        memory_kib(2, meter, requests)
    result: dict[str, dict[int, float]] = {}
    for meter in METERS:
        empty = memory_kib(0, meter, requests)
        result[meter] = {
            count: (memory_kib(count, meter, requests) - empty) / count for count in counts
        }
    return result


# -- the report ----------------------------------------------------------------------


@dataclass
class Report:
    components: dict[str, Result]
    asgi: dict[str, Result]
    #: KiB per rollout, by meter and count.
    memory: dict[str, dict[int, float]]
    #: Hashes one ``route_request`` makes, by count (from the decisions' parts).
    hashes: dict[int, int]
    number: int
    repeat: int
    requests_for_memory: int

    @property
    def sha256_seconds(self) -> float:
        return self.components[SHA256].median

    def overhead(self, level: str, count: int, meter: str) -> float:
        """Seconds per request over the level's baseline."""
        if level == "lifecycle":
            results, case, base = self.components, lifecycle_label(count, meter), NOTHING
        else:
            results, case, base = self.asgi, asgi_label(count, meter), BARE_ASGI
        return results[case].median - results[base].median

    def per_extra(self, seconds: Callable[[int], float], count: int) -> float:
        """Seconds each rollout past the first adds, from 1 to ``count`` rollouts."""
        return (seconds(count) - seconds(1)) / (count - 1)

    def part(self, name: str, count: int) -> float:
        return self.components[part_label(name, count)].median

    @property
    def floor_seconds(self) -> float:
        """What each extra rollout must do at the least: one hash, one count
        in its window and one in its evidence: the unit (one SHA-256, as the
        other columns take it) and the two counts over the empty loop."""
        loop = self.components[NOTHING].median
        counts = sum(self.components[case].median - loop for case in (WINDOW_COUNT, EVIDENCE_COUNT))
        return self.sha256_seconds + counts


def measure(quick: bool = False) -> Report:
    number, repeat = (100, 3) if quick else (1_000, 15)
    requests = 200 if quick else 2_000
    memory_counts = COUNTS if quick else MEMORY_COUNTS
    hashes = {
        count: hashes_per_request(build_rollouts(count, NoOpMeterProvider()), SESSIONS[0])
        for count in COUNTS
    }
    components = interleaved(component_cases(), number, repeat)
    asgi = interleaved(asgi_cases(), number, repeat)
    return Report(
        components,
        asgi,
        memory_per_rollout(memory_counts, requests),
        hashes,
        number,
        repeat,
        requests,
    )


def fmt(value: float, digits: int = 2) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def summary(report: Report) -> str:
    """The markdown table: overhead, its growth per extra rollout in µs and
    in SHA-256s, and the memory per rollout."""
    sha = report.sha256_seconds
    lines = [
        "| path | rollouts | overhead per request µs | ×bare | per extra rollout µs "
        "| in SHA-256s | memory per rollout KiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in ("lifecycle", "ASGI"):
        for meter in METERS:
            path = (
                f"begin + finish, {meter}"
                if level == "lifecycle"
                else f"GateASGIMiddleware, {meter}"
            )
            for count in COUNTS:
                overhead = report.overhead(level, count, meter)
                if level == "ASGI":
                    bare = report.asgi[BARE_ASGI].median
                    times = fmt((bare + overhead) / bare)
                else:
                    times = "–"  # against an empty loop a ratio says nothing
                if count == 1:
                    extra = float("nan")
                else:
                    extra = report.per_extra(
                        lambda n, level=level, meter=meter: report.overhead(level, n, meter),
                        count,
                    )
                memory = report.memory[meter].get(count, float("nan"))
                lines.append(
                    f"| {path} | {count} | {fmt(overhead * 1e6)} | {times} "
                    f"| {fmt(extra * 1e6)} | {fmt(extra / sha, 1)} | {fmt(memory, 1)} |"
                )
    return "\n".join(lines) + "\n"


def split(report: Report) -> str:
    """What one extra rollout costs, by part (from 1 to the largest count)."""
    sha = report.sha256_seconds
    top = COUNTS[-1]
    routing = report.per_extra(lambda n: report.part("route_request", n), top)
    recording = report.per_extra(lambda n: report.part("record_decision", n), top)
    metrics = report.per_extra(lambda n: report.part("request metrics (SDK)", n), top)
    whole = {
        meter: report.per_extra(lambda n, m=meter: report.overhead("lifecycle", n, m), top)
        for meter in METERS
    }
    rows = [
        ("routing: Rollouts.route_request", routing),
        ("recording: Rollouts.record_decision", recording),
        ("metrics: each part counted, one histogram point (SDK; no-op meter: none)", metrics),
        ("routing + recording (the no-op meter's parts)", routing + recording),
        ("routing + recording + metrics (the SDK's parts)", routing + recording + metrics),
        ("begin + finish as measured, no-op meter", whole["no-op meter"]),
        ("begin + finish as measured, OpenTelemetry SDK", whole["OpenTelemetry SDK"]),
        (
            "the floor: one SHA-256, one window count, one evidence count (bare)",
            report.floor_seconds,
        ),
    ]
    lines = [
        f"Each extra rollout, by part (slope from 1 to {top} rollouts; "
        f"one SHA-256 = {sha * 1e6:.3f} µs in this run)",
        "",
        "| part | per extra rollout µs | in SHA-256s |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {fmt(value * 1e6)} | {fmt(value / sha, 1)} |" for name, value in rows]
    met = whole["no-op meter"] <= sha
    routing_met = routing <= sha
    lines += [
        "",
        "Hashes per route_request (decision parts whose bucket is compute_bucket's): "
        + ", ".join(f"{count} rollouts: {report.hashes[count]}" for count in COUNTS),
        f"Target, overhead grows by at most one SHA-256 per extra rollout: "
        f"{'met' if met else 'NOT met'} at the lifecycle with the no-op meter "
        f"({fmt(whole['no-op meter'] / sha, 1)} SHA-256s), "
        f"{'met' if whole['OpenTelemetry SDK'] <= sha else 'NOT met'} with the SDK "
        f"({fmt(whole['OpenTelemetry SDK'] / sha, 1)}); routing alone "
        f"{'meets' if routing_met else 'does not meet'} it ({fmt(routing / sha, 1)}).",
        f"The floor alone is {fmt(report.floor_seconds / sha, 1)} SHA-256s: "
        + (
            "the hash and the counting each rollout must do for every outcome exceed "
            "the target's allowance by themselves."
            if report.floor_seconds > sha
            else "within the target's allowance."
        ),
    ]
    return "\n".join(lines) + "\n"


def memory_table(report: Report) -> str:
    counts = sorted(next(iter(report.memory.values())))
    lines = [
        f"Memory per rollout, KiB (tracemalloc: built into a Rollouts under a lifecycle and "
        f"served {report.requests_for_memory:,} requests, less an empty set's)",
        "",
        "| rollouts | " + " | ".join(METERS) + " |",
        "|---|" + "---|" * len(METERS),
    ]
    for count in counts:
        lines.append(
            f"| {count} | " + " | ".join(fmt(report.memory[m][count], 1) for m in METERS) + " |"
        )
    return "\n".join(lines) + "\n"


def commit() -> str:
    """The checkout's commit, ``+dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run(quick: bool) -> list[str]:
    """The sections, for ``python -m benchmarks``."""
    report = measure(quick)
    return [
        table(
            "Rollouts: the lifecycle and its parts (in-process, one group)",
            report.components,
            NOTHING,
            overhead=True,
        ),
        table("Rollouts: in-process ASGI requests", report.asgi, BARE_ASGI, overhead=True),
        "What each rollout costs a request\n\n" + summary(report),
        split(report),
        memory_table(report),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout_cost")
    parser.add_argument("--quick", action="store_true", help="a few rounds, for a smoke test")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    niceness = os.nice(0)
    command = (
        "PYTHONPATH=. "
        + (f"nice -n {niceness} " if niceness else "")
        + "python -m benchmarks.rollout_cost"
        + (" --quick" if args.quick else "")
    )
    print(
        f"# {command} at {commit()}, {started:%Y-%m-%d %H:%M} UTC; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"build: {'compiled (mypyc)' if gate_middleware.COMPILED else 'pure Python'}",
        flush=True,
    )
    for section in run(args.quick):
        print(section, flush=True)
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    print(f"({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
