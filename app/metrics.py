"""Prometheus metrics, on a registry owned by the app (no module-level globals).

With several worker processes (``LANDMARKS_WORKERS``) prometheus_client's multi-process mode is on
(``PROMETHEUS_MULTIPROC_DIR``): each worker writes its values to files there and ``/metrics``, whichever worker
answers it, renders them over all workers (gauges by their mode: live sums, the model's info, ready only when
every live worker is).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

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

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir  # set: this is one of several worker processes
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
        self.queue_depth = Gauge(
            "landmarks_queue_depth", "faces waiting for the network", registry=r, multiprocess_mode="livesum"
        )
        self.in_flight = Gauge(
            "landmarks_in_flight_requests", "requests being processed", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter(
            "landmarks_rejected_requests_total", "requests refused, by reason", ["reason"], registry=r
        )
        self.faces = Counter("landmarks_faces_total", "faces returned", registry=r)
        self.model_info = Gauge(
            "landmarks_model_info",
            "the served model (value 1)",
            ["name", "version", "preset", "device", "precision"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "landmarks_ready", "1 when the service accepts work", registry=r, multiprocess_mode="livemin"
        )

    def observe_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        self.batch_size.observe(size)
        self.inference_time.observe(seconds)
        for w in waits:
            self.queue_wait.observe(w)

    def render(self) -> bytes:
        """The exposition ``/metrics`` answers: this process's registry, or every worker's values."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def process_exited(self, pid: int) -> None:
        """Drop a worker's live gauges when it exits."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(pid, path=self.multiprocess_dir)
