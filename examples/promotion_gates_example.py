"""The Promotion Gates guide's workflow, end to end, with gate-middleware.

Run: python examples/promotion_gates_example.py

It routes simulated sessions, records their outcomes, ramps a canary,
promotes a healthy release to staging and production, then starts a faulty
release and watches the gate roll it back by itself. Time is simulated with
the gate's injectable clock, so the whole run takes about a second. Every
step checks what it claims and exits non-zero if a check fails.
"""

from __future__ import annotations

import logging
import random
import sys

from gate_middleware import (
    Environment,
    PromotionConfig,
    PromotionError,
    PromotionGateManager,
    RollbackEvent,
)


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def check(claim: str, ok: bool) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {claim}")
    if not ok:
        sys.exit(1)


def serve(
    manager: PromotionGateManager,
    clock: SimulatedClock,
    rng: random.Random,
    requests: int,
    canary_error_rate: float = 0.005,
    canary_latency: float = 0.040,
) -> None:
    """Simulated traffic: 20,000 users, one request every 10 ms of simulated time."""
    for _ in range(requests):
        session = f"user-{rng.randrange(20_000)}-session"
        decision = manager.route_request(session)
        if decision.is_canary:
            failed = rng.random() < canary_error_rate
            duration = rng.lognormvariate(0, 0.25) * canary_latency
        else:
            failed = rng.random() < 0.005
            duration = rng.lognormvariate(0, 0.25) * 0.040
        manager.record_request_outcome(session, not failed, duration, variant=decision.variant)
        clock.now += 0.01


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="  log: %(levelname)s %(message)s", stream=sys.stdout
    )
    rng = random.Random(42)
    clock = SimulatedClock()
    print("=== Promotion Gates Example: Canary Deployment ===\n")

    print("Step 1: a 5 % canary with the flag new_api")
    config = PromotionConfig(
        environment=Environment.canary(5.0),
        feature_flags=["new_api"],
        auto_rollback_enabled=True,
        slo_threshold=0.95,
        rollback_window_seconds=300,
    )
    manager = PromotionGateManager(config, clock=clock)
    check("the gate starts in canary (5%)", manager.environment == Environment.canary(5))

    print("\nStep 2: deterministic routing")
    first = manager.route_request("user-123-session")
    again = [manager.route_request("user-123-session") for _ in range(100)]
    check(
        f"user-123-session takes the {first.variant} path every time (bucket {first.bucket})",
        all(d.variant == first.variant and d.bucket == first.bucket for d in again),
    )
    check(
        "a canary session gets new_api",
        all(
            d.is_enabled("new_api") == d.is_canary
            for d in (manager.route_request(f"u{i}") for i in range(500))
        ),
    )

    print("\nStep 3: traffic split over 100,000 sessions")
    canary = sum(manager.route_request(f"session-{i}").is_canary for i in range(100_000))
    check(
        f"{canary / 1000:.2f} % of sessions on the canary (configured 5 %)",
        abs(canary / 1000 - 5) < 0.5,
    )

    print("\nStep 4: health monitoring while the canary serves")
    serve(manager, clock, rng, 6_000)
    health = manager.monitor_canary_health()
    print(
        f"  canary {health.canary_requests} requests, error rate {health.canary_error_rate:.2%}, "
        f"p99 {health.canary_p99_latency * 1000:.1f} ms; production {health.production_requests} "
        f"requests, error rate {health.production_error_rate:.2%}, p99 "
        f"{health.production_p99_latency * 1000:.1f} ms"
    )
    print(f"  health score {health.health_score:.2f}: {health.recommendation}")
    check("the healthy canary is HEALTHY", health.recommendation.startswith("HEALTHY"))

    print("\nStep 5: ramp 5 % -> 10 % -> 25 %, then promote")
    for percent in (10.0, 25.0):
        manager.set_traffic_percent(percent)
        serve(manager, clock, rng, 3_000)
        check(
            f"canary at {percent:g} % stays healthy",
            manager.monitor_canary_health().health_score >= 0.9,
        )
    manager.promote(Environment.STAGING)
    check("promoted to staging", manager.environment == Environment.STAGING)
    serve(manager, clock, rng, 3_000)
    manager.promote(Environment.PRODUCTION)
    check("promoted to production", manager.environment == Environment.PRODUCTION)
    check(
        "new_api is now on for every session",
        all(manager.route_request(f"u{i}").is_enabled("new_api") for i in range(1000)),
    )

    print("\nStep 6: a faulty release rolls back by itself")
    rollbacks: list[RollbackEvent] = []
    manager.on_rollback(rollbacks.append)
    manager.start_canary(10.0, ["new_checkout_flow"])
    try:
        manager.promote(Environment.STAGING)
        check("promotion without data is refused", False)
    except PromotionError as exc:
        check(f"promotion without data is refused ({exc})", True)
    serve(manager, clock, rng, 12_000, canary_error_rate=0.08, canary_latency=0.090)
    check("the gate rolled back to production", manager.environment == Environment.PRODUCTION)
    check("the rollback callback fired once", len(rollbacks) == 1)
    check(
        "new_checkout_flow is off for everyone", not manager.is_feature_enabled("new_checkout_flow")
    )
    check("new_api stays on (it is stable)", manager.is_feature_enabled("new_api"))

    print("\nRollback history:")
    for event in manager.get_rollback_history():
        print(f"  {event.timestamp:%Y-%m-%d %H:%M:%S} UTC from {event.environment}: {event.reason}")
    print("\nAll checks passed.")


if __name__ == "__main__":
    main()
