"""A shop whose release breaks checkout without an error, caught by a business metric.

Run: python examples/shop_guardrail.py

The shop (a Starlette app behind the gate's middleware) reports an order
with ``request.state.gate.track("checkout_completed")`` and its value with
``track("order_value", amount)``. Its new payment form (the flag
``new_payment_form``) silently drops the order for a third of the sessions
that see it: every answer is a quick 200, so errors and latency say nothing.
The guardrail on ``checkout_completed`` (a conversion: did a session order)
rolls the release back; ``order_value`` is only reported. Visitors are
simulated over the app's real request path (httpx's ASGI transport) with
the gate's clock simulated, so the run takes seconds. Every
step checks what it claims and exits non-zero if a check fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.integrations.starlette import GateMiddleware

FLAG = "new_payment_form"


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def check(claim: str, ok: bool) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {claim}")
    if not ok:
        sys.exit(1)


clock = SimulatedClock()
gate = PromotionGate(
    PromotionConfig(
        name="shop",
        environment=Environment.canary(20.0),
        feature_flags=[FLAG],
        metrics=[
            # A guardrail: 5 % fewer sessions ordering is tolerated, more rolls back.
            MetricDefinition("checkout_completed", kind="conversion", tolerance=0.05),
            # Reported beside it, not judged.
            MetricDefinition("order_value", kind="mean", guardrail=False),
        ],
    ),
    clock=clock,
)
rng = random.Random(7)


async def product(request: Request) -> JSONResponse:
    return JSONResponse({"product": "teapot", "price": 42.5})


async def checkout(request: Request) -> JSONResponse:
    gate_decision = request.state.gate
    if gate_decision.is_enabled(FLAG) and rng.random() < 1 / 3:
        # The new payment form loses the order; the customer sees a 200.
        return JSONResponse({"ordered": True})
    gate_decision.track("checkout_completed")
    gate_decision.track("order_value", round(rng.lognormvariate(3.5, 0.8), 2))
    return JSONResponse({"ordered": True})


app = Starlette(routes=[Route("/product", product), Route("/checkout", checkout)])
app.add_middleware(GateMiddleware, gate=gate, secret="shop-example-secret-0123456789")


async def visit(limit: int) -> tuple[int, set[int]]:
    """New visitors until the release leaves the canary (or ``limit``): each
    looks at the product, and 30 % go on to order. Returns the visitors and
    the status codes they saw."""
    transport = httpx.ASGITransport(app=app)
    visitors = 0
    statuses: set[int] = set()
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        while gate.environment.name == "canary" and visitors < limit:
            client.cookies.clear()  # a new visitor: a new session
            statuses.add((await client.get("/product")).status_code)
            if rng.random() < 0.3:
                statuses.add((await client.get("/checkout")).status_code)
            visitors += 1
            clock.now += 0.05  # 20 visitors a second, simulated
    return visitors, statuses


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print("A release with a new payment form, at 20 % of sessions:")
    visitors, statuses = asyncio.run(visit(20_000))
    check("every answer was a 200: the error rate cannot tell", statuses == {200})
    check(f"rolled back after {visitors} visitors", gate.environment == Environment.PRODUCTION)
    [event] = gate.get_rollback_history()
    print(f"  reason: {event.reason}")
    check("the reason names the metric", "metric checkout_completed" in event.reason)
    health = gate.monitor_canary_health() if event.health is None else event.health
    guardrail = health.evidence.get("tests", {}).get("metric:checkout_completed")
    check("the guardrail rejected", guardrail is not None and guardrail["rejected"])
    check(f"{FLAG} is off for everyone", not gate.route_request("anyone").is_enabled(FLAG))
    gate.close()
    print("All checks passed.")


if __name__ == "__main__":
    main()
