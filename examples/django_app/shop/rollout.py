"""The example's gate, and the OpenTelemetry SDK exporting to Prometheus."""

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider

from gate_middleware import Environment, PromotionConfig, PromotionGate

metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

gate = PromotionGate(
    PromotionConfig(environment=Environment.canary(50.0), feature_flags=["new_checkout_flow"])
)
