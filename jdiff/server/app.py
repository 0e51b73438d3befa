"""The HTTP API of `jdiff serve`: OpenAI-style, like SGLang Diffusion's (INTERFACE.md).

- `GET /health`, `GET /v1/models`
- `POST /v1/images/generations`, `POST /v1/images/edits` (pipelines that take a conditioning image)
- `POST /v1/videos`, `GET /v1/videos`, `GET /v1/videos/{id}`, `GET /v1/videos/{id}/content` (video models)

Every error is `{"error": {"message": ..., "type": ...}}`: 400 for bad input (FastAPI's 422 included), 404,
413 for an oversized body, 429 for a full queue, 503 while shutting down, 504 past `timeout_s`, 500 for bugs.
Bodies are parsed here, not by FastAPI, so that JSON's NaN / Infinity / 1e999 are refused like any bad value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import io
import json
import logging
import math
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jdiff.errors import InputError
from jdiff.pipelines.base import to_uint8
from jdiff.server.batcher import Batcher, ImageRequest, QueueFull, ShuttingDown, batch_buckets
from jdiff.server.jobs import COMPLETED, JobStore

log = logging.getLogger("jdiff.server")

MAX_STEPS = 200
MAX_PROMPT_CHARS = 10_000
MAX_GUIDANCE = 100.0
MAX_FRAMES = 1025
MAX_SEED = 2**63 - 1
MAX_JSON_BYTES = 1 << 20  # text-only requests
MAX_IMAGE_JSON_BYTES = 32 << 20  # requests carrying a base64 image
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
SIZE = re.compile(r"(\d{1,6})x(\d{1,6})")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type


def error_response(status: int, message: str, type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type}}, status_code=status)


# ---- request bodies ------------------------------------------------------------------------------------


class _Body(BaseModel):
    # Strict: "n": "2" or "seed": 1.5 is an error, not a guess. Unknown fields (OpenAI's `quality`, `style`,
    # `user`, ...) are ignored so OpenAI clients work unchanged.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ImageGenerationBody(_Body):
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    size: str | None = None  # "WxH" (width first, as OpenAI) or "auto" = the model's preset
    seed: int | None = None  # extension: outputs get seed, seed + 1, ...; random when omitted
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None  # extension (FLUX): > 1 runs true CFG with negative_prompt
    response_format: str | None = "b64_json"
    output_format: str = "png"
    output_compression: int | None = None  # 0..100, jpeg/webp quality
    model: str | None = None  # accepted for OpenAI clients; the server has one model


class ImageEditBody(ImageGenerationBody):
    image: str  # base64 (or a data: URL) of the conditioning image


class VideoBody(_Body):
    prompt: str
    negative_prompt: str | None = None
    size: str | None = None
    seconds: str | int | float | None = None  # OpenAI's; frames = seconds x preset fps + 1
    num_frames: int | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    input_reference: str | None = None  # base64 image, for image-to-video models
    model: str | None = None


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text} is out of range")
    return v


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[_Body], limit: int = MAX_JSON_BYTES) -> _Body:
    if "multipart/form-data" in request.headers.get("content-type", ""):
        raise ApiError(400, "send the request as a JSON body (Content-Type: application/json)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over {limit} bytes")
    try:
        data = json.loads(bytes(body), parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, describe_errors(e.errors())) from None


def describe_errors(errors) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


# ---- validation ---------------------------------------------------------------------------------------


def _check_text(value: str | None, name: str) -> None:
    if value is not None and len(value) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"{name} has {len(value)} characters; at most {MAX_PROMPT_CHARS} are accepted")


def _scale(value: float | None, default, name: str) -> float | None:
    value = default if value is None else value
    if value is not None and not 0 <= value <= MAX_GUIDANCE:
        raise ApiError(400, f"{name} must be a finite number in [0, {MAX_GUIDANCE:g}], got {value}")
    return value


def _steps(value: int | None, default: int) -> int:
    value = default if value is None else value
    if not 1 <= value <= MAX_STEPS:
        raise ApiError(400, f"num_inference_steps must be in 1..{MAX_STEPS}, got {value}")
    return value


def _seed(value: int | None, n: int) -> int:
    if value is None:
        return secrets.randbelow(2**31)  # fits every JSON client's integers
    if not 0 <= value <= MAX_SEED - (n - 1):
        raise ApiError(400, f"seed must be in [0, {MAX_SEED - (n - 1)}] for n={n}, got {value}")
    return value


def parse_size(size: str | None, pipeline, max_pixels: int) -> tuple[int, int]:
    """ "WxH" -> (height, width), checked against the model's size multiple and `max_pixels`."""
    preset = pipeline.preset
    if size is None or size == "auto":
        return preset["height"], preset["width"]
    m = SIZE.fullmatch(size)
    if not m:
        raise ApiError(400, f"size must be 'WxH' (e.g. '1024x768') or 'auto', got {size!r}")
    width, height = int(m[1]), int(m[2])
    if width < 1 or height < 1:
        raise ApiError(400, f"size {size!r}: width and height must be positive")
    multiple = size_multiple(pipeline)
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            lo, hi = v // multiple * multiple, (v // multiple + 1) * multiple
            raise ApiError(
                400,
                f"size {size!r}: {name} {v} is not divisible by {multiple}, as the model needs; "
                f"use {lo or hi} or {hi}",
            )
    if width * height > max_pixels:
        raise ApiError(400, f"size {size!r} has {width * height} pixels; this server allows {max_pixels}")
    return height, width


