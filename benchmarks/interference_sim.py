"""Interference between concurrent rollouts: a simulation over many seeds.

Run it with ``python -m benchmarks.interference_sim`` (300 seeds for the
cases where every rollout is healthy, 200 for those with a faulty one;
``--null-seeds``, ``--seeds``, ``--quick`` for 20, ``--processes``). It
prints, per case: how often the healthy rollouts were rolled back (every
such rollback is a false one), how often the faulty one was and how fast,
and the same faulty rollout run alone on the same seeds.

Several independent rollouts in one app each route a session by the
published formula (``gate_middleware.domain.routing``) under their own
name: session ``s`` is on rollout ``k``'s canary when
``compute_bucket(f"rollout-{k}", s) < canary_threshold(share)``. SHA-256
under different names makes the cohorts independent: rollout ``k``'s canary
and its production hold the same share of rollout ``j``'s canary sessions,
so a regression in release ``j`` adds noise to rollout ``k``'s comparison
but no bias.

The traffic model (``judge_sim``'s ``sessions`` model; see its docstring):

- Poisson arrivals at 50 requests/s for 30 minutes (simulated time), each
  request from one of 20,000 sessions with Zipf(1.0) weights (the heaviest
  sends ≈ 9 % of all requests); session ``k``'s id is ``f"{seed}-{k}"``.
- Production fails 0.5 % of requests, and 0.2 % of sessions fail every
  request; durations are lognormal (median 50 ms, σ = 0.8); each request
  names one of 40 route templates. These are one draw per seed, shared by
  every rollout: the app serves each request once.
- ``N`` concurrent rollouts (1, 2 or 5) named ``rollout-0`` ..
  ``rollout-{N-1}``, each at a 10 % share, each routing every session by
  the real formula under its own name; each rollout's judge sees every
  request with that rollout's own variant, grouped by that rollout's
  bucket (``bucket % 64``, as its gate groups it).
- A faulty rollout (``rollout-0``, when there is one) doubles the errors of
  its canary (1 % instead of 0.5 %, the effect of ``judge_sim``'s
  ``errors_2x_10``): a request fails if it fails in production terms, or
  if it is on ``rollout-0``'s canary and an extra failure draw hits, with
  probability ``1 - (1 - 1 %) / (1 - 0.5 %)``. The healthy releases change
  nothing: their canaries serve as production does.
- Every rollout is judged as ``judge_sim`` judges a case
  (``judge_sim.judge_traffic``: the judge's own code fed the evidence the
  gate would hold, every 5 s, the gate's defaults, rolled back at the first
  ROLLBACK verdict).

The seeds are paired: seed ``s`` is the same traffic in every case (and the
same extra failure draws in the faulty ones), so ``N = 2`` judges
``rollout-0`` and ``rollout-1`` of the very runs in which ``N = 5`` judges
five, and "alone" is the faulty rollout at ``N = 1`` on the same seeds. As
the healthy releases change no request, the faulty rollout's evidence is
the same with or without them, request for request; what the other
rollouts can change is only their own false rollbacks.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from benchmarks.judge_sim import Case, Traffic, generate, judge_traffic, session_buckets
from gate_middleware.domain.config import PromotionConfig, SloConfig, judge_settings
from gate_middleware.domain.routing import canary_threshold
from gate_middleware.judge.evidence import CLUSTERS

SESSIONS = 20_000  # the sessions model's count
ROLLOUT_SHARE = 10.0  # percent, every rollout's canary share
PRODUCTION_ERRORS = 0.005
FAULTY_ERRORS = 0.01  # the faulty canary's failure rate: errors 2×
ROLLOUT_COUNTS = (1, 2, 5)
#: The shared traffic: judge_sim's sessions model (its own canary, routed
#: under "sim", is not used; each rollout routes the sessions itself).
TRAFFIC = Case(
    "interference",
    "sessions (Zipf, 0.2 % always failing), shared by every rollout",
    ROLLOUT_SHARE,
    production_errors=PRODUCTION_ERRORS,
    canary_errors=PRODUCTION_ERRORS,
    model="sessions",
)


def rollout_names(count: int) -> list[str]:
    """``rollout-0`` .. ``rollout-{count-1}``: each rollout's name, its routing salt."""
    return [f"rollout-{k}" for k in range(count)]


