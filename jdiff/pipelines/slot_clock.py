"""When the device work of continuous batching runs, per request, without the host waiting for it.

The slot runner dispatches each request's encoding, its chunks and its decoding asynchronously, one chunk ahead
of the host (`jdiff.pipelines.slots`): it never learns when a piece of work actually ran. `DeviceClock` has a
thread that waits for every dispatched piece in dispatch order and stamps when each one finished; a piece
started when it was dispatched or when the piece before it finished, whichever came later (the device runs
them in order). So a request's stages are measured on the device's own timeline: its encoding without the
chunk that ran before it, its denoising from its first chunk's start to its last chunk's end (chunks shared
with the other slots), its decoding alone. The worker thread never waits for the clock's thread, except
`Span.wait` for a span whose work it already waited for itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time

import jax


@dataclasses.dataclass(eq=False)
class Span:
    """One dispatched piece of device work: `start` and `end` (perf_counter seconds) once `done` is set."""

    dispatched: float
    start: float = 0.0
    end: float = 0.0
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def wait(self, timeout: float = 1.0) -> bool:
        """Whether the span is stamped (waiting up to `timeout` seconds for the clock's thread)."""
        return self.done.wait(timeout)


class DeviceClock:
    """Stamps dispatched device work as it finishes (see the module docstring); its thread starts on first use."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._last = 0.0  # when the previous piece finished

    def span(self, arrays, dispatched: float | None = None) -> Span:
        """The span of the work that produces `arrays` (just dispatched; `dispatched`: when its host side began,
        default now)."""
        span = Span(time.perf_counter() if dispatched is None else dispatched)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jdiff-slot-clock", daemon=True)
            self._thread.start()
        self._queue.put((arrays, span))
        return span

    def _run(self) -> None:
        while True:
            arrays, span = self._queue.get()
            with contextlib.suppress(Exception):  # a failed chunk: the runner reports it; its span ends here
                jax.block_until_ready(arrays)
            now = time.perf_counter()
            span.start, span.end = max(span.dispatched, self._last), now
            self._last = now
            span.done.set()
            del arrays, span


__all__ = ["DeviceClock", "Span"]
