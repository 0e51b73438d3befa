"""`GET /metrics`: Prometheus text format through `prometheus_client`, one registry per app.

What is counted (names as exported; counters get `_total`, histograms `_bucket` / `_sum` / `_count`):

- `jdiff_requests_total{endpoint, method, status}`: HTTP requests answered; `endpoint` is the route's path
  template (`/v1/videos/{video_id}`), or `other` for paths no route serves (so a scan cannot blow up the
  label set).
- `jdiff_request_seconds{endpoint}`: seconds from a request's arrival to its response.
- `jdiff_queue_depth`: requests and tasks waiting for the device worker; `jdiff_running_outputs`: outputs
  (or 1 for a task) on the device now; `jdiff_ready`: 1 once warm-up has finished.
- `jdiff_slots`, `jdiff_slots_busy`: with `--batching continuous`, the slots of every shape bucket made so
  far and those holding a request now (slot occupancy = busy / slots); 0 with request-level batching.
- `jdiff_batch_outputs`: real outputs (padding aside) per image `generate` call.
- `jdiff_queue_wait_seconds`: how long image requests waited for their `generate` call.
- `jdiff_stage_seconds{stage}`: seconds per pipeline stage per `generate` call, from its `timings`
  (`text_encoding`, `denoising`, `decoding`, `total`), images and videos alike.
- `jdiff_images_total`, `jdiff_videos_total`: outputs produced.
- `jdiff_xla_compiles_total`, `jdiff_xla_compile_seconds_total`: XLA backend compilations in this process
  since the app was made, as jax reports them (`jax.monitoring`'s backend-compile event), so a cache hit
  of jax's in-memory or persistent cache is not one. They count every compile in the process, the server's
  warm-up included: a rising count while serving means requests hit shapes warm-up did not compile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600, float("inf"))
OUTPUTS = (1, 2, 4, 8, 16, 32, 64, float("inf"))

_compiles = {"count": 0, "seconds": 0.0}
_lock = threading.Lock()
_listening = False
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _on_event(event: str, seconds: float, **kwargs) -> None:
    if event == BACKEND_COMPILE_EVENT:
        with _lock:
            _compiles["count"] += 1
            _compiles["seconds"] += seconds


def _listen() -> None:
    """Registers the one process-wide jax listener (jax has no way to remove one; one is enough)."""
    global _listening
    with _lock:
        if _listening:
            return
        _listening = True
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_on_event)


def compiles() -> tuple[int, float]:
    """XLA backend compilations in this process so far, and their seconds."""
    with _lock:
        return _compiles["count"], _compiles["seconds"]


class _CompileCollector:
    def __init__(self):
        _listen()
        self.base = compiles()

    def collect(self):
        count, seconds = compiles()
        yield CounterMetricFamily(
            "jdiff_xla_compiles", "XLA backend compilations since the server started", count - self.base[0]
        )
        yield CounterMetricFamily(
            "jdiff_xla_compile_seconds", "seconds spent in XLA backend compilation", seconds - self.base[1]
        )


class Metrics:
    """The app's Prometheus metrics, in their own `CollectorRegistry` (several apps in one process do not
    clash). `stats` is `Batcher.stats`; `ready` says whether warm-up has finished."""

    def __init__(self, stats: Callable[[], dict[str, int]], ready: Callable[[], bool]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "jdiff_requests", "HTTP requests answered", ["endpoint", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "jdiff_request_seconds",
            "seconds from arrival to response",
            ["endpoint"],
            buckets=SECONDS,
            registry=r,
        )
        Gauge("jdiff_queue_depth", "requests and tasks waiting for the device", registry=r).set_function(
            lambda: stats()["queued"]
        )
        Gauge("jdiff_running_outputs", "outputs (or 1 task) on the device now", registry=r).set_function(
            lambda: stats()["running"]
        )
        Gauge("jdiff_slots", "continuous batching's slots over all shape buckets", registry=r).set_function(
            lambda: stats().get("slots", 0)
        )
        Gauge("jdiff_slots_busy", "slots holding a request now", registry=r).set_function(
            lambda: stats().get("slots_busy", 0)
        )
        Gauge("jdiff_ready", "1 once warm-up has finished", registry=r).set_function(lambda: float(ready()))
        self.batch_outputs = Histogram(
            "jdiff_batch_outputs", "real outputs per image generate call", buckets=OUTPUTS, registry=r
        )
        self.queue_wait = Histogram(
            "jdiff_queue_wait_seconds",
            "seconds image requests waited for the device",
            buckets=SECONDS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "jdiff_stage_seconds", "seconds per pipeline stage per generate call", ["stage"], buckets=SECONDS,
            registry=r,
        )  # fmt: skip
        self.images = Counter("jdiff_images", "images produced", registry=r)
        self.videos = Counter("jdiff_videos", "videos produced", registry=r)
        r.register(_CompileCollector())

    def generated(self, outputs: int, timings: dict[str, float], *, video: bool = False) -> None:
        """One finished `generate` call: its outputs and seconds per stage."""
        if video:
            self.videos.inc(outputs)
        else:
            self.images.inc(outputs)
            self.batch_outputs.observe(outputs)
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def answered(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["Metrics", "compiles"]