def extra_failure_rate(canary_errors: float, production_errors: float) -> float:
    """The probability of the faulty canary's extra failure draw, so that a
    request fails with ``canary_errors`` in all:
    ``1 - (1 - canary_errors) / (1 - production_errors)``."""
    return 1.0 - (1.0 - canary_errors) / (1.0 - production_errors)


def rollout_traffic(traffic: Traffic, buckets: np.ndarray, failed: np.ndarray) -> Traffic:
    """The shared requests as one rollout's gate sees them: its variant and
    group from its own buckets (one a session), ``failed`` as served."""
    assert traffic.session is not None
    on_canary = buckets < canary_threshold(ROLLOUT_SHARE)
    return replace(
        traffic,
        canary=on_canary[traffic.session],
        cluster=(buckets % CLUSTERS)[traffic.session],
        failed=failed,
        on_canary=on_canary,
    )


def simulate_rollouts(
    seed: int,
    names: Sequence[str],
    faulty: int | None = None,
    faulty_errors: float = FAULTY_ERRORS,
) -> list[float | None]:
    """The time of each rollout's rollback (None: not rolled back within
    30 min) for one seed, ``names[faulty]`` failing ``faulty_errors`` of its
    canary's requests (the model in the module docstring)."""
    traffic = generate(TRAFFIC, seed)
    assert traffic.session is not None
    buckets = {name: session_buckets(name, seed, SESSIONS) for name in set(names)}
    failed = traffic.failed
    if faulty is not None:
        on_faulty_canary = buckets[names[faulty]] < canary_threshold(ROLLOUT_SHARE)
        draws = np.random.default_rng([seed, zlib.crc32(b"interference-fault")])
        extra = draws.random(failed.size) < extra_failure_rate(faulty_errors, PRODUCTION_ERRORS)
        failed = failed | (on_faulty_canary[traffic.session] & extra)
    config = PromotionConfig()
    slo = SloConfig()
    settings = judge_settings(config, slo)
    return [
        judge_traffic(
            TRAFFIC,
            seed,
            rollout_traffic(traffic, buckets[name], failed),
            settings,
            slo.latency_objective_seconds,
            config.rollback_window_seconds,
        )[0]
        for name in names
    ]


@dataclass(frozen=True)
class CohortOverlap:
    """How rollout ``second``'s canary sessions fall on each side of ``first``."""

    canary_sessions: int  # sessions on first's canary
    canary_on_second: int  # ... and on second's canary too
    production_sessions: int  # sessions on first's production
    production_on_second: int  # ... and on second's canary


def cohort_overlap(
    seed: int, first: str, second: str, share: float = ROLLOUT_SHARE, count: int = SESSIONS
) -> CohortOverlap:
    """``second``'s canary sessions among ``first``'s canary and production
    sessions, both routed by the real formula (each session counted once)."""
    threshold = canary_threshold(share)
    on_first = session_buckets(first, seed, count) < threshold
    on_second = session_buckets(second, seed, count) < threshold
    return CohortOverlap(
        int(on_first.sum()),
        int((on_first & on_second).sum()),
        int((~on_first).sum()),
        int((~on_first & on_second).sum()),
    )


def upper_bound_rate(events: int, trials: int, z: float = 1.96) -> float:
    """The Wilson score interval's upper end for ``events`` in ``trials``
    (95 % two-sided by default; Wilson 1927):
    ``(p + z²/2n + z·√(p(1-p)/n + z²/4n²)) / (1 + z²/n)``."""
    if trials == 0:
        return 1.0
    p = events / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return (centre + spread) / (1 + z2 / trials)


#: One seed's outcome: (seed, with the faulty rollout, each of the five
#: rollouts' rollback time, the faulty one's when run alone).
Run = tuple[int, bool, list[float | None], float | None]


def _run(job: tuple[int, bool]) -> Run:
    seed, with_fault = job
    names = rollout_names(max(ROLLOUT_COUNTS))
    if not with_fault:
        return seed, False, simulate_rollouts(seed, names), None
    alone = simulate_rollouts(seed, names[:1], 0)[0]
    return seed, True, simulate_rollouts(seed, names, 0), alone


