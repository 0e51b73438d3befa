"""`jdiff serve --batching continuous`: step-level continuous batching on the device worker thread.

`ContinuousBatcher` has `Batcher`'s interface (the endpoints cannot tell them apart) and one worker thread that
owns the device. Requests the model can run in slots (`jdiff.pipelines.slots`: FLUX.1, Qwen-Image, Z-Image,
FLUX.2 and FLUX.2-klein text-to-image, Wan text- and image-to-video with one expert or two; without step
caching, given latents or loaded LoRA adapters, on one device) go to a `SlotRunner`: each output of a request
is one slot of its shape bucket, requests join at the next chunk boundary and leave when done, so a 4-step
request does not wait behind a 50-step batch. Everything else (other families, edits, reference images, the
excluded cases above, LoRA loading, warm-up) goes to an inner `Batcher` whose queue this thread serves between
chunks (`Batcher.run_one`): request-level batching as before, and still one thread on the device. A task (which may change the weights) waits for the running slots to finish. Video
jobs go through `VideoJobs` (a pool thread per waiting job; the slots, or a request-level task).

The loop: take new requests (encode their prompts, queue their slot rows), cancel withdrawn ones, dispatch
one chunk on every bucket with work, read out the outputs that finished in the previous chunk (their decoding
was dispatched before this chunk, so the device never waits for the host to read them: one chunk in flight
ahead of the host), then run one queued request-level batch or task if any (the slots wait for it). Each
response's stages (Server-Timing: text_encoding, slot_wait, denoising, decoding) come from the device's own
timeline (`jdiff.pipelines.slot_clock`), measured without the worker waiting for the device.

A request whose client disconnects or whose `--timeout` fires (`withdraw`) leaves its slots at the next chunk
boundary, and its slots go to the next requests. Shutdown: new work is refused and queued work fails with 503;
running slots finish; `stop(timeout)` past its timeout cancels the running slots at the next chunk boundary
(their requests fail with `ShuttingDown`) and the worker exits.

A request's bytes do not depend on what else runs (`jdiff.sampling.slots`), so the same seed gives the same
image alone or under load; they are close to, not bytewise equal to, request-level batching's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from jdiff.errors import InputError
from jdiff.pipelines.base import save_video
from jdiff.pipelines.slots import SlotRunner
from jdiff.server.batcher import Batcher, ImageRequest, ImageResult, QueueFull, ShuttingDown

log = logging.getLogger("jdiff.server")


class Withdrawn(RuntimeError):
    """The request was withdrawn (its client left, its timeout passed, its job was deleted) while running."""


@dataclass(eq=False)
class _Entry:
    request: ImageRequest
    parsed: list  # one `Request` per output, batch 1
    jobs: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    started: float = 0.0
    withdrawn: bool = False
    previews: int = 0  # partial images sent (or dispatched)


class ContinuousBatcher:
    """`Batcher`'s interface over a `SlotRunner`, with a `Batcher` for what slots do not take.

    Args:
        pipeline: the loaded pipeline (`gen.pipeline`).
        generate: `gen.generate`, for the request-level path.
        slots, chunk_steps, max_steps, serial: the `SlotRunner`'s (slots per bucket, steps per chunk, most
            steps a slotted request may take, a request over it running request-level; batch-1 model calls).
        max_batch, batch_wait_s, max_queue, on_generate: as `Batcher`'s (`max_queue` counts both paths).
    """

    streams = True  # `streaming.py`: Server-Sent Events with partial images from the slots

    def __init__(
        self,
        pipeline,
        generate,
        *,
        slots: int = 4,
        chunk_steps: int = 4,
        max_steps: int = 64,
        serial: bool = False,
        max_batch: int = 4,
        batch_wait_s: float = 0.005,
        max_queue: int = 256,
        on_generate=None,
    ):
        self.pipeline = pipeline
        self.runner = SlotRunner(
            pipeline, slots=slots, chunk_steps=chunk_steps, max_steps=max_steps, serial=serial
        )
        self.inner = Batcher(
            generate,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            max_queue=max_queue,
            on_generate=on_generate,
        )
        self.max_batch, self.max_queue = max_batch, max_queue
        self._on_generate = on_generate
        self._cond = threading.Condition()
        self._incoming: collections.deque[_Entry] = collections.deque()
        self._entries: dict[Future, _Entry] = {}  # started, not finished
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._abandon = False
        self._last: list = []  # what the chunk just dispatched will finish
        self._last_previews: list = []  # (entry, index, decoded) dispatched after that chunk
        self._seconds = 0.0  # a running mean of request seconds, for 429s' Retry-After
        self._slot_stats = {"slots": 0, "slots_busy": 0, "slots_waiting": 0}
        self.counts = collections.Counter(chunks=0, outputs=0, requests=0, failures=0, cancelled=0)

    # ---- Batcher's interface ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="jdiff-device-worker", daemon=True)
            self._thread.start()

    def submit(self, request: ImageRequest) -> Future:
        """Queues `request` for slots, or for request-level batching where slots cannot take it."""
        if not 1 <= request.n <= self.max_batch:
            raise ValueError(f"a request makes 1 to {self.max_batch} outputs, got {request.n}")
        try:
            parsed, why = self.route(request)
        except InputError as e:
            request.future.set_exception(e)
            return request.future
        if why is not None and request.partial_images:
            raise InputError(
                f"partial_images needs step-level batching, which this request cannot have: {why}"
            )
        if why is not None:
            log.debug("request-level batching: %s", why)
            future = self.inner.submit(request)
            self._notify()
            return future
        with self._cond:
            self._check_room()
            self._incoming.append(_Entry(request, parsed))
            self._cond.notify()
        return request.future

    def route(self, request: ImageRequest) -> tuple[list, str | None]:
        """(one parsed `Request` per output, None) where slots take `request`, else ([], why not).

        Raises:
            InputError: the request's parameters are refused by the pipeline.
        """
        if request.loras:
            return [], "it carries LoRA adapters"
        parsed = [
            self.pipeline.parse(request.prompt, seed=request.seed + i, output_type="np", **request.params)
            for i in range(request.n)
        ]
        why = self.runner.refusal(parsed[0])
        return (parsed, None) if why is None else ([], why)

    def submit_task(self, fn) -> Future:
        future = self.inner.submit_task(fn)
        self._notify()
        return future

    def withdraw(self, future: Future) -> bool:
        """Cancels a queued request (True), or stops a running one at the next chunk boundary (False)."""
        with self._cond:
            for entry in self._incoming:
                if entry.request.future is future:
                    self._incoming.remove(entry)
                    return future.cancel()
            entry = self._entries.get(future)
            if entry is not None:
                entry.withdrawn = True
                self._cond.notify()
                return False
        return self.inner.withdraw(future)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stats(self) -> dict[str, int]:
        inner = self.inner.stats()
        with self._cond:
            slots = dict(self._slot_stats)
            queued = len(self._incoming) + slots["slots_waiting"]
        return {
            "queued": inner["queued"] + queued,
            "running": inner["running"] + slots["slots_busy"],
            "slots": slots["slots"],
            "slots_busy": slots["slots_busy"],
            "batches": inner["batches"],
            "outputs": inner["outputs"] + self.counts["outputs"],
            "requests": inner["requests"] + self.counts["requests"],
            "tasks": inner["tasks"],
            "failures": inner["failures"] + self.counts["failures"],
            "chunks": self.counts["chunks"],
        }

    def begin_shutdown(self) -> int:
        """Refuses new work and fails queued requests with `ShuttingDown`; running slots finish."""
        with self._cond:
            self._stopping = True
            dropped = list(self._incoming)
            self._incoming.clear()
            self._cond.notify_all()
        for entry in dropped:
            if entry.request.future.set_running_or_notify_cancel():
                entry.request.future.set_exception(
                    ShuttingDown("the server shut down before this request started")
                )
        return len(dropped) + self.inner.begin_shutdown()

    def stop(self, timeout: float | None = None) -> None:
        """`begin_shutdown`, then waits `timeout` seconds for running work; past it, the running slots are
        cancelled at the next chunk boundary and the worker exits."""
        self.begin_shutdown()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("shutdown grace over: cancelling %d running slot(s)", self._slot_stats["slots_busy"])
            with self._cond:
                self._abandon = True
                self._cond.notify_all()
            self._thread.join(60)

    # ---- the worker -----------------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify()

    def _check_room(self) -> None:
        if self._stopping:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        waiting = len(self._incoming) + self._slot_stats["slots_waiting"] + self.inner.stats()["queued"]
        if waiting >= self.max_queue:
            retry = max(1, min(600, round(self._seconds * (1 + waiting / max(1, self.runner.size)))))
            raise QueueFull(f"{waiting} requests are waiting (the limit); retry later", retry)

    def _has_work(self, carry) -> bool:
        r = self.runner
        return bool(self._incoming or any(carry) or r.busy or r.pending or self.inner.stats()["queued"])

    def _loop(self) -> None:
        carry: tuple = ([], [])  # outputs and previews due from the chunk before the one now dispatched
        while True:
            with self._cond:
                while not self._has_work(carry) and not self._stopping and not self._abandon:
                    self._cond.wait(0.5)
                if self._abandon or (self._stopping and not self._has_work(carry)):
                    break
                new = list(self._incoming)
                self._incoming.clear()
                withdrawn = [e for e in self._entries.values() if e.withdrawn]
            try:
                self._step(new, withdrawn, carry)
                carry = (self._last, self._last_previews)
            except BaseException:  # a bug here must not kill the only worker: fail loudly, keep serving
                log.exception("device worker: unexpected error")
                self._fail_all(RuntimeError("the device worker failed; see the server log"))
                carry = ([], [])
        self._fail_all(
            ShuttingDown("the server shut down before this request finished; retry on another replica")
        )

    def _step(self, new: list[_Entry], withdrawn: list[_Entry], carry: tuple) -> None:
        for entry in new:
            self._start(entry)
        for entry in withdrawn:
            for job in entry.jobs:
                self.runner.cancel(job)
            self.counts["cancelled"] += 1
            with self._cond:
                self._entries.pop(entry.request.future, None)
        # A task (LoRA loading or fusing, a warm-up) may change the weights: it waits for the running slots
        # to finish, and no request takes a slot meanwhile, so no request sees two sets of weights.
        barrier = self.inner.next_is_task()
        self.runner.hold = barrier
        self._last, self._last_previews = [], []
        if self.runner.busy or (self.runner.pending and not barrier):
            self._last = self.runner.advance()
            self.counts["chunks"] = self.runner.chunks
            self._last_previews = self._previews()
        self._publish()
        self._complete(*carry)
        if self.inner.stats()["queued"]:  # a request-level batch or a task, between two chunks
            if not self.inner.next_is_task():
                self.inner.run_one(wait=False)
            elif not self.runner.busy:  # (read again: a task may have come since `barrier`)
                self._complete(self._last, self._last_previews)  # answered before the weights may change
                self._last, self._last_previews = [], []
                self.inner.run_one(wait=False)

    def _start(self, entry: _Entry) -> None:
        future = entry.request.future
        if not future.set_running_or_notify_cancel():
            return
        entry.started = time.perf_counter()
        with self._cond:
            self._entries[future] = entry
        try:
            for i, request in enumerate(entry.parsed):
                entry.jobs.append(self.runner.add(request, (entry, i)))
        except Exception as e:
            for job in entry.jobs:
                self.runner.cancel(job)
            self._finish(entry, error=e)

    def _previews(self) -> list:
        """Dispatches the previews due after the chunk just dispatched: the j-th of a request's P partial
        images once it has run ceil(j * steps / (P + 1)) steps (one per chunk at most; late ones are merged)."""
        due = []
        with self._cond:
            entries = [e for e in self._entries.values() if e.request.partial_images and not e.withdrawn]
        for entry in entries:
            job, p = entry.jobs[0], entry.request.partial_images
            if job.slot is None or not 0 < job.done < job.steps:
                continue
            crossed = max((j for j in range(1, p + 1) if job.done >= -(-j * job.steps // (p + 1))), default=0)
            if crossed > entry.previews:
                due.append((entry, entry.previews, self.runner.preview(job)))
                entry.previews = crossed
        return due

    def _complete(self, finished: list, previews: list = ()) -> None:
        for entry, index, image in previews:
            if not entry.withdrawn and not entry.request.future.done():
                entry.request.on_preview(index, np.asarray(image)[0])
        for job, _, image in finished:
            entry, i = job.tag
            entry.images[i] = np.asarray(image)[0]  # waits for its decoding
            if len(entry.images) == len(entry.parsed) and not entry.withdrawn:
                self._finish(entry)

    def _finish(self, entry: _Entry, error: Exception | None = None) -> None:
        with self._cond:
            self._entries.pop(entry.request.future, None)
        if error is not None:
            self.counts["failures"] += 1
            entry.request.future.set_exception(error)
            return
        r = entry.request
        stages = _stages([job.timings() for job in entry.jobs])  # (their spans end as their outputs are read)
        seconds = time.perf_counter() - entry.started
        self._seconds = seconds if not self._seconds else 0.8 * self._seconds + 0.2 * seconds
        images = np.stack([entry.images[i] for i in range(r.n)])
        warnings = list(dict.fromkeys(w for p in entry.parsed for w in p.warnings))
        timings = {**stages, "total": seconds}
        busy = max(job.busy for job in entry.jobs)  # outputs in the chunk that finished it
        self.counts["outputs"] += r.n
        self.counts["requests"] += 1
        r.future.set_result(
            ImageResult(images, [p.seeds[0] for p in entry.parsed], entry.started - r.enqueued, seconds,
                        busy, warnings, timings)
        )  # fmt: skip
        if self._on_generate is not None:
            self._on_generate(r.n, timings, **({"video": True} if self.pipeline.is_video else {}))

    def _publish(self) -> None:
        r = self.runner
        with self._cond:
            self._slot_stats = {"slots": r.capacity, "slots_busy": r.busy, "slots_waiting": r.pending}

    def _fail_all(self, error: Exception) -> None:
        with self._cond:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            for job in entry.jobs:
                self.runner.cancel(job)
            if not entry.request.future.done():
                entry.request.future.set_exception(error)
        if entries:
            self.runner.reset()  # a failed chunk may have left its buckets unusable: start them afresh
            self._publish()


def _stages(per_output: list[dict[str, float]]) -> dict[str, float]:
    """A request's stage seconds from its outputs' (`Job.timings`; none where one was not measured): encodings
    and decodings add up (one at a time on the device), the longest slot wait and denoising count."""
    if not per_output or not all(per_output):
        return {}
    total = lambda k: sum(t[k] for t in per_output)
    return {
        "text_encoding": total("text_encoding"),
        "slot_wait": max(t["slot_wait"] for t in per_output),
        "denoising": max(t["denoising"] for t in per_output),
        "decoding": total("decoding"),
    }


class VideoJobs:
    """Video jobs through the slots: `JobStore`'s `runner`, `schedule` and `withdraw` with continuous batching.

    A job waits for its slot request on a pool thread (never on the device worker, which runs the slots);
    one that slots cannot take (an input image, LoRA adapters, ...) runs `run_video` request-level as a task
    on the device worker. `DELETE /v1/videos/{id}` of a running job stops it at the next chunk boundary.
    """

    def __init__(self, batcher: ContinuousBatcher, run_video, workers: int):
        self.batcher, self._run_video = batcher, run_video
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="jdiff-video-job")
        self._boxes: dict[Future, dict] = {}  # a job's pool future -> {"slot": its slot request's future}
        self._local = threading.local()

    def schedule(self, fn) -> Future:
        if self.batcher.stopping:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        box: dict = {}

        def call():
            self._local.box = box
            return fn()

        future = self._pool.submit(call)
        self._boxes[future] = box
        future.add_done_callback(lambda f: self._boxes.pop(f, None))
        return future

    def withdraw(self, future: Future) -> bool:
        if future.cancel():
            return True
        box = self._boxes.get(future, {})
        box["withdrawn"] = True
        if box.get("slot") is not None:
            self.batcher.withdraw(box["slot"])
        return False

    def run(self, params: dict, path) -> dict:
        p = dict(params)
        prompt, seed, loras = p.pop("prompt"), p.pop("seed"), p.pop("loras", None)
        request = ImageRequest(prompt, 1, seed, p, batchable="image" not in p, loras=loras)
        if self.batcher.route(request)[1] is not None:
            return self.batcher.submit_task(lambda: self._run_video(dict(params), path)).result()
        box = self._local.box
        slot = box["slot"] = self.batcher.submit(request)
        while True:  # a withdrawn slot request never completes: stop waiting for it
            if box.get("withdrawn"):
                self.batcher.withdraw(slot)
                raise Withdrawn("the job was cancelled")
            with contextlib.suppress(TimeoutError):
                result = slot.result(timeout=0.25)
                break
        save_video(result.images, path, fps=self.batcher.pipeline.preset.get("fps") or 16)
        return {"warnings": result.warnings, "timings": {k: round(v, 4) for k, v in result.timings.items()}}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["ContinuousBatcher", "VideoJobs", "Withdrawn"]
