"""The HTTP API of `jdiff serve`: OpenAI-style, like SGLang Diffusion's (the README lists the fields).

- `GET /health`, `GET /v1/models` (here)
- `POST /v1/images/generations`, `POST /v1/images/edits` (`images.py`; edits for pipelines that take a
  conditioning image)
- `POST /v1/videos`, `GET /v1/videos`, `GET /v1/videos/{id}`, `GET /v1/videos/{id}/content` (`videos.py`)
- `GET /v1/loras`, `POST /v1/loras`, `DELETE /v1/loras/{name}` (`loras.py`)

Requests are parsed strictly (`schemas.py`), checked against the model (`validation.py`) and answered with
`encoding.py`; every error is `{"error": {"message": ..., "type": ...}}` (`errors.py`). This module builds the
app and owns its lifecycle: the device worker starts, warm-up compiles, then shutdown drains the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from jdiff.server import images, loras, videos
from jdiff.server.batcher import Batcher, batch_buckets
from jdiff.server.context import ServerContext, context
from jdiff.server.errors import ApiError, error_response, install_handlers
from jdiff.server.jobs import JobStore
from jdiff.server.validation import parse_size

log = logging.getLogger("jdiff.server")


def create_app(
    gen,
    *,
    model_name: str | None = None,
    max_batch: int = 4,
    batch_wait_ms: float = 5.0,
    timeout_s: float = 600.0,
    max_pixels: int = 2048 * 2048,
    max_queue: int = 256,
    warmup: list[tuple[int, int]] | None = None,
) -> FastAPI:
    """The FastAPI app serving `gen` (a `DiffGenerator`).

    Its lifespan starts the device worker, compiles the `warmup` sizes at every batch bucket, and on
    shutdown drains the queue. `app.state.begin_shutdown()` refuses new work and fails queued requests with
    503 (`serve` calls it on SIGTERM, before uvicorn waits for in-flight requests).

    Args:
        gen: the loaded model.
        model_name: its id in responses; default the model directory's name.
        max_batch: the most outputs one `generate` call makes (and the most `n` a request may ask).
        batch_wait_ms: how long a request may wait for compatible ones to share its batch.
        timeout_s: how long a request may wait for its images before a 504.
        max_pixels: the largest output (width x height) a request may ask for.
        max_queue: requests that may wait for the device; more get 429.
        warmup: (height, width) sizes to compile before serving.
    """
    pipeline = gen.pipeline
    name = model_name or Path(str(gen.model_path)).name
    batcher = Batcher(
        gen.generate, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, max_queue=max_queue
    )

    def run_video(params: dict, path: Path) -> list[str]:
        result = gen.generate(params.pop("prompt"), output_type="np", output_path=path, **params)
        return list(getattr(result, "warnings", None) or [])

    jobs = JobStore(run_video, batcher.submit_task) if pipeline.is_video else None

    def run_warmup() -> None:
        for height, width in warmup or ():
            sizes = [1] if pipeline.is_video else batch_buckets(max_batch)
            for b in sizes:
                t0 = time.perf_counter()
                kw = {"seed": list(range(b)), "output_type": "np", "height": height, "width": width}
                batcher.submit_task(lambda kw=kw, b=b: gen.generate([""] * b, **kw)).result()
                log.info("warm-up %dx%d batch %d: %.2fs", width, height, b, time.perf_counter() - t0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            await asyncio.to_thread(run_warmup)
            log.info("serving %s (max batch %d, batch wait %g ms)", name, max_batch, batch_wait_ms)
            yield
        finally:
            await asyncio.to_thread(batcher.stop)
            if jobs is not None:
                jobs.close()

    app = FastAPI(title="jdiff", lifespan=lifespan)
    app.state.context = ServerContext(
        gen=gen,
        pipeline=pipeline,
        name=name,
        batcher=batcher,
        jobs=jobs,
        max_batch=max_batch,
        max_pixels=max_pixels,
        timeout_s=timeout_s,
        created=int(time.time()),
    )
    app.state.batcher, app.state.jobs = batcher, jobs
    app.state.begin_shutdown = batcher.begin_shutdown
    install_handlers(app)
    app.middleware("http")(_log_requests)
    app.include_router(_router)
    app.include_router(images.router)
    app.include_router(videos.router)
    app.include_router(loras.router)
    return app


async def _log_requests(request: Request, call_next):
    """One log line per request: method, path, status, and where its time went."""
    t0 = time.perf_counter()
    request.state.timing = {}  # the image endpoints fill in queue and generate seconds
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        t = request.state.timing
        log.info(
            "%s %s %d queue %.3fs generate %.3fs total %.3fs",
            request.method,
            request.url.path,
            status,
            t.get("queue", 0.0),
            t.get("generate", 0.0),
            time.perf_counter() - t0,
        )


_router = APIRouter()


@_router.get("/health")
async def health(request: Request):
    """200 while serving; 503 once shutting down (or if the device worker died), for load balancers."""
    ctx = context(request)
    ok = ctx.batcher.alive and not ctx.batcher.stopping
    body = {"status": "ok" if ok else "unavailable", "model": ctx.name, **ctx.batcher.stats()}
    return JSONResponse(body, status_code=200 if ok else 503)


@_router.get("/v1/models")
async def models(request: Request):
    """The one model, with what it makes, what it accepts and its defaults."""
    ctx = context(request)
    pipeline = ctx.pipeline
    card = {
        "id": ctx.name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "jdiff",
        "family": pipeline.family,
        "task": "video" if pipeline.is_video else "image",
        "accepts_image": pipeline.accepts_image,
        "dtype": getattr(ctx.gen, "dtype", None),
        "defaults": {k: v for k, v in pipeline.preset.items() if k not in ("family", "description")},
        "max_batch": ctx.max_batch,
        "max_pixels": ctx.max_pixels,
    }
    return {"object": "list", "data": [card]}


# `ApiError`, `error_response` and `parse_size` live in errors.py / validation.py; re-exported here for the
# CLI (`jdiff serve --warmup` checks its sizes as requests are checked).
__all__ = ["ApiError", "create_app", "error_response", "parse_size"]