def _percent(events: int, trials: int) -> str:
    return f"{100 * events / trials:.1f} %" if trials else "–"


def _median(times: list[float]) -> str:
    return f"{statistics.median(times):.0f} s" if times else "–"


def table(results: list[Run]) -> list[str]:
    """The report's rows: for each rollout count, all healthy and one faulty."""
    lines = [
        "| rollouts | faulty | runs | false rollbacks of the healthy (of healthy-rollout runs;"
        " 95 % upper) | worst healthy rollout | runs with a false rollback"
        " | faulty rolled back within 30 min | median time to rollback"
        " | the faulty one alone, same seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for with_fault in (False, True):
        runs = [times for _, fault, times, _ in results if fault == with_fault]
        alone = [solo for _, fault, _, solo in results if fault == with_fault]
        for count in ROLLOUT_COUNTS:
            healthy = list(range(1 if with_fault else 0, count))
            false_rollbacks = [sum(times[k] is not None for times in runs) for k in healthy]
            events = sum(false_rollbacks)
            trials = len(runs) * len(healthy)
            if healthy:
                most = max(false_rollbacks)  # the first rollout with the most
                worst = healthy[false_rollbacks.index(most)]
                worst_cell = f"rollout-{worst}: {_percent(most, len(runs))}"
                rate_cell = (
                    f"{_percent(events, trials)} ({events}/{trials}; "
                    f"≤ {100 * upper_bound_rate(events, trials):.1f} %)"
                )
                any_cell = _percent(
                    sum(any(times[k] is not None for k in healthy) for times in runs), len(runs)
                )
            else:
                worst_cell = rate_cell = any_cell = "–"
            if with_fault:
                detected = [t for t in (times[0] for times in runs) if t is not None]
                faulty_cells = (
                    f"rollout-0 | {len(runs)} | {rate_cell} | {worst_cell} | {any_cell} | "
                    f"{_percent(len(detected), len(runs))} | {_median(detected)} | "
                )
                solo = [t for t in alone if t is not None]
                faulty_cells += f"{_percent(len(solo), len(runs))}, {_median(solo)} |"
            else:
                faulty_cells = (
                    f"none | {len(runs)} | {rate_cell} | {worst_cell} | {any_cell} | – | – | – |"
                )
            lines.append(f"| {count} | {faulty_cells}")
    return lines


def paired_changes(results: list[Run]) -> str:
    """Healthy rollouts 1-4 on the same seed with and without the faulty
    neighbour: how many outcomes (rolled back or not) changed, and which way."""
    by_seed = {(seed, fault): times for seed, fault, times, _ in results}
    rose = fell = same = 0
    for (seed, fault), times in by_seed.items():
        if not fault or (seed, False) not in by_seed:
            continue
        for k in range(1, len(times)):
            before, after = by_seed[(seed, False)][k] is not None, times[k] is not None
            rose += after and not before
            fell += before and not after
            same += before == after
    return (
        f"healthy rollouts 1-4 on the seeds run both ways ({rose + fell + same} rollout-runs): "
        f"{rose} rolled back only beside the faulty one, {fell} only without it, {same} unchanged"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.interference_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=200, help="seeds with a faulty rollout (200)")
    parser.add_argument(
        "--null-seeds", type=int, default=300, help="seeds with every rollout healthy (300)"
    )
    parser.add_argument("--quick", action="store_true", help="20 seeds a case")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    null_seeds, seeds = (20, 20) if args.quick else (args.null_seeds, args.seeds)
    jobs = [(seed, False) for seed in range(null_seeds)] + [(seed, True) for seed in range(seeds)]
    started = time.perf_counter()
    with multiprocessing.Pool(args.processes) as pool:
        results = pool.map(_run, jobs, chunksize=2)
    print(
        f"{max(ROLLOUT_COUNTS)} rollouts judged a seed, each at {ROLLOUT_SHARE:g} % share; "
        f"faulty: rollout-0, errors {FAULTY_ERRORS / PRODUCTION_ERRORS:g}× "
        f"({100 * FAULTY_ERRORS:g} % against {100 * PRODUCTION_ERRORS:g} %); 30 min a run\n"
    )
    print("\n".join(table(results)))
    print(f"\n{paired_changes(results)}")
    print(f"\n{len(jobs)} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
