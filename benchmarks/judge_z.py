"""Does each of the judge's tests know its own noise? z's spread at its null boundary.

Run it with ``python -m benchmarks.judge_z`` (400 seeds a cell; ``--seeds``,
``--seconds``). A test turns its statistic into evidence as if ``z`` were
standard normal under its null hypothesis; if its variance ignores how the
sessions vary (a slow user is slow on every request), ``z`` spreads wider
than 1 and the test rolls back good releases more often than its share of
the false-rollback rate allows.

Each cell draws seeds of the judge simulation's traffic
(``benchmarks.judge_sim``: Poisson arrivals at 50 requests/s, 10 % share,
production failing 0.5 %, lognormal durations) with the canary exactly at the
test's own null boundary, builds the step's evidence at the end of
``--seconds`` (600) and records the test's ``z``:

- ``errors``: the canary fails as production does, tested with no
  tolerance (the boundary of H0: equal rates);
- ``slo``: the canary fails as production does and is 1.5× as slow (the
  test reads its durations divided by 1.5: equal bad rates), tested with no
  tolerance by ``SloCheck`` as the gate runs it;
- ``latency``: the canary is 1.5× production, the rollback line (the test's
  margin is 1.52×, whole sketch buckets rounded up, so ``z`` centres a
  little below 0);
- ``routes``: as ``errors``, on the requests of the busiest route's slot
  (the route check's test of one slot: about a quarter of the traffic,
  spread over the same 64 session groups).

Traffic models (``judge_sim``'s): ``requests`` (every request its own
session), ``sessions`` (20,000 Zipf-weighted sessions, 0.2 % of them failing
every request), ``slow_sessions`` (the same, each with a latency factor of
its own, lognormal σ = 0.5). A standard deviation near 1 in every row is
the target; the mean is reported beside it.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time

from benchmarks.judge_sim import ROUTES, Case, final_evidence
from gate_middleware.domain.config import PromotionConfig, SloConfig, judge_settings
from gate_middleware.judge.evidence import route_slot
from gate_middleware.judge.statistics import (
    ALPHA_SHARES,
    SloCheck,
    latency_test,
    proportion_test,
)

#: (test, traffic model) cells.
CELLS = [
    ("errors", "requests"),
    ("errors", "sessions"),
    ("slo", "requests"),
    ("slo", "slow_sessions"),
    ("latency", "requests"),
    ("latency", "slow_sessions"),
    ("routes", "requests"),
    ("routes", "sessions"),
]
BUSIEST_SLOT = route_slot(ROUTES[1])


def cell_case(test: str, model: str, seconds: float) -> Case:
    factor = 1.0 if test in ("errors", "routes") else 1.5
    return Case(
        f"z-{test}-{model}",
        f"{test} at its boundary, {model}",
        10.0,
        latency_factor=factor,
        seconds=seconds,
        model=model,
    )


def z_of(test: str, model: str, seed: int, seconds: float) -> float:
    settings = judge_settings(PromotionConfig(), SloConfig())
    canary, production = final_evidence(cell_case(test, model, seconds), seed)
    if test == "latency":
        result = latency_test(
            test, canary, production, share=ALPHA_SHARES["latency"], settings=settings
        )
    elif test == "slo":  # as the gate runs it, whatever the canary's compliance
        result = SloCheck().test(canary, production, settings, canary_compliance=0.0)
    else:
        if test == "routes":
            canary, production = canary.route(BUSIEST_SLOT), production.route(BUSIEST_SLOT)
        result = proportion_test(
            test,
            canary,
            production,
            bad=False,
            tolerance=0.0,
            monitor_ratio=settings.monitor_tolerance,
            share=ALPHA_SHARES[test],
            settings=settings,
        )
    return result.z


def _run(job: tuple[str, str, int, float]) -> tuple[str, str, float]:
    test, model, seed, seconds = job
    return test, model, z_of(test, model, seed, seconds)


def spreads(seeds: int, seconds: float, processes: int = 2) -> dict[tuple[str, str], list[float]]:
    """Every cell's z values, one per seed."""
    jobs = [(test, model, seed, seconds) for test, model in CELLS for seed in range(seeds)]
    with multiprocessing.Pool(processes) as pool:
        results = pool.map(_run, jobs, chunksize=8)
    found: dict[tuple[str, str], list[float]] = {cell: [] for cell in CELLS}
    for test, model, z in results:
        found[(test, model)].append(z)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.judge_z", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    found = spreads(args.seeds, args.seconds, args.processes)
    print("| test | traffic | seeds | mean z | sd of z (± its standard error) |")
    print("|---|---|---|---|---|")
    for (test, model), zs in found.items():
        sd = statistics.stdev(zs)
        print(
            f"| {test} | {model} | {len(zs)} | {statistics.fmean(zs):+.2f} | "
            f"{sd:.2f} (± {sd / math.sqrt(2 * (len(zs) - 1)):.2f}) |"
        )
    print(
        f"\n{len(CELLS) * args.seeds} runs in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
