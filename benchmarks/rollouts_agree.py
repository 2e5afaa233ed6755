"""Several rollouts under real servers, in figures: ``python -m benchmarks.rollouts_agree``.

The app of ``tests/rollouts_app.py`` (two rollouts, "checkout" and "search",
at 50 % each, on one SQLite file) runs under uvicorn and gunicorn with four
workers. Another process (an operator's script, or the admin API in any
worker) then rolls back "checkout", retires "search" and reinstates it,
and creates a third rollout, "reviews", at 50 % (``Rollouts.create``: the
workers read the store's catalog every second). For each change the table
gives the seconds until every worker answers by it, measured as the time
until a round of 16 new visitors (each on a new connection) all agree, and
whether the other rollouts' answers stayed right meanwhile. Each server
runs ``--trials`` times (5 by default). Target: every worker agrees within
1 s (2 s for a created rollout: one catalog refresh, then its state); the
other rollouts never move.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from gate_middleware import PromotionGate, Rollouts, compute_bucket
from tests.rollouts_app import FLAGS, config
from tests.system.test_rollouts import REVIEWS, SERVERS, serves_reviews, started, visit

ROUND = 16
LIMIT_SECONDS = 15.0
Answer = dict[str, Any]


def on_by_bucket(name: str) -> Callable[[Answer], bool]:
    """Whether an answer has ``name``'s flag exactly when its bucket says so."""
    return lambda answer: (
        (FLAGS[name] in answer["flags"]) == (compute_bucket(name, answer["session"]) < 50_000)
    )


def seconds_to_agree(base: str, holds: Callable[[Answer], bool]) -> float:
    """Seconds until a whole round of new visitors ``holds`` (``inf``: not
    within ``LIMIT_SECONDS``). ``holds`` checks the other rollout too."""
    started_at = time.monotonic()
    while True:
        if all(holds(answer) for answer in visit(base, ROUND)):
            return time.monotonic() - started_at
        if time.monotonic() - started_at > LIMIT_SECONDS:
            return float("inf")


def trial(server: str) -> dict[str, float]:
    """One server run: the seconds each change took to reach every worker
    (``inf``: not within ``LIMIT_SECONDS``, or the other rollout moved)."""
    url = f"sqlite://{tempfile.mkdtemp()}/gate.db"
    figures: dict[str, float] = {}
    with started(server, url) as base:
        visit(base, ROUND)
        checkout = PromotionGate.from_url(url, config("checkout"))
        search = PromotionGate.from_url(url, config("search"))
        try:
            checkout.rollback("measured", actor="bench")
            figures["rollback"] = seconds_to_agree(
                base,
                lambda a: FLAGS["checkout"] not in a["flags"] and on_by_bucket("search")(a),
            )
            search.retire("measured", actor="bench")
            figures["retire"] = seconds_to_agree(
                base, lambda a: a["flags"] == [] and a["variants"]["search"] == "stable"
            )
            search.reinstate(actor="bench")
            figures["reinstate"] = seconds_to_agree(
                base,
                lambda a: on_by_bucket("search")(a) and FLAGS["checkout"] not in a["flags"],
            )
            operator = Rollouts.from_url(url, [config(name) for name in FLAGS])
            try:
                operator.create(REVIEWS, actor="bench")
                figures["create"] = seconds_to_agree(
                    base,
                    lambda a: (
                        serves_reviews(a)
                        and on_by_bucket("search")(a)
                        and FLAGS["checkout"] not in a["flags"]
                    ),
                )
            finally:
                operator.close()
        finally:
            checkout.close()
            search.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    trials = parser.parse_args().trials
    print(f"# python -m benchmarks.rollouts_agree --trials {trials}")
    print()
    print("| server | change | median s | max s | trials within the target |")
    print("|---|---|---|---|---|")
    for server in SERVERS:
        runs = [trial(server) for _ in range(trials)]
        for change in ("rollback", "retire", "reinstate", "create"):
            seconds = [run[change] for run in runs]
            target = 2.0 if change == "create" else 1.0
            within = sum(second <= target for second in seconds)
            print(
                f"| {server} | {change} | {statistics.median(seconds):.2f} | "
                f"{max(seconds):.2f} | {within}/{trials} within {target:g} s |"
            )


if __name__ == "__main__":
    main()
