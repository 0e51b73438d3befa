"""One worker thread owns the device: a request queue, dynamic batching, and plain tasks (video jobs).

Image requests with the same generation settings (size, steps, guidance, negative prompt, ...) are batched,
whatever LoRA adapters each uses (adapters are per output, inputs of the same compiled program), into one
`generate` call, up to `max_batch` outputs: the worker takes the oldest request, then waits at most
`batch_wait_s` after that request arrived for compatible ones to fill the batch. Under load the queue fills
while a batch runs, so batches form without waiting. A batch is padded up to a bucket size (powers of two
up to `max_batch`, and `max_batch`), so every shape the server runs is one of a few compiled at warm-up.

Each output's noise depends only on its own seed (`seeds_of`), so a request draws the same image alone or
batched, up to float rounding: XLA may order a reduction differently at another batch size.

Multi-host serving (to come) keeps this shape: process 0 runs the server, and the `generate` it is given
sends each call's arguments to the other processes, which make the same call in lockstep.

Failures stay with their request: when a batched `generate` raises, each request of the batch is retried
alone, so only the culprit fails. A request that timed out, or whose client went away, before it started is
dropped unrun and its place in the queue freed at once (`withdraw`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("jdiff.server")


class ShuttingDown(RuntimeError):
    """The server is stopping; the request was not started."""


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts (`max_queue`); `retry_after` is a guess in seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class ImageRequest:
    """One HTTP request for `n` images. `params` are the `generate` keywords a batch shares.

    A request that is not `batchable` (e.g. one carrying a conditioning image) always runs alone. `loras`
    (adapter name -> scale) is the request's own: requests with different adapters share a batch, each
    output using its request's adapters (`generate(loras=[...])`, one dict per prompt).
    """

    prompt: str
    n: int
    seed: int
    params: dict[str, Any]
    batchable: bool = True
    loras: dict[str, float] | None = None
    # Streaming previews (continuous batching only): how many, and where each goes (index, image [H, W, 3]).
    partial_images: int = 0
    on_preview: Callable[[int, np.ndarray], None] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.params.items())) if self.batchable else (id(self),)


@dataclass
class ImageResult:
    images: np.ndarray  # [n, H, W, 3] float32 in [0, 1]
    seeds: list[int]
    queue_s: float  # from arrival to the start of its generate call
    generate_s: float  # the whole generate call it was part of
    batch_outputs: int  # real outputs in that call (without padding)
    warnings: list[str] = field(default_factory=list)  # the generate call's (`GenerationResult.warnings`)
    timings: dict[str, float] = field(default_factory=dict)  # its seconds per stage (`.timings`)


@dataclass(eq=False)
class Task:
    """Any device work that is not an image batch (a video job, a warm-up), run alone in order."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes the worker runs: powers of two below `max_batch`, and `max_batch` itself."""
    sizes, b = {max_batch}, 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