def takes(pipeline, name: str) -> bool:
    """Whether the pipeline's `generate` accepts keyword `name` (extension fields are model-specific)."""
    try:
        params = inspect.signature(pipeline.generate).parameters
    except (AttributeError, TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _extension(params: dict, pipeline, name: str, value: float | None) -> None:
    if value is None:
        return
    if not takes(pipeline, name):
        raise ApiError(400, f"this model takes no {name}; leave it out")
    params[name] = _scale(value, None, name)


def size_multiple(pipeline) -> int:
    return getattr(pipeline, "size_multiple", None) or 2 * pipeline.vae_scale_factor


def decode_image(data: str, name: str):
    from PIL import Image

    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError) as e:
        raise ApiError(400, f"{name} is not a base64-encoded image: {e}") from None
    return image.convert("RGB")


def image_params(body: ImageGenerationBody, pipeline, *, max_batch: int, max_pixels: int) -> dict:
    """Validated `generate` keywords shared by a batch, plus n and seed."""
    _check_text(body.prompt, "prompt")
    _check_text(body.negative_prompt, "negative_prompt")
    if not 1 <= body.n <= max_batch:
        raise ApiError(400, f"n must be in 1..{max_batch} (the server's --max-batch), got {body.n}")
    if body.response_format == "url":
        raise ApiError(
            400, "response_format 'url' is not supported (this server hosts no files); use 'b64_json'"
        )
    if body.response_format not in (None, "b64_json"):
        raise ApiError(400, f"response_format must be 'b64_json', got {body.response_format!r}")
    if body.output_format not in FORMATS:
        raise ApiError(400, f"output_format must be one of {sorted(FORMATS)}, got {body.output_format!r}")
    if body.output_compression is not None and not 0 <= body.output_compression <= 100:
        raise ApiError(400, f"output_compression must be in 0..100, got {body.output_compression}")
    preset = pipeline.preset
    height, width = parse_size(body.size, pipeline, max_pixels)
    params = {
        "height": height,
        "width": width,
        "num_inference_steps": _steps(body.num_inference_steps, preset["num_inference_steps"]),
        "guidance_scale": _scale(body.guidance_scale, preset.get("guidance_scale"), "guidance_scale"),
        "negative_prompt": body.negative_prompt,
    }
    _extension(params, pipeline, "true_cfg_scale", body.true_cfg_scale)
    return {"params": params, "n": body.n, "seed": _seed(body.seed, body.n)}


