"""The example's gate, and the OpenTelemetry SDK exporting to Prometheus."""

import os
import tempfile
from pathlib import Path

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider

from gate_middleware import Environment, PromotionConfig, PromotionGate

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