class Batcher:
    """The request queue and the device worker thread.

    Args:
        generate: `DiffGenerator.generate` (or anything with its signature); called on the worker only.
        max_batch: the most outputs one `generate` call makes; 1 turns batching off.
        batch_wait_s: how long the oldest request may wait for compatible ones to fill its batch.
        max_queue: requests (and tasks) that may wait; more are refused with `QueueFull`.
        pad: pad batches to `batch_buckets(max_batch)` sizes so no request compiles a new shape.
        on_generate: called on the worker after each image `generate` call with its real outputs (padding
            aside) and its `timings` (seconds per stage), e.g. for metrics.
    """

    def __init__(
        self,
        generate: Callable[..., Any],
        *,
        max_batch: int = 4,
        batch_wait_s: float = 0.005,
        max_queue: int = 256,
        pad: bool = True,
        on_generate: Callable[[int, dict[str, float]], None] | None = None,
    ):
        self._generate = generate
        self._on_generate = on_generate
        self._seconds = 0.0  # a running mean of generate seconds, for 429s' Retry-After
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.buckets = batch_buckets(max_batch) if pad else None
        self._pending: collections.deque[ImageRequest | Task] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running = 0  # outputs (or 1 for a task) on the device now
        # Keys fixed up front: `stats` copies it from another thread while the worker counts.
        self.counts = collections.Counter(batches=0, outputs=0, requests=0, tasks=0, failures=0)

    # ---- submitting -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="jdiff-device-worker", daemon=True)
            self._thread.start()

    def submit(self, request: ImageRequest) -> Future:
        """Queues `request`; its future gets an `ImageResult` or the exception that `generate` raised."""
        if not 1 <= request.n <= self.max_batch:
            raise ValueError(f"a request makes 1 to {self.max_batch} outputs, got {request.n}")
        self._put(request)
        return request.future

    def submit_task(self, fn: Callable[[], Any]) -> Future:
        """Queues `fn` to run alone on the worker; the future gets its return value or exception."""
        task = Task(fn)
        self._put(task)
        return task.future

    def _put(self, item: ImageRequest | Task) -> None:
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            if len(self._pending) >= self.max_queue:
                retry = max(1, min(600, round(self._seconds * (1 + len(self._pending) / self.max_batch))))
                raise QueueFull(f"{len(self._pending)} requests are waiting (the limit); retry later", retry)
            self._pending.append(item)
            self._cond.notify()

    def withdraw(self, future: Future) -> bool:
        """Takes the queued item whose future is `future` off the queue (freeing its place) and cancels it.

        Returns whether it was cancelled: False once it has started (it then finishes; its result is
        dropped by whoever stopped waiting).
        """
        with self._cond:
            for item in self._pending:
                if item.future is future:
                    self._pending.remove(item)
                    break
        return future.cancel()

    # ---- state ------------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def next_is_task(self) -> bool:
        """Whether the next queued item is a task (not an image request)."""
        with self._cond:
            return bool(self._pending) and isinstance(self._pending[0], Task)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"queued": len(self._pending), "running": self._running, **self.counts}

    # ---- stopping ---------------------------------------------------------------------------------------

    def begin_shutdown(self) -> int:
        """Refuses new work and fails every queued, not yet started item with `ShuttingDown`.

        What runs now finishes. Returns how many queued items were failed.
        """
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for item in dropped:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(ShuttingDown("the server shut down before this request started"))
        if dropped:
            log.info("shutting down: %d queued request(s) refused with 503", len(dropped))
        return len(dropped)

    def stop(self, timeout: float | None = None) -> None:
        """`begin_shutdown`, then waits for the running batch or task to finish and the worker to exit."""
        self.begin_shutdown()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while self.run_one():
            pass

    def run_one(self, wait: bool = True) -> bool:
        """Runs the next queued batch or task on the calling thread (the worker's loop; the continuous
        batcher's thread, which owns this queue when it is not started). Returns False when there was nothing
        to run: stopping with an empty queue, or with `wait` False an empty queue."""
        with self._cond:
            while wait and not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return False
            first = self._pending.popleft()
            batch = self._fill(first) if isinstance(first, ImageRequest) else first
        self._run(batch)
        return True

    def _run(self, batch) -> None:
        try:
            if isinstance(batch, Task):
                self._run_task(batch)
            else:
                self._run_batch(batch)
        except BaseException:  # a bug here must not kill the only worker: fail loudly, keep serving
            log.exception("device worker: unexpected error")
        finally:
            with self._cond:
                self._running = 0

    def _fill(self, first: ImageRequest) -> list[ImageRequest]:
        """Collects compatible requests behind `first` (called with the lock held)."""
        batch, total, key = [first], first.n, first.key
        deadline = first.enqueued + self.batch_wait_s
        while total < self.max_batch and first.batchable:
            for item in list(self._pending):
                if (
                    isinstance(item, ImageRequest)
                    and item.batchable
                    and item.key == key
                    and total + item.n <= self.max_batch
                ):
                    self._pending.remove(item)
                    batch.append(item)
                    total += item.n
            remaining = deadline - time.perf_counter()
            if total >= self.max_batch or remaining <= 0 or self._stopping:
                break
            self._cond.wait(remaining)
        self._running = total
        return batch

    def _run_task(self, task: Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        with self._cond:
            self._running = 1
        self.counts["tasks"] += 1
        try:
            result = task.fn()
        except Exception as e:
            task.future.set_exception(e)
        else:
            task.future.set_result(result)

    def _run_batch(self, batch: list[ImageRequest]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drops timed-out ones
        if not live:
            return
        try:
            results = self._generate_batch(live)
        except Exception as e:
            if len(live) == 1:
                self.counts["failures"] += 1
                live[0].future.set_exception(e)
                return
            log.warning("a batch of %d requests failed (%r); retrying each alone", len(live), e)
            for r in live:
                try:
                    (result,) = self._generate_batch([r])
                except Exception as e1:
                    self.counts["failures"] += 1
                    r.future.set_exception(e1)
                else:
                    r.future.set_result(result)
            return
        for r, result in zip(live, results, strict=True):
            r.future.set_result(result)

    def _generate_batch(self, reqs: Sequence[ImageRequest]) -> list[ImageResult]:
        prompts = [r.prompt for r in reqs for _ in range(r.n)]
        seeds = [r.seed + i for r in reqs for i in range(r.n)]
        loras = [r.loras or {} for r in reqs for _ in range(r.n)]
        real = len(prompts)
        if self.buckets is not None:
            size = next(b for b in self.buckets if b >= real)
            # Padding outputs reuse the first prompt and seed: their noise is independent of the others'.
            prompts += prompts[:1] * (size - real)
            seeds += seeds[:1] * (size - real)
            loras += [{}] * (size - real)
        extra = {"loras": loras} if any(loras) else {}
        t0 = time.perf_counter()
        out = self._generate(prompts, seed=seeds, output_type="np", **reqs[0].params, **extra)
        images = np.asarray(out.images)
        warnings = list(getattr(out, "warnings", None) or [])
        dt = time.perf_counter() - t0
        timings = dict(getattr(out, "timings", None) or {})
        self._seconds = dt if not self._seconds else 0.8 * self._seconds + 0.2 * dt
        if self._on_generate is not None:
            self._on_generate(real, timings)
        self.counts["batches"] += 1
        self.counts["outputs"] += real
        self.counts["requests"] += len(reqs)
        results, i = [], 0
        for r in reqs:
            results.append(
                ImageResult(
                    images[i : i + r.n], seeds[i : i + r.n], t0 - r.enqueued, dt, real, warnings, timings
                )
            )
            i += r.n
        return results


__all__ = ["Batcher", "ImageRequest", "ImageResult", "QueueFull", "ShuttingDown", "Task", "batch_buckets"]