def video_params(body: VideoBody, pipeline, *, max_pixels: int) -> tuple[dict, dict]:
    """(`generate` keywords, the job's public fields) for a video request."""
    _check_text(body.prompt, "prompt")
    _check_text(body.negative_prompt, "negative_prompt")
    preset = pipeline.preset
    height, width = parse_size(body.size, pipeline, max_pixels)
    frames = body.num_frames
    if frames is None and body.seconds is not None:
        try:
            seconds = float(body.seconds)
        except ValueError:
            raise ApiError(400, f"seconds must be a number, got {body.seconds!r}") from None
        if "fps" not in preset or not 0 < seconds < math.inf:
            raise ApiError(400, f"cannot turn seconds={body.seconds!r} into frames; give num_frames")
        frames = round(seconds * preset["fps"]) + 1
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise ApiError(400, f"num_frames must be in 1..{MAX_FRAMES}, got {frames}")
    params = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "height": height,
        "width": width,
        "num_frames": frames,
        "num_inference_steps": _steps(body.num_inference_steps, preset["num_inference_steps"]),
        "guidance_scale": _scale(body.guidance_scale, preset.get("guidance_scale"), "guidance_scale"),
        "seed": _seed(body.seed, 1),
    }
    _extension(params, pipeline, "guidance_scale_2", body.guidance_scale_2)
    if body.input_reference is not None:
        if not getattr(pipeline, "accepts_image", False):
            raise ApiError(400, "this model takes no input_reference image; send a text prompt only")
        params["image"] = decode_image(body.input_reference, "input_reference")
    meta = {"size": f"{width}x{height}", "seconds": None if body.seconds is None else str(body.seconds)}
    meta["seed"] = params["seed"]
    return params, meta


def encode_images(images, output_format: str, quality: int | None) -> list[str]:
    from PIL import Image

    fmt = FORMATS[output_format][0]
    kw = {} if fmt == "PNG" else {"quality": 95 if quality is None else quality}
    out = []
    for im in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format=fmt, **kw)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


