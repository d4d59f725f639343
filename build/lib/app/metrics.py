"""Prometheus metrics, on a registry owned by the app (no module-level globals)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 2.5 ms (a GPU batch) to 30 s (a loaded CPU): one set of buckets serves both.
LATENCY_BUCKETS = (
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every metric the service exports; ``registry`` is what ``/metrics`` renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "landmarks_request_duration_seconds",
            "HTTP request latency",
            ["route", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "landmarks_queue_wait_seconds", "time a face waited for its batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_time = Histogram(
            "landmarks_inference_seconds", "network + decode time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "landmarks_batch_size", "faces per network forward", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("landmarks_queue_depth", "faces waiting for the network", registry=r)
        self.in_flight = Gauge("landmarks_in_flight_requests", "requests being processed", registry=r)
        self.rejected = Counter(
            "landmarks_rejected_requests_total", "requests refused, by reason", ["reason"], registry=r
        )
        self.faces = Counter("landmarks_faces_total", "faces returned", registry=r)
        self.model_info = Gauge(
            "landmarks_model_info",
            "the served model (value 1)",
            ["name", "version", "preset", "device", "precision"],
            registry=r,
        )
        self.ready = Gauge("landmarks_ready", "1 when the service accepts work", registry=r)

    def observe_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        self.batch_size.observe(size)
        self.inference_time.observe(seconds)
        for w in waits:
            self.queue_wait.observe(w)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)
