"""How often the gate's judge is wrong: a simulation over many seeds.

Run it with ``python -m benchmarks.judge_sim`` (200 seeds a case, 1,000 for
the cases with no regression, whose false-rollback rates are small;
``--seeds``, ``--null-seeds``, ``--quick`` for 40, ``--cases NAME,NAME`` to
pick some). It prints, per case: runs, rolled back %, median time to the
rollback, promotable at the end %; then, for each case whose canary is
exactly production, how often it read MONITOR: the share of its
evaluations past INSUFFICIENT_DATA, the runs that ever did, and for the
plan cases the holds (a step baked while the verdict was not HEALTHY) and
the delay they added to the release.

The traffic model, for every case unless it says otherwise:

- Poisson arrivals at 50 requests/s for 30 minutes (simulated time).
- Request-level cases: each request takes the canary with probability
  ``share`` and belongs to its own session (its session group drawn
  uniformly from the 64).
- Production fails 0.5 % of requests; its durations are lognormal with a
  median of 50 ms and σ = 0.8 (p99 ≈ 320 ms). The canary fails ``p_c`` of
  its requests and its durations are production's × ``f``.
- A request is *good* when it succeeded within the 0.5 s objective.
- The gate evaluates every 5 s with its defaults (``PromotionConfig`` and
  ``SloConfig`` defaults: false-rollback rate 1 %, rollback window 300 s,
  100 requests a side for a verdict); it rolls back at the first ROLLBACK
  verdict. "Promotable at the end" means the verdict at the last
  evaluation is HEALTHY (``promote()`` would succeed without ``force``).
- ``sessions``: 20,000 sessions with Zipf(1.0) weights (the heaviest sends
  ≈ 9 % of all requests), each session routed by the real routing formula
  (all of its requests on one side) and grouped by its routing bucket as the
  gate groups it; 0.2 % of sessions fail every request, on either side;
  behaviour otherwise identical.
- ``slow_sessions``: as ``sessions``, and each session has a latency
  factor of its own, lognormal with σ = 0.5 (some users are slow on every
  request: their durations are production's × that factor, on either
  side); ``latency_factor`` multiplies the canary's on top.
- ``gate``: quiet traffic run through a real ``PromotionGate`` with a fake
  clock, request by request (each its own session), at ``rate`` requests/s:
  a 100 % canary with no holdback (judged against the SLO objective) or a
  99.9 % canary (a baseline of about one request in 17 minutes).
- ``plan``: a good release (canary = production) carried through the
  default rollout plan (1 → 5 → 10 → 25 → 50 %, then staging: 100 %, no
  holdback, judged against the SLO objective) by a real ``PromotionGate``
  with a fake clock, time compressed: each step bakes ``seconds / 8``
  (600 s) instead of 12 h, at ``rate`` requests/s (20), each request its own
  session on the canary with the current step's share. "Rolled back" counts
  a rollback at any point of the release's life; "promotable at the end"
  here means it reached production.
- ``plan_sessions``: as ``plan``, with the ``sessions`` model's 20,000 Zipf
  sessions (0.2 % failing every request): each session routed by the real
  formula at every step's share, so a session on the canary at 5 % stays
  on it at 10 % and every step judges many of the same sessions; its
  group is its bucket % 64 as the gate keeps it.
- ``ramp_incident``: 5 % share, ramped to 50 % at t = 600 s (a new step),
  then a 30 s incident at t = 700 s in which both sides fail 20 % of requests.
- Routes (every model but ``gate`` and ``plan``): each request names one of
  40 route templates, drawn independently of its session: ``/checkout``
  with 2 % of the traffic, the other 98 % over 39 templates with Zipf(1.0)
  weights; each template counted in its route slot as the gate counts it.
  ``route_errors``: the canary fails that fraction of its ``/checkout``
  requests (the endpoint-local regression), and the rest as production.

- Business metrics (``metric`` set; the ``sessions`` model): each session
  reports ``checkout_completed`` with probability 3 % (the canary's
  ``metric_effect`` × that), once, at one of its requests chosen uniformly;
  ``metric="mean"``: such a session reports an order value, lognormal with
  σ = 1.5 (the canary's × ``metric_effect``), judged as value per session.
  A session enters its side's sample at its first request (the gate's
  bottom-k sample of ``SAMPLE_SESSIONS`` smallest keys, keys uniform). The
  judge runs every check the gate would (the built-in ones with 80 % of the
  rate, the metric's guardrail with 20 %, tolerance 0). "Fixed horizon"
  beside them: one one-sided z-test of the same per-session figures at
  the end (the guardrail's own z), at the guardrail's own α (0.2 %), which
may look once only.

The decisions are the judge's own code (``gate_middleware.judge.statistics``) fed the
evidence the gate would hold, with the lines the gate draws for a release's
steps (its first from ``release_start_log_evidence``, a later one moved by
what the step before carries); the gate's wiring of it (steps, the clock,
release tags) is tested in ``tests/judge/test_judge.py``, which also runs a
bounded sample of these cases through a real ``PromotionGate``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gate_middleware.domain.config import PromotionConfig, SloConfig, judge_settings
from gate_middleware.domain.routing import canary_threshold, compute_bucket
from gate_middleware.judge.evidence import (
    CLUSTERS,
    COARSE,
    COARSE_SHIFT,
    ROUTE_SLOTS,
    Evidence,
    route_slot,
)
from gate_middleware.judge.guardrails import (
    METRICS_SHARE,
    MetricCheck,
    MetricComparison,
    with_metric_checks,
)
from gate_middleware.judge.sample import SAMPLE_SESSIONS, SessionSample, SessionSummary
from gate_middleware.judge.sketch import _INV_LOG_GAMMA, _LOG_MIN, _TOP, BUCKET_COUNT, MIN_SECONDS
from gate_middleware.judge.statistics import (
    DEFAULT_CHECKS,
    HEALTHY,
    MONITOR,
    ROLLBACK,
    Check,
    JudgeSettings,
    carry,
    judge,
    normal_cdf,
    release_start_log_evidence,
)

RATE = 50.0
_UNSIGNED = np.dtype(f"u{array('L').itemsize}")
INTERVAL = 5.0
MEDIAN_SECONDS = 0.05
SIGMA = 0.8
SESSION_SIGMA = 0.5  # the spread of the sessions' own latency factors (slow_sessions)
ENDPOINT = "/checkout"  # the route an endpoint-local regression hits
ENDPOINT_SHARE = 0.02  # its part of the traffic
ROUTES = [ENDPOINT] + [f"/api/v1/resource{k}/{{item_id}}" for k in range(1, 40)]
_ZIPF = 1.0 / np.arange(1, len(ROUTES), dtype=float)
ROUTE_WEIGHTS = np.concatenate(([ENDPOINT_SHARE], (1.0 - ENDPOINT_SHARE) * _ZIPF / _ZIPF.sum()))
ROUTE_SLOT_OF = np.array([route_slot(route) for route in ROUTES], dtype=np.int64)
METRIC = "checkout_completed"
CONVERSION_RATE = 0.03  # the share of sessions that report the metric (production)
VALUE_SIGMA = 1.5  # an order value's lognormal σ (metric="mean")


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    share: float  # percent
    canary_errors: float = 0.005
    latency_factor: float = 1.0
    production_errors: float = 0.005
    seconds: float = 1800.0
    model: str = "requests"  # "requests", "sessions", "slow_sessions", "ramp_incident",
    # "gate", "plan", "plan_sessions"
    target: str = ""  # what the README promises for it
    rate: float = 50.0  # requests per second
    route_errors: float | None = None  # the canary's failure rate on ENDPOINT, when it differs
    metric: str | None = None  # "conversion" or "mean": a business metric is judged too
    metric_effect: float = 1.0  # the canary's conversion rate (or value) × this

    @property
    def null(self) -> bool:
        """No regression beyond a test's own line: every rollback is a false one
        (a slowdown up to the 1.5× rollback line is not a regression to roll back)."""
        return (
            self.canary_errors == self.production_errors
            and self.latency_factor <= 1.5
            and self.route_errors is None
            and self.metric_effect >= 1.0
        )


CASES = [
    Case(
        "null_10",
        "canary = production, 10 % share",
        10.0,
        target="≤ 1 % rolled back, ≥ 90 % promotable",
    ),
    Case(
        "null_1",
        "canary = production, 1 % share",
        1.0,
        target="≤ 1 %",
    ),
    Case(
        "null_50_quiet",
        "canary = production, 50 % share, 5 req/s",
        50.0,
        rate=5.0,
        target="≤ 1 %",
    ),
    Case(
        "null_10_load",
        "canary = production, 10 % share, 500 req/s",
        10.0,
        rate=500.0,
        target="≤ 1 %",
    ),
    Case(
        "null_1_2h",
        "canary = production, 1 % share, 2 h",
        1.0,
        seconds=7200.0,
        target="≤ 1 %",
    ),
    Case(
        "sessions_null_10",
        "sessions (Zipf, 0.2 % always failing), 10 % share",
        10.0,
        model="sessions",
        target="≤ 1.5 %",
    ),
    Case(
        "sessions_null_1",
        "sessions (Zipf, 0.2 % always failing), 1 % share",
        1.0,
        model="sessions",
        target="≤ 1.5 %",
    ),
    Case(
        "ramp_incident",
        "ramp 5 → 50 % at 600 s, shared incident at 700 s",
        5.0,
        model="ramp_incident",
        target="≤ 1 %",
    ),
    Case(
        "p99_1.2_10",
        "latency 1.2×, 10 % share",
        10.0,
        latency_factor=1.2,
        target="≤ 1 %",
    ),
    Case(
        "p99_1.2_1",
        "latency 1.2×, 1 % share",
        1.0,
        latency_factor=1.2,
        target="≤ 1 %",
    ),
    Case(
        "errors_2x_10",
        "errors 2× (1 %), 10 % share",
        10.0,
        canary_errors=0.01,
        target="≥ 98 %, ≤ 300 s, 0 % promotable",
    ),
    Case(
        "errors_4x_1",
        "errors 4× (2 %), 1 % share",
        1.0,
        canary_errors=0.02,
        target="≥ 90 %",
    ),
    Case(
        "errors_10x_0.1",
        "errors 10× (5 %), 0.1 % share",
        0.1,
        canary_errors=0.05,
        target="≥ 55 %",
    ),
    Case(
        "endpoint_20pct_10",
        "/checkout (2 % of traffic) fails 20 % on the canary, 10 % share",
        10.0,
        route_errors=0.2,
        target="≥ 97 % within 30 min",
    ),
    Case(
        "floor_0.1_to_1",
        "production 0.1 %, canary 1.0 %, 10 % share",
        10.0,
        canary_errors=0.01,
        production_errors=0.001,
        target="≥ 99 %, 0 % promotable",
    ),
    Case(
        "p99_2x_10",
        "latency 2×, 10 % share",
        10.0,
        latency_factor=2.0,
        target="100 %, ≤ 30 s",
    ),
    Case(
        "p99_3x_0.1",
        "latency 3×, 0.1 % share",
        0.1,
        latency_factor=3.0,
        target="≥ 98 %",
    ),
    Case(
        "slow_sessions_1.5x_10",
        "sessions with their own latency, canary 1.5× (the line), 10 % share",
        10.0,
        latency_factor=1.5,
        model="slow_sessions",
        target="≤ 1 %",
    ),
    Case(
        "slow_sessions_1.3x_1",
        "sessions with their own latency, canary 1.3×, 1 % share",
        1.0,
        latency_factor=1.3,
        model="slow_sessions",
        target="≤ 1 %",
    ),
    Case(
        "quiet_full_null",
        "100 % canary, no holdback, 0.1 req/s, as production",
        100.0,
        seconds=7200.0,
        model="gate",
        rate=0.1,
        target="≤ 1 %",
    ),
    Case(
        "quiet_full_30",
        "100 % canary, no holdback, 0.1 req/s, failing 30 %",
        100.0,
        canary_errors=0.3,
        seconds=7200.0,
        model="gate",
        rate=0.1,
        target="≥ 95 % within 2 h",
    ),
    Case(
        "quiet_full_all_0.05",
        "100 % canary, no holdback, 0.05 req/s, failing every request",
        100.0,
        canary_errors=1.0,
        seconds=14400.0,
        model="gate",
        rate=0.05,
        target="≥ 95 % within 4 h",
    ),
    Case(
        "plan_null",
        "a good release through the default plan and staging, 600 s a step, 20 req/s",
        1.0,
        seconds=4800.0,
        model="plan",
        rate=20.0,
        target="≤ 1 % rolled back over its life",
    ),
    Case(
        "plan_null_load",
        "a good release through the default plan and staging, 600 s a step, 100 req/s",
        1.0,
        seconds=4800.0,
        model="plan",
        rate=100.0,
        target="≤ 1 % rolled back over its life",
    ),
    Case(
        "plan_sessions_null",
        "a good release through the plan, the same sessions (Zipf, 0.2 % always failing)"
        " in every step, 600 s a step, 20 req/s",
        1.0,
        seconds=4800.0,
        model="plan_sessions",
        rate=20.0,
        target="≤ 1 % rolled back over its life",
    ),
    Case(
        "thin_baseline_null",
        "99.9 % canary at 1 req/s, as production",
        99.9,
        seconds=600.0,
        model="gate",
        rate=1.0,
        target="≤ 1 %",
    ),
    Case(
        "thin_baseline_all",
        "99.9 % canary at 1 req/s, failing every request",
        99.9,
        canary_errors=1.0,
        seconds=600.0,
        model="gate",
        rate=1.0,
        target="≥ 95 % within 10 min",
    ),
    Case(
        "conversion_null_10",
        "conversion 3 % of sessions, canary = production, 10 % share",
        10.0,
        model="sessions",
        metric="conversion",
        target="≤ 1 %",
    ),
    Case(
        "conversion_null_1",
        "conversion 3 % of sessions, canary = production, 1 % share",
        1.0,
        model="sessions",
        metric="conversion",
        target="≤ 1 %",
    ),
    Case(
        "conversion_drop10_10",
        "conversion 3 % → 2.7 % (−10 %), 10 % share",
        10.0,
        model="sessions",
        metric="conversion",
        metric_effect=0.9,
        target="detection and time stated",
    ),
    Case(
        "conversion_drop50_10",
        "conversion 3 % → 1.5 % (−50 %), 10 % share",
        10.0,
        model="sessions",
        metric="conversion",
        metric_effect=0.5,
        target="detection and time stated",
    ),
    Case(
        "value_null_10",
        "order value per session (lognormal σ 1.5), canary = production, 10 % share",
        10.0,
        model="sessions",
        metric="mean",
        target="≤ 1 %",
    ),
    Case(
        "value_drop5_10",
        "order value per session −5 %, 10 % share",
        10.0,
        model="sessions",
        metric="mean",
        metric_effect=0.95,
        target="detection and time stated",
    ),
]


def bucket_indices(durations: np.ndarray) -> np.ndarray:
    """``sketch.bucket_index`` for many durations at once."""
    index = np.ceil((np.log(np.maximum(durations, MIN_SECONDS)) - _LOG_MIN) * _INV_LOG_GAMMA)
    index[durations <= MIN_SECONDS] = 0
    return np.minimum(index, _TOP).astype(np.int64)


def _evidence(
    hist: np.ndarray,
    requests: np.ndarray,
    failures: np.ndarray,
    bad: np.ndarray,
    cells: np.ndarray,
    route_requests: np.ndarray | None = None,
    route_failures: np.ndarray | None = None,
) -> Evidence:
    evidence = Evidence()
    evidence.latency = array("L", hist.astype(_UNSIGNED).tobytes())
    nonzero = np.flatnonzero(hist)
    if nonzero.size:
        evidence.lowest = int(nonzero[0])
        evidence.highest = int(nonzero[-1])
    evidence.cluster_requests = array("q", requests.astype(np.int64).tobytes())
    evidence.cluster_failures = array("q", failures.astype(np.int64).tobytes())
    evidence.cluster_bad = array("q", bad.astype(np.int64).tobytes())
    evidence.cluster_latency = array("q", cells.astype(np.int64).tobytes())
    if route_requests is not None and route_failures is not None:
        evidence.route_requests = array("q", route_requests.astype(np.int64).tobytes())
        evidence.route_failures = array("q", route_failures.astype(np.int64).tobytes())
    evidence.requests = int(requests.sum())
    evidence.failures = int(failures.sum())
    evidence.bad = int(bad.sum())
    return evidence


def session_buckets(name: str, seed: int, count: int) -> np.ndarray:
    """The routing bucket under the rollout ``name`` of each of the ``count``
    sessions of ``seed`` (session ``k``'s id is ``f"{seed}-{k}"``)."""
    return np.array([compute_bucket(name, f"{seed}-{k}") for k in range(count)])


def _sessions(rng: np.random.Generator, seed: int, count: int, share: float):
    weights = 1.0 / np.arange(1, count + 1, dtype=float)
    weights /= weights.sum()
    threshold = canary_threshold(share)
    buckets = session_buckets("sim", seed, count)
    failing = rng.random(count) < 0.002
    return weights, buckets < threshold, buckets % CLUSTERS, failing


@dataclass
class Traffic:
    """One seed's requests, in time order."""

    times: np.ndarray  # seconds since the start
    canary: np.ndarray  # bool
    cluster: np.ndarray  # the session's group (its routing bucket % 64)
    failed: np.ndarray  # bool
    durations: np.ndarray  # seconds
    route: np.ndarray  # the index of its template in ROUTES
    session: np.ndarray | None = None  # the session of each request (the sessions models)
    on_canary: np.ndarray | None = None  # each session's side (the sessions models)

    def requests(self) -> Iterator[tuple[float, bool, int, bool, float, str]]:
        """(time, on the canary, group, failed, duration, route template) of
        each request, in order."""
        return zip(
            self.times.tolist(),
            self.canary.tolist(),
            self.cluster.tolist(),
            self.failed.tolist(),
            self.durations.tolist(),
            [ROUTES[index] for index in self.route.tolist()],
            strict=True,
        )


def generate(case: Case, seed: int) -> Traffic:
    """The requests of one seed of ``case`` (the traffic model in the module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode())])
    total = rng.poisson(case.rate * case.seconds)
    times = np.sort(rng.random(total) * case.seconds)
    share = case.share / 100.0
    session_factor = 1.0
    session = on_canary = None
    if case.model in ("sessions", "slow_sessions"):
        weights, on_canary, groups, failing = _sessions(rng, seed, 20_000, case.share)
        session = rng.choice(weights.size, size=total, p=weights)
        canary = on_canary[session]
        cluster = groups[session]
        always_fails = failing[session]
        if case.model == "slow_sessions":
            session_factor = np.exp(SESSION_SIGMA * rng.standard_normal(weights.size))[session]
    else:
        shares = np.where(times < 600.0, share, 0.5) if case.model == "ramp_incident" else share
        canary = rng.random(total) < shares
        cluster = rng.integers(0, CLUSTERS, total)
        always_fails = np.zeros(total, dtype=bool)
    route = rng.choice(len(ROUTES), size=total, p=ROUTE_WEIGHTS)
    error_rate = np.where(canary, case.canary_errors, case.production_errors)
    if case.route_errors is not None:
        error_rate = np.where(canary & (route == 0), case.route_errors, error_rate)
    if case.model == "ramp_incident":
        error_rate = np.where((times >= 700.0) & (times < 730.0), 0.2, error_rate)
    failed = always_fails | (rng.random(total) < error_rate)
    durations = np.exp(math.log(MEDIAN_SECONDS) + SIGMA * rng.standard_normal(total))
    durations = durations * session_factor
    durations = np.where(canary, durations * case.latency_factor, durations)
    return Traffic(times, canary, cluster, failed, durations, route, session, on_canary)


def final_evidence(case: Case, seed: int, objective: float = 0.5) -> tuple[Evidence, Evidence]:
    """(canary, production) evidence of one seed of ``case`` at its end, as one step."""
    return evidence_until(generate(case, seed), math.inf, objective)


def evidence_until(
    traffic: Traffic, until: float, objective: float = 0.5
) -> tuple[Evidence, Evidence]:
    """(canary, production) evidence of the requests of ``traffic`` before ``until``."""
    bad = traffic.failed | (traffic.durations > objective)
    buckets = bucket_indices(traffic.durations)
    before = traffic.times < until
    sides = []
    for side in (traffic.canary & before, ~traffic.canary & before):
        hist = np.bincount(buckets[side], minlength=BUCKET_COUNT)
        groups = traffic.cluster[side]
        cells = groups * COARSE + (buckets[side] >> COARSE_SHIFT)
        slots = ROUTE_SLOT_OF[traffic.route[side]] * CLUSTERS + groups
        sides.append(
            _evidence(
                hist,
                np.bincount(groups, minlength=CLUSTERS),
                np.bincount(groups, weights=traffic.failed[side], minlength=CLUSTERS),
                np.bincount(groups, weights=bad[side], minlength=CLUSTERS),
                np.bincount(cells, minlength=CLUSTERS * COARSE),
                np.bincount(slots, minlength=ROUTE_SLOTS * CLUSTERS),
                np.bincount(slots, weights=traffic.failed[side], minlength=ROUTE_SLOTS * CLUSTERS),
            )
        )
        failing = np.bincount(traffic.route[side & traffic.failed], minlength=len(ROUTES))
        sides[-1].route_names = {
            ROUTES[index]: int(count) for index, count in enumerate(failing.tolist()) if count
        }
    return sides[0], sides[1]


def simulate(
    case: Case,
    seed: int,
    settings: JudgeSettings,
    objective: float,
    window: float,
    *,
    seen: Counter[str] | None = None,
) -> tuple[float | None, bool]:
    """(time of the rollback or None, promotable at the end) for one seed;
    each evaluation's verdict is counted in ``seen``."""
    return judge_traffic(case, seed, generate(case, seed), settings, objective, window, seen=seen)


def judge_traffic(
    case: Case,
    seed: int,
    traffic: Traffic,
    settings: JudgeSettings,
    objective: float,
    window: float,
    *,
    seen: Counter[str] | None = None,
) -> tuple[float | None, bool]:
    """(time of the rollback or None, promotable at the end) for the requests
    of ``traffic`` judged as one seed of ``case``: the judge's own code fed
    the evidence the gate would hold, every ``INTERVAL`` seconds (each
    verdict counted in ``seen``)."""
    times, canary, cluster, failed = traffic.times, traffic.canary, traffic.cluster, traffic.failed
    bad = failed | (traffic.durations > objective)
    buckets = bucket_indices(traffic.durations)
    intervals = int(math.ceil(case.seconds / INTERVAL))
    interval = np.minimum((times // INTERVAL).astype(np.int64), intervals - 1)
    step_starts = [0]
    if case.model == "ramp_incident":
        step_starts.append(int(600.0 // INTERVAL))
    side_data = []
    for side in (canary, ~canary):
        idx = interval[side]
        hist = np.zeros((intervals, BUCKET_COUNT), dtype=np.int64)
        np.add.at(hist, (idx, buckets[side]), 1)
        req = np.zeros((intervals, CLUSTERS), dtype=np.int64)
        fail = np.zeros((intervals, CLUSTERS), dtype=np.int64)
        badc = np.zeros((intervals, CLUSTERS), dtype=np.int64)
        np.add.at(req, (idx, cluster[side]), 1)
        np.add.at(fail, (idx, cluster[side]), failed[side].astype(np.int64))
        np.add.at(badc, (idx, cluster[side]), bad[side].astype(np.int64))
        cells = np.zeros((intervals, CLUSTERS * COARSE), dtype=np.int64)
        np.add.at(cells, (idx, cluster[side] * COARSE + (buckets[side] >> COARSE_SHIFT)), 1)
        slots = ROUTE_SLOT_OF[traffic.route[side]] * CLUSTERS + cluster[side]
        route_req = np.zeros((intervals, ROUTE_SLOTS * CLUSTERS), dtype=np.int64)
        route_fail = np.zeros((intervals, ROUTE_SLOTS * CLUSTERS), dtype=np.int64)
        np.add.at(route_req, (idx, slots), 1)
        np.add.at(route_fail, (idx, slots), failed[side].astype(np.int64))
        side_data.append((hist, req, fail, badc, cells, route_req, route_fail))
    window_intervals = int(window // INTERVAL)
    checks: tuple[Check, ...] = DEFAULT_CHECKS
    samples: list[list[SessionSummary]] | None = None
    if case.metric is not None:
        samples = metric_summaries(case, seed, traffic, intervals)
        checks = with_metric_checks(
            DEFAULT_CHECKS, [MetricCheck(METRIC, 1.0, conversion=case.metric == "conversion")]
        )
    verdict = None
    # As the gate judges a release: its first step from log(1 - RESTART_SHARE),
    # each later one from what the step before carries (``carry``).
    carried = release_start_log_evidence()
    result = None
    for step_number, start in enumerate(step_starts):
        if result is not None:
            carried = carry(carried, result.step_log_evidence, step_number + 1)
        step_settings = replace(settings, carried_log_evidence=carried)
        end = step_starts[step_number + 1] if step_number + 1 < len(step_starts) else intervals
        cumulative = [tuple(np.cumsum(a[start:end], axis=0) for a in data) for data in side_data]
        canary_req_per_interval = side_data[0][1].sum(axis=1)
        canary_bad_per_interval = side_data[0][3].sum(axis=1)
        for k in range(end - start):
            evidence = [_evidence(*(part[k] for part in c)) for c in cumulative]
            now = start + k
            if samples is not None:
                for side, figures in zip(evidence, samples, strict=True):
                    side.sample = FixedSample(figures[now])
            lo = max(0, now + 1 - window_intervals)
            window_requests = canary_req_per_interval[lo : now + 1].sum()
            window_bad = canary_bad_per_interval[lo : now + 1].sum()
            compliance = 1.0 - window_bad / window_requests if window_requests else 1.0
            result = judge(
                evidence[0],
                evidence[1],
                step_settings,
                canary_window_compliance=compliance,
                checks=checks,
            )
            verdict = result.verdict
            if seen is not None:
                seen[verdict] += 1
            if verdict == ROLLBACK:
                return (now + 1) * INTERVAL, False
    return None, verdict == HEALTHY


class FixedSample(SessionSample):
    """A side's sample of sessions as the judge reads it (``summary``), its
    figures computed from the traffic at once (``metric_summaries``): the
    merging of samples is tested on its own (tests/judge/test_guardrails.py)."""

    def __init__(self, figures: SessionSummary) -> None:
        super().__init__()
        self._figures = figures

    def summary(self, metric: str, conversion: bool) -> SessionSummary:
        return self._figures


def metric_summaries(
    case: Case, seed: int, traffic: Traffic, intervals: int
) -> list[list[SessionSummary]]:
    """Per side (canary, production), the sample's per-session figures of the
    metric at the end of each evaluation interval (the model in the module
    docstring): sessions enter at their first request, report at one of them."""
    assert traffic.session is not None and traffic.on_canary is not None
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode()), 7])
    count = traffic.on_canary.size
    order = np.lexsort((rng.random(traffic.session.size), traffic.session))
    sessions_sorted = traffic.session[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sessions_sorted[1:] != sessions_sorted[:-1]
    seen = np.full(count, np.inf)
    seen_request = np.full(count, np.inf)
    np.minimum.at(seen, traffic.session, traffic.times)  # its first request
    seen_request[sessions_sorted[first]] = traffic.times[order[first]]  # a random request
    canary = traffic.on_canary
    rate = np.where(canary, CONVERSION_RATE * case.metric_effect, CONVERSION_RATE)
    if case.metric == "mean":
        rate = np.full(count, CONVERSION_RATE)
    converts = rng.random(count) < rate
    value = np.ones(count)
    if case.metric == "mean":
        value = np.exp(VALUE_SIGMA * rng.standard_normal(count))
        value = np.where(canary, value * case.metric_effect, value)
    keys = rng.random(count)
    looks = (np.arange(intervals) + 1) * INTERVAL
    figures: list[list[SessionSummary]] = []
    for side in (canary, ~canary):
        members = np.flatnonzero(side & np.isfinite(seen))
        entered = seen[members]
        reported = np.where(converts[members], seen_request[members], np.inf)
        amounts = value[members]
        per_look = []
        for now in looks.tolist():
            inside = entered <= now
            if inside.sum() > SAMPLE_SESSIONS:  # the bottom-k of the keys seen so far
                chosen = np.flatnonzero(inside)
                kept = chosen[np.argpartition(keys[members][chosen], SAMPLE_SESSIONS)]
                inside = np.zeros_like(inside)
                inside[kept[:SAMPLE_SESSIONS]] = True
            totals = np.where(reported[inside] <= now, amounts[inside], 0.0)
            n = int(inside.sum())
            reporting = int(np.count_nonzero(totals))
            if case.metric == "conversion":
                per_look.append(SessionSummary.of_counts(n, reporting))
            elif n > 1:  # SessionSummary.of_values, vectorised
                mean = float(totals.mean())
                per_look.append(SessionSummary(n, mean, float(totals.var(ddof=1)), reporting))
            else:
                per_look.append(SessionSummary.of_values(totals.tolist()))
        figures.append(per_look)
    return figures


def fixed_horizon_rejects(case: Case, seed: int) -> bool:
    """The same per-session figures at the end, tested once: a one-sided z-test
    at the guardrail's own α (the release's rate × ``METRICS_SHARE``)."""
    traffic = generate(case, seed)
    intervals = int(math.ceil(case.seconds / INTERVAL))
    canary, production = (side[-1] for side in metric_summaries(case, seed, traffic, intervals))
    # the guardrail's own z (the same variances), looked at once
    comparison = MetricComparison(canary, production, 0.0, True)
    se = comparison.standard_error
    if se <= 0.0:
        return False
    z = comparison.regression / se
    return 1.0 - normal_cdf(z) <= SloConfig().false_rollback_rate * METRICS_SHARE


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate_gate(case: Case, seed: int) -> tuple[float | None, bool]:
    """(time of the rollback or None, promotable at the end) for one seed,
    request by request through a real ``PromotionGate`` and a fake clock."""
    import logging

    from gate_middleware import Environment, PromotionGate

    logging.getLogger("gate_middleware").setLevel(logging.CRITICAL)
    traffic = generate(case, seed)
    clock = _Clock()
    gate = PromotionGate(
        PromotionConfig(environment=Environment.canary(case.share), feature_flags=["new"]),
        clock=clock,
        plan_timer=False,
    )
    for t, canary, group, failed, duration, _ in traffic.requests():
        clock.now = t
        gate.record_outcome("canary" if canary else "stable", not failed, duration, -1, group)
        if gate.environment.name == "production":
            return t, False
    clock.now = case.seconds
    return None, gate.health_snapshot().verdict == HEALTHY


def simulate_plan(
    case: Case, seed: int, *, seen: Counter[str] | None = None
) -> tuple[float | None, bool]:
    """(time of a rollback or None, reached production) for one seed of a
    ``plan`` case: the release's whole life through a real ``PromotionGate``.
    ``seen`` counts the plan's ``holds`` (a step baked while the verdict was
    not HEALTHY) and, for a release that reached production, the whole
    ``seconds of delay`` past the plan's own bakes (at least the evaluation
    interval's few seconds a step, hold or not)."""
    import logging

    from gate_middleware import PromotionGate
    from gate_middleware.domain.plan import RolloutPlan

    logging.getLogger("gate_middleware").setLevel(logging.CRITICAL)
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode())])
    total = rng.poisson(case.rate * case.seconds)
    times = np.sort(rng.random(total) * case.seconds).tolist()
    if case.model == "plan_sessions":
        # The same sessions in every step: a session's bucket decides its side
        # at each step's share, so the steps judge overlapping sessions.
        weights, _, _, failing = _sessions(rng, seed, 20_000, 100.0)
        buckets = np.array([compute_bucket("sim", f"{seed}-{k}") for k in range(weights.size)])
        session = rng.choice(weights.size, size=total, p=weights)
        bucket_of = buckets[session]
        # draw * 100 < percent  ⇔  bucket < canary_threshold(percent), below
        draws = bucket_of.tolist()
        groups = (bucket_of % CLUSTERS).tolist()
        always_fails = failing[session]
    else:
        draws = rng.random(total).tolist()
        groups = rng.integers(0, CLUSTERS, total).tolist()
        always_fails = np.zeros(total, dtype=bool)
    failed = (always_fails | (rng.random(total) < case.production_errors)).tolist()
    durations = np.exp(math.log(MEDIAN_SECONDS) + SIGMA * rng.standard_normal(total)).tolist()
    bake = case.seconds / 8
    clock = _Clock()
    gate = PromotionGate(
        PromotionConfig(plan=RolloutPlan(bake_seconds=bake, staging_bake_seconds=bake)),
        clock=clock,
        wall_clock=clock,
        plan_timer=False,
    )
    gate.start_canary(feature_flags=["new"])
    for t, draw, fails, duration, group in zip(
        times, draws, failed, durations, groups, strict=True
    ):
        clock.now = t
        environment = gate.environment
        if environment.name == "production":
            history = gate.get_history()
            rolled = any(event.kind == "rollback" for event in history)
            if seen is not None:
                seen["holds"] += sum(getattr(e, "action", "") == "hold" for e in history)
                if not rolled:
                    seen["seconds of delay"] += round(max(0.0, t - 6 * bake))
            return (t if rolled else None), not rolled
        if case.model == "plan_sessions":
            canary = draw < canary_threshold(environment.traffic_percent)
        else:
            canary = draw * 100.0 < environment.traffic_percent
        gate.record_outcome("canary" if canary else "stable", not fails, duration, -1, group)
    if seen is not None:  # not in production by the end: its holds count too
        seen["holds"] += sum(getattr(e, "action", "") == "hold" for e in gate.get_history())
    return None, False


def _run(
    job: tuple[Case, int],
) -> tuple[str, float | None, bool, bool | None, Counter[str]]:
    case, seed = job
    fixed = fixed_horizon_rejects(case, seed) if case.metric is not None else None
    seen: Counter[str] = Counter()
    return (*_decide(case, seed, seen), fixed, seen)


def _decide(case: Case, seed: int, seen: Counter[str]) -> tuple[str, float | None, bool]:
    if case.model == "gate":
        return (case.name, *simulate_gate(case, seed))
    if case.model in ("plan", "plan_sessions"):
        return (case.name, *simulate_plan(case, seed, seen=seen))
    config = PromotionConfig()
    slo = SloConfig()
    settings = judge_settings(config, slo)
    rolled, promotable = simulate(
        case,
        seed,
        settings,
        slo.latency_objective_seconds,
        config.rollback_window_seconds,
        seen=seen,
    )
    return case.name, rolled, promotable


def monitor_lines(wanted: list[Case], results: list[Any]) -> list[str]:
    """The false-MONITOR table: for each case with no difference at all
    between canary and production, how often a verdict past
    INSUFFICIENT_DATA read MONITOR, in how many runs it ever did, and (the
    plan cases) how many steps held for it and the delay that added."""
    lines = []
    for case in wanted:
        exact_null = (
            case.canary_errors == case.production_errors
            and case.latency_factor == 1.0
            and case.route_errors is None
            and case.metric_effect == 1.0
            and case.model != "gate"
        )
        if not exact_null:
            continue
        mine = [r[4] for r in results if r[0] == case.name]
        if case.model in ("plan", "plan_sessions"):
            reached = [r for r in results if r[0] == case.name and r[2]]
            holds = sum(seen["holds"] for seen in mine)
            delays = sorted(r[4]["seconds of delay"] for r in reached)
            median = f"{statistics.median(delays):.0f} s" if delays else "–"
            lines.append(
                f"| {case.description} | {len(mine)} | (the plan's view) | "
                f"{100 * sum(1 for seen in mine if seen['holds']) / len(mine):.1f} % "
                f"held at least once | {holds / len(mine):.2f} holds a release; of the "
                f"{len(reached)} in production, delay past the bakes median {median}, "
                f"max {max(delays, default=0):.0f} s |"
            )
            continue
        judged = [seen[MONITOR] + seen[HEALTHY] + seen[ROLLBACK] for seen in mine]
        monitor = [seen[MONITOR] for seen in mine]
        lines.append(
            f"| {case.description} | {len(mine)} | "
            f"{100 * sum(monitor) / max(1, sum(judged)):.2f} % of {sum(judged)} | "
            f"{100 * sum(1 for m in monitor if m) / len(mine):.1f} % | – |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.judge_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=200, help="seeds a case (default 200)")
    parser.add_argument(
        "--null-seeds", type=int, default=1000, help="seeds a case with no regression (1000)"
    )
    parser.add_argument("--quick", action="store_true", help="40 seeds a case")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    wanted = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    jobs = [
        (case, seed)
        for case in wanted
        for seed in range(40 if args.quick else args.null_seeds if case.null else args.seeds)
    ]
    started = time.perf_counter()
    with multiprocessing.Pool(args.processes) as pool:
        results = pool.map(_run, jobs, chunksize=4)
    print(
        "| case | runs | rolled back | median time to rollback | promotable at the end | target |"
    )
    print("|---|---|---|---|---|---|")
    fixed_lines = []
    for case in wanted:
        mine = [r for r in results if r[0] == case.name]
        times = [r[1] for r in mine if r[1] is not None]
        promotable = sum(1 for r in mine if r[2])
        median = f"{statistics.median(times):.0f} s" if times else "–"
        minutes = case.seconds / 60
        print(
            f"| {case.description} ({minutes:.0f} min) | {len(mine)} | "
            f"{100 * len(times) / len(mine):.1f} % | {median} | "
            f"{100 * promotable / len(mine):.1f} % | {case.target} |"
        )
        if case.metric is not None:
            fixed = sum(1 for r in mine if r[3])
            fixed_lines.append(
                f"| {case.description} | {len(mine)} | {100 * len(times) / len(mine):.1f} % | "
                f"{100 * fixed / len(mine):.1f} % |"
            )
    monitors = monitor_lines(wanted, results)
    if monitors:
        print(
            "\n| healthy canary (= production) | runs | evaluations read MONITOR "
            "| runs with a MONITOR | plan holds for it |"
        )
        print("|---|---|---|---|---|")
        print("\n".join(monitors))
    if fixed_lines:
        print(
            "\n| metric case | runs | rolled back (looking every 5 s) | fixed horizon, one look at 30 min |"
        )
        print("|---|---|---|---|")
        print("\n".join(fixed_lines))
    print(f"\n{len(jobs)} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