# ---- the app --------------------------------------------------------------------------------------------


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
    """The FastAPI app serving `gen` (a `DiffGenerator`). Its lifespan starts the device worker, compiles
    the `warmup` sizes (height, width) at every batch bucket, and on shutdown drains the queue.

    `app.state.begin_shutdown()` refuses new work and fails queued requests with 503 (`serve` calls it on
    SIGTERM, before uvicorn waits for in-flight requests).
    """
    pipeline = gen.pipeline
    name = model_name or Path(str(gen.model_path)).name
    batcher = Batcher(
        gen.generate, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, max_queue=max_queue
    )

    def run_video(params: dict, path: Path) -> None:
        gen.generate(params.pop("prompt"), output_type="np", output_path=path, **params)

    jobs = JobStore(run_video, batcher.submit_task) if pipeline.is_video else None
    created = int(time.time())

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
    app.state.batcher, app.state.jobs = batcher, jobs
    app.state.begin_shutdown = batcher.begin_shutdown

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.type)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(400, describe_errors(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, str(e.detail), kind)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("%s %s: unhandled error", request.method, request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        t0 = time.perf_counter()
        request.state.timing = {}
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

    @app.get("/health")
    async def health():
        ok = batcher.alive and not batcher.stopping
        body = {"status": "ok" if ok else "unavailable", "model": name, **batcher.stats()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models():
        card = {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "jdiff",
            "family": getattr(pipeline, "family", None),
            "task": "video" if pipeline.is_video else "image",
            "accepts_image": bool(getattr(pipeline, "accepts_image", False)),
            "dtype": getattr(gen, "dtype", None),
            "defaults": {k: v for k, v in pipeline.preset.items() if k not in ("family", "description")},
            "max_batch": max_batch,
            "max_pixels": max_pixels,
        }
        return {"object": "list", "data": [card]}

    async def run_images(request: Request, req: ImageRequest, body: ImageGenerationBody) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            future = batcher.submit(req)
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_error") from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), "server_unavailable") from None
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()  # unrun requests are dropped; a running batch finishes for the others
            raise ApiError(
                504, f"not done within {timeout_s:g} s (the server's --timeout)", "timeout"
            ) from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), "server_unavailable") from None
        except InputError as e:
            raise ApiError(400, str(e)) from None
        except Exception as e:
            log.error("generation failed: %r", e)
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error") from None
        t1 = time.perf_counter()
        data = await asyncio.to_thread(
            encode_images, result.images, body.output_format, body.output_compression
        )
        request.state.timing.update(queue=result.queue_s, generate=result.generate_s)
        timing = (
            f"queue;dur={result.queue_s * 1e3:.1f}, generate;dur={result.generate_s * 1e3:.1f}, "
            f"encode;dur={(time.perf_counter() - t1) * 1e3:.1f}, total;dur={(time.perf_counter() - t0) * 1e3:.1f}"
        )
        h, w = req.params["height"], req.params["width"]
        content = {
            "created": int(time.time()),
            "data": [{"b64_json": b, "seed": s} for b, s in zip(data, result.seeds, strict=True)],
            "output_format": body.output_format,
            "size": f"{w}x{h}",
        }
        return JSONResponse(
            content, headers={"Server-Timing": timing, "X-Batch-Outputs": str(result.batch_outputs)}
        )

    def no_images() -> None:
        if pipeline.is_video:
            raise ApiError(400, f"model {name} makes videos, not images; use POST /v1/videos")

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        body = await parse_body(request, ImageGenerationBody)
        no_images()
        p = image_params(body, pipeline, max_batch=max_batch, max_pixels=max_pixels)
        return await run_images(request, ImageRequest(body.prompt, p["n"], p["seed"], p["params"]), body)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        if not getattr(pipeline, "accepts_image", False) or pipeline.is_video:
            raise ApiError(
                400,
                f"model {name} does not support image edits (it takes no conditioning image); "
                "use POST /v1/images/generations",
            )
        body = await parse_body(request, ImageEditBody, MAX_IMAGE_JSON_BYTES)
        p = image_params(body, pipeline, max_batch=max_batch, max_pixels=max_pixels)
        p["params"]["image"] = decode_image(body.image, "image")
        req = ImageRequest(body.prompt, p["n"], p["seed"], p["params"], batchable=False)
        return await run_images(request, req, body)

    def job_store() -> JobStore:
        if jobs is None:
            raise ApiError(400, f"model {name} does not make videos; use POST /v1/images/generations")
        return jobs

    def job_or_404(video_id: str):
        job = job_store().get(video_id)
        if job is None:
            raise ApiError(404, f"no video {video_id!r} (unknown, or evicted)", "not_found_error")
        return job

    @app.post("/v1/videos")
    async def create_video(request: Request):
        store = job_store()
        body = await parse_body(request, VideoBody, MAX_IMAGE_JSON_BYTES)
        params, meta = video_params(body, pipeline, max_pixels=max_pixels)
        try:
            job = store.submit(params, model=name, **meta)
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_error") from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), "server_unavailable") from None
        return JSONResponse(job.to_json())

    @app.get("/v1/videos")
    async def list_videos():
        return {"object": "list", "data": [j.to_json() for j in job_store().list()]}

    @app.get("/v1/videos/{video_id}")
    async def get_video(video_id: str):
        return job_or_404(video_id).to_json()

    @app.get("/v1/videos/{video_id}/content")
    async def video_content(video_id: str):
        job = job_or_404(video_id)
        if job.status != COMPLETED:
            raise ApiError(
                409, f"video {video_id} is {job.status}; poll GET /v1/videos/{video_id} until completed"
            )
        return FileResponse(job.path, media_type="video/mp4", filename=f"{video_id}.mp4")

    return app


__all__ = ["ApiError", "create_app", "error_response", "parse_size"]
