"""Asynchronous jobs (video generation): queued -> in_progress -> completed | failed, as OpenAI's Videos API.

The store knows nothing about models or devices: it is given a `runner(params, path)` that makes the output
file at `path`, and a `schedule(fn) -> Future` that runs `fn` on the device worker (`Batcher.submit_task`).
Finished jobs are kept (with their files) up to `max_jobs`; the oldest finished ones are evicted first.
`delete` forgets a job: a queued one is taken off the device queue, a running one's output is discarded when
its `generate` returns, a finished one's file is removed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jdiff.errors import InputError, OutputError

log = logging.getLogger("jdiff.server")

QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"


@dataclass(eq=False)
class Job:
    id: str
    params: dict[str, Any]  # what the runner gets
    meta: dict[str, Any]  # shown in the job's JSON (model, size, seconds, seed, ...)
    status: str = QUEUED
    created_at: int = field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    error: dict[str, str] | None = None  # {"code": ..., "message": ...}
    path: Path | None = None
    run_s: float | None = None
    future: Future | None = None  # the device worker's, while scheduled
    deleted: bool = False

    @property
    def done(self) -> bool:
        return self.status in (COMPLETED, FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "video",
            "status": self.status,
            "progress": 100 if self.status == COMPLETED else 0,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "error": self.error,
            **self.meta,
        }


class JobStore:
    """Creates, runs and keeps asynchronous jobs.

    Args:
        runner: `runner(params, path)` makes the output file at `path`; it runs on the device worker and
            may return a list of warnings, or a dict of fields (`warnings`, `timings`), shown in the job's JSON. An `InputError` it raises fails the job
            as the user's error, an `OutputError` (the server's own directory) or anything else as the
            server's.
        schedule: `schedule(fn)` queues `fn` for the device worker and returns a `Future`; it may raise
            (queue full, shutting down), which `submit` passes on with no job created.
        withdraw: `withdraw(future)` takes a scheduled, not yet started `fn` off the queue (`Batcher.withdraw`);
            default `future.cancel()`.
        directory: where output files go; default a fresh temporary directory, removed by `close`.
        max_jobs: how many jobs to remember; beyond it the oldest finished job and its file are dropped.
        suffix: the output file suffix (it tells the pipeline which format to write).
    """

    def __init__(
        self,
        runner: Callable[[dict[str, Any], Path], Any],
        schedule: Callable[[Callable[[], None]], Future],
        directory: str | Path | None = None,
        withdraw: Callable[[Future], bool] | None = None,
        *,
        max_jobs: int = 256,
        suffix: str = ".mp4",
    ):
        self._runner = runner
        self._schedule = schedule
        self._withdraw = withdraw or (lambda f: f.cancel())
        self._owns_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="jdiff-jobs-") if directory is None else directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_jobs = max_jobs
        self.suffix = suffix
        self._jobs: dict[str, Job] = {}  # insertion order = creation order
        self._lock = threading.Lock()

    def submit(self, params: dict[str, Any], **meta: Any) -> Job:
        """Creates a queued job and schedules it; returns it at once."""
        job = Job(id=f"video_{uuid.uuid4().hex}", params=params, meta=meta)
        with self._lock:
            self._jobs[job.id] = job
        try:
            future = self._schedule(lambda: self._run(job))
        except BaseException:
            with self._lock:
                del self._jobs[job.id]
            raise
        job.future = future
        future.add_done_callback(lambda f: self._not_run(job, f))
        self._evict()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def delete(self, job_id: str) -> Job | None:
        """Forgets the job (None if unknown): unqueues it, or discards its output once its run ends."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return None
            job.deleted = True
            path = job.path
        if job.future is not None and not job.done:
            self._withdraw(job.future)
        if path is not None:
            path.unlink(missing_ok=True)
        return job

    def close(self) -> None:
        """Removes the output directory if the store created it (call after the worker has stopped)."""
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # ---- lifecycle --------------------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.status != QUEUED:
                return
            job.status = IN_PROGRESS
        path = self.directory / f"{job.id}{self.suffix}"
        t0 = time.perf_counter()
        try:
            warnings = self._runner(dict(job.params), path)
            if not path.is_file():
                raise RuntimeError(f"the pipeline wrote no output file at {path}")
            if isinstance(warnings, list) and warnings:
                job.meta["warnings"] = list(warnings)
            elif isinstance(warnings, dict):
                job.meta.update({k: v for k, v in warnings.items() if v})
        except OutputError as e:  # the server picked the path: its failure, not the request's
            log.error("job %s: %s", job.id, e)
            self._finish(job, error={"code": "server_error", "message": str(e)})
        except InputError as e:
            self._finish(job, error={"code": "invalid_request_error", "message": str(e)})
        except Exception as e:
            log.exception("job %s failed", job.id)
            self._finish(job, error={"code": "server_error", "message": f"{type(e).__name__}: {e}"})
        else:
            self._finish(job, path=path)
        finally:
            job.run_s = time.perf_counter() - t0
        log.info("job %s %s in %.3fs", job.id, job.status, job.run_s)

    def _not_run(self, job: Job, future: Future) -> None:
        """The worker never ran the job (shut down, cancelled): fail it with the reason."""
        if job.status != QUEUED:
            return
        reason = "cancelled" if future.cancelled() else str(future.exception() or "not run")
        self._finish(job, error={"code": "server_unavailable", "message": reason})

    def _finish(self, job: Job, *, path: Path | None = None, error: dict[str, str] | None = None) -> None:
        with self._lock:
            job.path, job.error = path, error
            job.status = FAILED if error else COMPLETED
            job.completed_at = int(time.time())
            deleted = job.deleted
        if deleted and path is not None:  # deleted while it ran: nobody can fetch it
            path.unlink(missing_ok=True)

    def _evict(self) -> None:
        with self._lock:
            excess = len(self._jobs) - self.max_jobs
            old = [j for j in self._jobs.values() if j.done][: max(excess, 0)]
            for j in old:
                del self._jobs[j.id]
        for j in old:
            if j.path is not None:
                j.path.unlink(missing_ok=True)


__all__ = ["COMPLETED", "FAILED", "IN_PROGRESS", "QUEUED", "Job", "JobStore"]
