"""The service's metrics, recorded through Ray (exported by every node's metrics agent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.util import metrics as ray_metrics

from app.errors import ServiceError
from app.metrics import (
    LATENCY_BUCKETS,
    CounterMetric,
    GaugeMetric,
    HistogramMetric,
    Metrics,
)


class _RayMetric:
    """A ``ray.util.metrics`` metric behind prometheus_client's calls (labels, observe, inc, dec, set)."""

    def __init__(self, metric: Any, keys: Sequence[str], values: Sequence[Any] = ()) -> None:
        self._metric = metric
        self._keys = tuple(keys)
        self._tags = {k: str(v) for k, v in zip(self._keys, values, strict=True)} if values else None
        self._level = 0.0

    def labels(self, *values: Any) -> _RayMetric:
        return _RayMetric(self._metric, self._keys, values)

    def observe(self, amount: float) -> None:
        self._metric.observe(amount, tags=self._tags)

    def inc(self, amount: float = 1) -> None:
        if isinstance(self._metric, ray_metrics.Gauge):
            self.set(self._level + amount)
        else:
            self._metric.inc(amount, tags=self._tags)

    def dec(self, amount: float = 1) -> None:
        self.set(self._level - amount)

    def set(self, value: float) -> None:
        self._level = value
        self._metric.set(value, tags=self._tags)


class RayMetrics(Metrics):
    """The service's metrics under the same names, exported by Ray with its ``ray_`` prefix (so
    ``ray_landmarks_request_duration_seconds``) and tagged by replica; the Grafana dashboard reads both."""

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float] = LATENCY_BUCKETS, labels: Sequence[str] = ()
    ) -> HistogramMetric:
        return _RayMetric(ray_metrics.Histogram(name, doc, list(buckets), tuple(labels)), labels)

    def gauge(self, name: str, doc: str, mode: str, labels: Sequence[str] = ()) -> GaugeMetric:
        return _RayMetric(ray_metrics.Gauge(name, doc, tuple(labels)), labels)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetric:
        return _RayMetric(ray_metrics.Counter(name, doc, tuple(labels)), labels)

    def render(self) -> bytes:
        raise ServiceError(404, "not_found", "on a Ray cluster, metrics are on each node's Ray metrics export port")
