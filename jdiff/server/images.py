"""The image endpoints: `POST /v1/images/generations` and `POST /v1/images/edits`, through the batcher.

Both answer `{"created": ..., "data": [{"b64_json": ..., "seed": ...}, ...], "output_format", "size"}`, with
a `Server-Timing` header (queue, generate, the pipeline's stages text_encoding / denoising / decoding, encode,
total; with continuous batching also slot_wait, each stage measured on the device for the request:
`jdiff.pipelines.slot_clock`) and `X-Batch-Outputs` (how many outputs the `generate` call that made them had,
padding aside).

A request whose client goes away, or whose `--timeout` passes, before its `generate` call starts is taken off
the queue at once; one already running finishes for its batch and its images are dropped, except with
continuous batching (`continuous.py`), where it leaves its slots at the next chunk boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from jdiff.errors import InputError
from jdiff.server import streaming
from jdiff.server.batcher import ImageRequest, QueueFull, ShuttingDown
from jdiff.server.context import ServerContext, context
from jdiff.server.encoding import encode_images
from jdiff.server.errors import ApiError, busy
from jdiff.server.forms import is_form, parse_form
from jdiff.server.schemas import (
    MAX_IMAGE_JSON_BYTES,
    ImageEditBody,
    ImageGenerationBody,
    parse_body,
    validated,
)
from jdiff.server.validation import decode_image, decode_image_bytes, image_params

log = logging.getLogger("jdiff.server")

router = APIRouter()


@router.post("/v1/images/generations")
async def generations(request: Request):
    ctx = context(request)
    body = await parse_body(request, ImageGenerationBody)
    if ctx.pipeline.is_video:
        raise ApiError(400, f"model {ctx.name} makes videos, not images; use POST /v1/videos")
    streams = getattr(ctx.batcher, "streams", False)  # continuous batching streams Server-Sent Events
    p = image_params(
        body, ctx.pipeline, max_batch=ctx.max_batch, max_pixels=ctx.max_pixels, streaming=streams
    )
    req = ImageRequest(body.prompt, p["n"], p["seed"], p["params"], loras=p["loras"])
    if streams and body.stream:
        return await streaming.stream(request, ctx, req, body)
    if streams and body.partial_images:
        raise ApiError(400, "partial_images needs stream=true", param="partial_images")
    return await _run(request, ctx, req, body)


@router.post("/v1/images/edits")
async def edits(request: Request):
    ctx = context(request)
    if not ctx.pipeline.accepts_image or ctx.pipeline.is_video:
        raise ApiError(
            400,
            f"model {ctx.name} does not support image edits (it takes no conditioning image); "
            "use POST /v1/images/generations",
        )
    # OpenAI's multipart form (`image` / `image[]` files), or the JSON body with base64 images.
    if is_form(request):
        form = await parse_form(request)
        if "mask" in form.files:
            form.fields["mask"] = "(file)"  # refused by name below, like the JSON field
        body = validated(ImageEditBody, {"image": "", **form.typed()})
        uploads = form.files.get("image", []) + form.files.get("image[]", [])
        decode, what = decode_image_bytes, "file"
    else:
        body = await parse_body(request, ImageEditBody, MAX_IMAGE_JSON_BYTES)
        uploads = [body.image] if isinstance(body.image, str) else list(body.image)
        decode, what = decode_image, "base64 string"
    if not uploads:
        raise ApiError(
            400, "image is required: upload the image to edit as the form file `image` (several as `image[]`)"
        )
    most = getattr(ctx.pipeline, "max_images", 1)
    if len(uploads) > most:
        raise ApiError(
            400,
            f"{len(uploads)} images sent; model {ctx.name} takes at most {most} (send at most {most} {what}s)",
        )
    p = image_params(body, ctx.pipeline, max_batch=ctx.max_batch, max_pixels=ctx.max_pixels)
    names = ["image"] if len(uploads) == 1 else [f"image[{i}]" for i in range(len(uploads))]
    # Decoding a large upload takes a while: off the event loop, so other requests are not held up.
    images = await asyncio.to_thread(lambda: [decode(raw, n) for raw, n in zip(uploads, names, strict=True)])
    p["params"]["image"] = images[0] if len(images) == 1 else images
    if body.size in (None, "auto") and getattr(ctx.pipeline, "size_from_image", False):
        # The model sizes its output from the input image (Qwen-Image-Edit, as diffusers): no preset size.
        p["params"]["height"] = p["params"]["width"] = None
    # The images are this request's own: no other request shares its generate call.
    req = ImageRequest(body.prompt, p["n"], p["seed"], p["params"], batchable=False, loras=p["loras"])
    return await _run(request, ctx, req, body)


async def _run(
    request: Request, ctx: ServerContext, req: ImageRequest, body: ImageGenerationBody
) -> JSONResponse:
    """Queues `req`, waits up to the server's timeout, and encodes the images it got."""
    t0 = time.perf_counter()
    try:
        future = ctx.batcher.submit(req)
    except QueueFull as e:
        raise busy(e) from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "server_unavailable") from None
    try:
        result = await _wait(request, future, ctx.timeout_s)
    except TimeoutError:
        # Unrun, it leaves the queue at once; running, its batch finishes for the others.
        ctx.batcher.withdraw(future)
        raise ApiError(
            504, f"not done within {ctx.timeout_s:g} s (the server's --timeout)", "timeout"
        ) from None
    except asyncio.CancelledError:  # the server's shutdown grace ran out: answer, then let it close
        ctx.batcher.withdraw(future)
        raise ApiError(
            503,
            "the server shut down before this request finished; retry on another replica",
            "server_unavailable",
        ) from None
    except _Gone:
        ctx.batcher.withdraw(future)
        log.info(
            "client went away; its request %s", "was dropped" if future.cancelled() else "finishes unread"
        )
        raise ApiError(499, "client closed the request", "client_closed") from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "server_unavailable") from None
    except InputError as e:
        raise ApiError(400, str(e)) from None
    except Exception as e:
        log.error("generation failed: %r", e)
        raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error") from None
    t1 = time.perf_counter()
    data = await asyncio.to_thread(encode_images, result.images, body.output_format, body.output_compression)
    request.state.timing.update(queue=result.queue_s, generate=result.generate_s)
    request.app.state.metrics.queue_wait.observe(result.queue_s)
    stages = "".join(
        f"{k};dur={v * 1e3:.1f}, "
        for k, v in result.timings.items()
        if k in ("text_encoding", "slot_wait", "denoising", "decoding")
    )
    timing = (
        f"queue;dur={result.queue_s * 1e3:.1f}, generate;dur={result.generate_s * 1e3:.1f}, {stages}"
        f"encode;dur={(time.perf_counter() - t1) * 1e3:.1f}, total;dur={(time.perf_counter() - t0) * 1e3:.1f}"
    )
    h, w = result.images.shape[1:3] if len(result.images) else (req.params["height"], req.params["width"])
    content = {
        "created": int(time.time()),
        "data": [{"b64_json": b, "seed": s} for b, s in zip(data, result.seeds, strict=True)],
        "output_format": body.output_format,
        "size": f"{w}x{h}",
    }
    if result.warnings:  # what the request asked that the model ignored or may draw badly
        content["warnings"] = result.warnings
    return JSONResponse(
        content, headers={"Server-Timing": timing, "X-Batch-Outputs": str(result.batch_outputs)}
    )


class _Gone(Exception):
    """The client closed its connection."""


async def _wait(request: Request, future, timeout_s: float):
    """`future`'s result, checking every quarter second whether the client is still there.

    Raises:
        TimeoutError: past `timeout_s`.
        _Gone: the client disconnected.
    """
    waiting = asyncio.wrap_future(future)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        done, _ = await asyncio.wait({waiting}, timeout=min(0.25, left))
        if done:
            return waiting.result()
        if await request.is_disconnected():
            raise _Gone


__all__ = ["router"]
