"""The gate alone: routing, recording, health checks."""

from __future__ import annotations

import gc
import logging
import math
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from hashlib import sha256
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider

from benchmarks.timing import interleaved, table, us
from gate_middleware import Environment, PromotionConfig, PromotionGate

PERCENT = 10.0
SESSIONS = [f"session-{i:08d}-{'x' * 6}" for i in range(1000)]


def floor(number: int) -> None:
    """The physical floor of a deterministic decision: hash, bucket, compare."""
    threshold = round(PERCENT * 1000)
    sessions = SESSIONS
    for i in range(number):
        session = sessions[i % 1000]
        _ = int.from_bytes(sha256(session.encode()).digest()[:8], "big") % 100000 < threshold


def make_gate(**config: Any) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(
            environment=Environment.canary(PERCENT), feature_flags=["new_api"], **config
        ),
        meter_provider=NoOpMeterProvider(),
    )


def route_case(gate: PromotionGate) -> Callable[[int], None]:
    route = gate.route_request
    sessions = SESSIONS

    def run(number: int) -> None:
        for i in range(number):
            route(sessions[i % 1000])

    return run


def record_case(gate: PromotionGate) -> Callable[[int], None]:
    record = gate.record_request_outcome
    sessions = SESSIONS

    def run(number: int) -> None:
        for i in range(number):
            record(sessions[i % 1000], True, 0.012, variant="stable")

    return run


def growthbook_case() -> Callable[[int], None]:
    from growthbook import GrowthBook

    features = {
        "new_api": {
            "defaultValue": False,
            "rules": [{"force": True, "coverage": PERCENT / 100, "hashAttribute": "id"}],
        }
    }
    gb = GrowthBook(features=features)
    sessions = SESSIONS

    def run(number: int) -> None:
        for i in range(number):
            gb.set_attributes({"id": sessions[i % 1000]})
            gb.is_on("new_api")

    return run


def openfeature_case() -> Callable[[int], None]:
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    threshold = round(PERCENT * 1000)

    def rollout(flag: Any, context: EvaluationContext) -> FlagResolutionDetails[bool]:
        key = (context.targeting_key or "").encode()
        on = int.from_bytes(sha256(key).digest()[:8], "big") % 100000 < threshold
        return FlagResolutionDetails(value=on, variant="on" if on else "off")

    flag = InMemoryFlag("off", {"on": True, "off": False}, context_evaluator=rollout)
    api.set_provider(InMemoryProvider({"new_api": flag}))
    client = api.get_client()
    contexts = [EvaluationContext(targeting_key=s) for s in SESSIONS]

    def run(number: int) -> None:
        for i in range(number):
            client.get_boolean_value("new_api", False, contexts[i % 1000])

    return run


def unleash_case() -> tuple[Callable[[int], None], Callable[[], None]]:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    directory = tempfile.mkdtemp(prefix="unleash-bench-")
    cache = FileCache("gate-bench", directory=directory)
    cache.bootstrap_from_dict(
        {
            "version": 1,
            "features": [
                {
                    "name": "new_api",
                    "enabled": True,
                    "strategies": [
                        {
                            "name": "flexibleRollout",
                            "parameters": {
                                "rollout": str(int(PERCENT)),
                                "stickiness": "sessionId",
                                "groupId": "new_api",
                            },
                        }
                    ],
                }
            ],
        }
    )
    logging.getLogger("UnleashClient").setLevel(logging.ERROR)
    client = UnleashClient(
        url="http://127.0.0.1:9",  # never contacted: bootstrapped, no fetch, no metrics
        app_name="gate-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
        refresh_interval=3600,
    )
    client.initialize_client(fetch_toggles=False)
    contexts = [{"sessionId": s} for s in SESSIONS]

    def run(number: int) -> None:
        for i in range(number):
            client.is_enabled("new_api", contexts[i % 1000])

    return run, client.destroy


