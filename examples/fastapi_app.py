"""FastAPI with gate-middleware: sticky canary routing, a flag, Prometheus metrics.

Run:  python examples/fastapi_app.py        (then open http://127.0.0.1:8000/)
Or:   uvicorn --workers 4 --app-dir examples fastapi_app:app   (four workers, one rollout)

Half of the sessions get the new checkout flow; /metrics shows the request
metrics in Prometheus' format. Set GATE_SECRET to sign the session cookie.
"""

import os
import tempfile
from pathlib import Path

from fastapi import FastAPI, Response
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.integrations.fastapi import GateDecision, GateMiddleware

metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

# The rollout lives in a SQLite file that every worker process on the host
# shares and that outlives restarts; GATE_STORE says where (default: the
# temporary directory).
STORE = os.environ.get(
    "GATE_STORE", f"sqlite://{Path(tempfile.gettempdir()) / 'gate-example-shop.db'}"
)

gate = PromotionGate(
    PromotionConfig(
        name="checkout",
        environment=Environment.canary(50.0),
        feature_flags=["new_checkout_flow"],
        store=STORE,
    )
)

app = FastAPI()
app.add_middleware(
    GateMiddleware, gate=gate, secret=os.environ.get("GATE_SECRET"), exclude_paths=["/metrics"]
)


@app.get("/")
async def checkout(decision: GateDecision) -> dict[str, str]:
    flow = "new" if decision.is_enabled("new_checkout_flow") else "old"
    return {"checkout": flow, "variant": decision.variant}


@app.get("/metrics")
async def prometheus() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
