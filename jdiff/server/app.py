"""The HTTP API of `jdiff serve`: OpenAI-style, like SGLang Diffusion's (the README lists the fields).

- `GET /health` (503 until warm-up has finished), `GET /liveness`, `GET /metrics` (`metrics.py`),
  `GET /v1/models`, `GET /v1/models/{id}` (here), `GET /` (the try-it page, `page.py`)
- `POST /v1/images/generations`, `POST /v1/images/edits` (`images.py`; edits for pipelines that take a
  conditioning image)
- `POST /v1/videos`, `GET /v1/videos`, `GET /v1/videos/{id}`, `GET /v1/videos/{id}/content` (`videos.py`)
- `GET /v1/loras`, `POST /v1/loras`, `DELETE /v1/loras/{name}` (`loras.py`)

Requests are parsed strictly (`schemas.py`), checked against the model (`validation.py`) and answered with
`encoding.py`; every error is `{"error": {"message": ..., "type": ...}}` (`errors.py`, with `param` naming the
field at fault). Every request goes through `middleware.py` (API key, log line, metrics). This module builds
the app and owns its lifecycle: the device worker starts, the server listens while warm-up compiles (health
503), then shutdown drains the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from jdiff.server import images, loras, page, videos
from jdiff.server.batcher import Batcher, ImageRequest, ShuttingDown, batch_buckets
from jdiff.server.context import ServerContext, context
from jdiff.server.continuous import ContinuousBatcher, VideoJobs
from jdiff.server.errors import ApiError, error_response, install_handlers
from jdiff.server.jobs import JobStore
from jdiff.server.metrics import Metrics
from jdiff.server.middleware import Observe
from jdiff.server.validation import MAX_FRAMES, default_max_pixels, parse_size

log = logging.getLogger("jdiff.server")


def create_app(
    gen,
    *,
    model_name: str | None = None,
    max_batch: int = 4,
    batch_wait_ms: float = 5.0,
    timeout_s: float = 600.0,
    max_pixels: int | None = None,
    max_frames: int | None = None,
    max_queue: int = 256,
    warmup: list[tuple[int, int]] | None = None,
    api_key: str | None = None,
    batching: str = "request",
    slots: int | None = None,
    chunk_steps: int = 4,
    max_steps: int | None = None,
    serial_slots: bool = False,
) -> FastAPI:
    """The FastAPI app serving `gen` (a `DiffGenerator`).

    Its lifespan starts the device worker and, in the background while the server already listens, compiles
    the `warmup` sizes at every batch bucket (`/health` is 503 until that ends; requests sent meanwhile queue
    behind it); on shutdown it drains the queue. `app.state.begin_shutdown()` refuses new work and fails
    queued requests with 503 (`serve` calls it on SIGTERM, before uvicorn waits for in-flight requests). A
    failed warm-up leaves `app.state.warmup_error` set, health 503, and calls `app.state.on_warmup_failure`
    (`serve` stops the server).

    Args:
        gen: the loaded model.
        model_name: its id in responses; default the model directory's name.
        max_batch: the most outputs one `generate` call makes (and the most `n` a request may ask).
        batch_wait_ms: how long a request may wait for compatible ones to share its batch.
        timeout_s: how long a request may wait for its images before a 504.
        max_pixels: the largest output (width x height) a request may ask for, its default size included;
            default from the model and device (`validation.default_max_pixels`).
        max_frames: the most frames a video request may ask for, its default length included; default
            `validation.MAX_FRAMES`.
        max_queue: requests that may wait for the device; more get 429.
        warmup: (height, width) sizes to compile before serving.
        api_key: when set, every `/v1/*` request needs `Authorization: Bearer <api_key>` (else 401).
        batching: "request" (whole requests of the same settings batched, `batcher.py`) or "continuous"
            (step-level, `continuous.py`, where the model supports it; request-level for the rest).
        slots, chunk_steps, max_steps: continuous batching's slots per shape bucket (default max_batch),
            steps per chunk, and most steps a slotted request may take (default 64, or the model's default
            steps if more).
        serial_slots: continuous batching runs the model slot by slot at batch 1, skipping idle slots.
    """
    pipeline = gen.pipeline
    name = model_name or Path(str(gen.model_path)).name
    max_pixels = default_max_pixels(pipeline) if max_pixels is None else max_pixels
    max_frames = MAX_FRAMES if max_frames is None else max_frames
    state = {"ready": False}
    metrics = Metrics(lambda: batcher.stats(), lambda: state["ready"])
    common = dict(
        max_batch=max_batch,
        batch_wait_s=batch_wait_ms / 1000,
        max_queue=max_queue,
        on_generate=metrics.generated,
    )
    if batching == "continuous":
        steps = (
            max(64, int(pipeline.preset.get("num_inference_steps") or 0)) if max_steps is None else max_steps
        )
        batcher = ContinuousBatcher(
            pipeline,
            gen.generate,
            slots=slots or max_batch,
            chunk_steps=chunk_steps,
            max_steps=steps,
            serial=serial_slots,
            **common,
        )
    elif batching == "request":
        batcher = Batcher(gen.generate, **common)
    else:
        raise ValueError(f"batching must be 'request' or 'continuous', got {batching!r}")

    def run_video(params: dict, path: Path) -> dict:
        result = gen.generate(params.pop("prompt"), output_type="np", output_path=path, **params)
        timings = {k: round(v, 4) for k, v in (getattr(result, "timings", None) or {}).items()}
        metrics.generated(1, timings, video=True)
        return {"warnings": list(getattr(result, "warnings", None) or []), "timings": timings}

    jobs = None
    if pipeline.is_video and isinstance(batcher, ContinuousBatcher):  # video jobs through the slots too
        video_jobs = VideoJobs(batcher, run_video, workers=max(4, 2 * batcher.runner.size + max_queue // 8))
        jobs = JobStore(video_jobs.run, video_jobs.schedule, withdraw=video_jobs.withdraw)
        jobs.close = lambda close=jobs.close: (video_jobs.close(), close())
    elif pipeline.is_video:
        jobs = JobStore(run_video, batcher.submit_task, withdraw=batcher.withdraw)

    def run_warmup() -> None:
        for height, width in warmup or ():
            continuous = isinstance(batcher, ContinuousBatcher) and not pipeline.is_video
            if continuous:  # the slots' chunk program, with a request as short as a chunk
                params = {"height": height, "width": width, "num_inference_steps": chunk_steps}
                batcher.submit(ImageRequest("", 1, 0, params)).result()
            sizes = [1] if pipeline.is_video or continuous else batch_buckets(max_batch)
            for b in sizes:
                t0 = time.perf_counter()
                kw = {"seed": list(range(b)), "output_type": "np", "height": height, "width": width}
                batcher.submit_task(lambda kw=kw, b=b: gen.generate([""] * b, **kw)).result()
                log.info("warm-up %dx%d batch %d: %.2fs", width, height, b, time.perf_counter() - t0)

    async def warm_up(app: FastAPI) -> None:
        try:
            await asyncio.to_thread(run_warmup)
        except ShuttingDown:
            log.info("warm-up stopped: the server is shutting down")
        except Exception as e:
            log.exception("warm-up failed; the server reports unhealthy")
            app.state.warmup_error = f"{type(e).__name__}: {e}"
            app.state.on_warmup_failure()
        else:
            state["ready"] = True
            log.info("ready: %s (max batch %d, batch wait %g ms)", name, max_batch, batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        task = asyncio.create_task(warm_up(app))
        try:
            yield
        finally:
            batcher.begin_shutdown()  # fails a queued warm-up task, so the warm-up thread ends
            await task
            await asyncio.to_thread(batcher.stop, app.state.stop_timeout)
            if batcher.alive:
                log.warning("shutdown grace over: abandoning the running generate call")
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
        max_frames=max_frames,
        timeout_s=timeout_s,
        created=int(time.time()),
    )
    app.state.batcher, app.state.jobs, app.state.metrics = batcher, jobs, metrics
    app.state.begin_shutdown = batcher.begin_shutdown
    app.state.ready = lambda: state["ready"]
    app.state.warmup_error = None
    app.state.on_warmup_failure = lambda: None
    app.state.stop_timeout = None  # seconds `stop` waits for running work (`serve`'s shutdown_grace_s)
    install_handlers(app)
    routers = [_router, page.router, images.router, videos.router, loras.router]
    routes = [route for router in routers for route in router.routes]
    app.add_middleware(Observe, api_key=api_key, metrics=metrics, routes=routes)
    for router in routers:
        app.include_router(router)
    return app


_router = APIRouter()


@_router.get("/health")
async def health(request: Request):
    """200 once warm-up has finished, while serving; 503 before (`warming_up`), after a failed warm-up
    (`warmup_failed`), once shutting down or if the device worker died (`unavailable`): for load balancers."""
    ctx = context(request)
    state = request.app.state
    if not ctx.batcher.alive or ctx.batcher.stopping:
        status = "unavailable"
    elif state.warmup_error is not None:
        status = "warmup_failed"
    else:
        status = "ok" if state.ready() else "warming_up"
    body = {"status": status, "model": ctx.name, **ctx.batcher.stats()}
    if state.warmup_error is not None:
        body["error"] = state.warmup_error
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@_router.get("/liveness")
async def liveness():
    """200 as soon as the process serves HTTP (warm-up or not): restart the process only when this fails."""
    return {"status": "alive"}


@_router.get("/metrics")
async def metrics(request: Request):
    """Prometheus text format (`metrics.py` lists what is counted)."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@_router.get("/v1/models")
async def models(request: Request):
    """The one model, with what it makes, what it accepts and its defaults."""
    return {"object": "list", "data": [_card(context(request))]}


@_router.get("/v1/models/{model_id:path}")
async def model(request: Request, model_id: str):
    """The model card by id (OpenAI's `models.retrieve`); 404 for any other id."""
    ctx = context(request)
    if model_id != ctx.name:
        raise ApiError(
            404, f"no model {model_id!r}; this server serves {ctx.name!r}", "not_found_error", param="model"
        )
    return _card(ctx)


def _card(ctx: ServerContext) -> dict:
    pipeline = ctx.pipeline
    return {
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
        **({"max_frames": ctx.max_frames} if pipeline.is_video else {}),
    }


# `ApiError`, `error_response` and `parse_size` live in errors.py / validation.py; re-exported here for the
# CLI (`jdiff serve --warmup` checks its sizes as requests are checked).
__all__ = ["ApiError", "create_app", "default_max_pixels", "error_response", "parse_size"]