def feed(gate: PromotionGate, count: int, rng: random.Random) -> None:
    record = gate.record_request_outcome
    for i in range(count):
        variant = "canary" if i % 10 == 0 else "stable"
        record("", rng.random() > 0.005, rng.lognormvariate(math.log(0.02), 0.5), variant=variant)


def health_rows(quick: bool) -> Iterator[tuple[str, float, float, float, float]]:
    """(size, median µs, min µs, max µs, gate KiB) of monitor_canary_health."""
    sizes = [10**3, 10**5] if quick else [10**3, 10**5, 10**7]
    for size in sizes:
        rng = random.Random(size)
        gc.collect()
        tracemalloc.start()
        gate = make_gate(auto_rollback_enabled=False, evaluation_interval_seconds=1e9)
        feed(gate, size, rng)
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        samples = []
        for _ in range(15):
            started = time.perf_counter()
            for _ in range(20):
                gate.monitor_canary_health()
            samples.append((time.perf_counter() - started) / 20)
        samples.sort()
        yield f"{size:,}", samples[len(samples) // 2], samples[0], samples[-1], memory / 1024


def run(quick: bool) -> list[str]:
    number, repeat = (2_000, 9) if quick else (20_000, 21)
    gate = make_gate(auto_rollback_enabled=False)
    unleash, stop_unleash = unleash_case()
    try:
        routing = interleaved(
            {
                "raw sha256(session id) -> bucket (floor)": floor,
                "gate.route_request": route_case(gate),
                "GrowthBook is_on, 10 % rollout, shared instance": growthbook_case(),
                "OpenFeature get_boolean_value, in-memory provider": openfeature_case(),
                "UnleashClient is_enabled, flexibleRollout, bootstrapped": unleash,
            },
            number,
            repeat,
        )
    finally:
        stop_unleash()
    recording = interleaved(
        {
            "raw sha256(session id) -> bucket (floor)": floor,
            "gate.record_request_outcome(variant=...)": record_case(
                make_gate(auto_rollback_enabled=False)
            ),
        },
        number,
        repeat,
    )
    sections = [
        table(
            "Routing one session (10 % rollout)",
            routing,
            "raw sha256(session id) -> bucket (floor)",
        ),
        table("Recording one outcome", recording, "raw sha256(session id) -> bucket (floor)"),
    ]
    lines = [
        "monitor_canary_health after N recorded outcomes (gate memory by tracemalloc)",
        "",
        f"  {'outcomes':>12} {'median µs':>10} {'min–max µs':>19} {'gate KiB':>10}",
    ]
    health = list(health_rows(quick))
    for size, median, low, high, kib in health:
        lines.append(f"  {size:>12} {us(median):>10} {us(low) + '–' + us(high):>19} {kib:>10.1f}")
    sections.append("\n".join(lines) + "\n")
    floor_us = recording["raw sha256(session id) -> bucket (floor)"].median
    medians = [median for _, median, *_ in health]
    sections.append(
        bars(
            [
                (
                    "route_request <= 2x the sha256 floor",
                    routing["gate.route_request"].median
                    / routing["raw sha256(session id) -> bucket (floor)"].median,
                    2.0,
                ),
                (
                    "record_request_outcome <= 4x the sha256 floor",
                    recording["gate.record_request_outcome(variant=...)"].median / floor_us,
                    4.0,
                ),
                ("monitor_canary_health <= 100 µs at every size", max(medians) * 1e6, 100.0),
                (
                    "monitor_canary_health flat: largest / smallest <= 1.5",
                    max(medians) / min(medians),
                    1.5,
                ),
            ]
        )
    )
    return sections


def bars(rows: list[tuple[str, float, float]]) -> str:
    """PASS or MISS per bar (value at most its limit), so a regression shows at a glance."""
    lines = ["Bars", ""]
    for name, value, limit in rows:
        verdict = "PASS" if value <= limit else "MISS"
        lines.append(f"  {verdict}  {name:<56} {value:>8.2f} (limit {limit:g})")
    return "\n".join(lines) + "\n"
