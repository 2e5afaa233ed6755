"""Flask with gate-middleware: sticky canary routing, a flag, Prometheus metrics.

Run:  python examples/flask_app.py          (then open http://127.0.0.1:8000/)
Or:   gunicorn -w 4 --chdir examples flask_app:app   (four workers, one rollout)

Half of the sessions get the new checkout flow; /metrics shows the request
metrics in Prometheus' format. Set GATE_SECRET to sign the session cookie.
"""

import os
import tempfile
from pathlib import Path

from flask import Flask, Response, jsonify
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.integrations.flask import GateExtension, gate_decision

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

app = Flask(__name__)
app.config["GATE"] = gate
app.config["GATE_SECRET"] = os.environ.get("GATE_SECRET")
app.config["GATE_EXCLUDE_PATHS"] = ["/metrics"]
GateExtension(app)  # reads GATE_* from app.config; app.extensions["gate_middleware"]


@app.get("/")
def checkout() -> Response:
    decision = gate_decision()  # flask.g.gate, typed
    flow = "new" if decision.is_enabled("new_checkout_flow") else "old"
    return jsonify(checkout=flow, variant=decision.variant)


@app.get("/metrics")
def prometheus() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
