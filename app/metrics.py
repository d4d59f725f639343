"""Prometheus metrics, on a registry owned by the app (no module-level globals).

With several worker processes (``LANDMARKS_WORKERS``) prometheus_client's multi-process mode is on
(``PROMETHEUS_MULTIPROC_DIR``): each worker writes its values to files there and ``/metrics``, whichever worker
answers it, renders them over all workers (gauges by their mode: live sums, the model's info, ready only when
every live worker is).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)  # fmt: skip

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


class Observe(Protocol):
    def observe(self, amount: float) -> None: ...


class Level(Protocol):
    def set(self, value: float) -> None: ...
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...


class Count(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class HistogramMetric(Observe, Protocol):
    def labels(self, *values: Any) -> Observe: ...


class GaugeMetric(Level, Protocol):
    def labels(self, *values: Any) -> Level: ...


class CounterMetric(Count, Protocol):
    def labels(self, *values: Any) -> Count: ...


class Metrics:
    """Every metric the service exports; ``registry`` is what ``/metrics`` renders. The three factories make
    prometheus_client metrics; a subclass may send the same metrics elsewhere (:class:`app.cluster.RayMetrics`)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir  # set: this is one of several worker processes
        self.registry = CollectorRegistry()
        self.request_latency = self.histogram(
            "landmarks_request_duration_seconds", "HTTP request latency", LATENCY_BUCKETS, ("route", "status_class")
        )
        self.queue_wait = self.histogram("landmarks_queue_wait_seconds", "time a face waited for its batch")
        self.inference_time = self.histogram("landmarks_inference_seconds", "network + decode time per batch")
        self.batch_size = self.histogram("landmarks_batch_size", "faces per network forward", BATCH_BUCKETS)
        self.queue_depth = self.gauge("landmarks_queue_depth", "faces waiting for the network", "livesum")
        self.in_flight = self.gauge("landmarks_in_flight_requests", "requests being processed", "livesum")
        self.rejected = self.counter("landmarks_rejected_requests_total", "requests refused, by reason", ("reason",))
        self.faces = self.counter("landmarks_faces_total", "faces returned")
        # Mean batch = forward faces / forwards, exact wherever the histogram's sum is not (Ray approximates it).
        self.forwards = self.counter("landmarks_forwards_total", "network forwards (batches)")
        self.forward_faces = self.counter("landmarks_forward_faces_total", "faces the network ran")
        self.model_info = self.gauge(
            "landmarks_model_info",
            "the served model (value 1)",
            "livemax",
            ("name", "version", "preset", "device", "precision"),
        )
        self.streams = self.gauge("landmarks_streams", "open /landmarks/stream connections", "livesum")
        self.stream_frames = self.counter(
            "landmarks_stream_frames_total", "video frames on /landmarks/stream, by outcome", ("outcome",)
        )
        self.ready = self.gauge("landmarks_ready", "1 when the service accepts work", "livemin")

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float] = LATENCY_BUCKETS, labels: Sequence[str] = ()
    ) -> HistogramMetric:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, doc: str, mode: str, labels: Sequence[str] = ()) -> GaugeMetric:
        """``mode``: how several worker processes' values combine (prometheus_client's multi-process modes)."""
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)  # type: ignore[arg-type]

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetric:
        return Counter(name, doc, labels, registry=self.registry)

    def observe_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        self.batch_size.observe(size)
        self.forwards.inc()
        self.forward_faces.inc(size)
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


def serve_metrics(port: int | None, host: str, registry: CollectorRegistry) -> WSGIServer | None:
    """``/metrics`` on ``LANDMARKS_METRICS_PORT`` (a thread of this process), when set."""
    if port is None:
        return None
    server, _ = start_http_server(port, host, registry)
    logging.getLogger("app").info("metrics on http://%s:%d/metrics", host, port)
    return server
