"""`stream=true` on `POST /v1/images/generations`: Server-Sent Events in OpenAI's image streaming format.

With `--batching continuous` (the request running in slots, `continuous.py`) the response is
`text/event-stream`: up to `partial_images` (0..3) events

    event: image_generation.partial_image
    data: {"type": "image_generation.partial_image", "b64_json": ..., "partial_image_index": i, ...}

each a preview decoded from the slot's current prediction of the final image (flow models: x - sigma v), sent
as the request passes 1/(P+1), 2/(P+1), ... of its steps (at chunk boundaries: fewer when several fall in
one chunk), then one `image_generation.completed` event with the image (and its `seed`). A failure after the
stream started is an `error` event with the usual error body; a client that goes away, or a `--timeout` that
passes, stops the request at the next chunk boundary. Streaming takes n = 1 (OpenAI's events carry no image
index). Under request-level batching `stream` and `partial_images` are refused with a 400
(`validation.OPENAI_FIELDS`).
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from jdiff.errors import InputError
from jdiff.server.batcher import ImageRequest, QueueFull, ShuttingDown
from jdiff.server.context import ServerContext
from jdiff.server.encoding import encode_images
from jdiff.server.errors import ApiError, busy

MAX_PARTIAL_IMAGES = 3  # as OpenAI's API


async def stream(request: Request, ctx: ServerContext, req: ImageRequest, body) -> StreamingResponse:
    """Queues `req` with previews and answers with its event stream (see the module docstring)."""
    partial = body.partial_images or 0
    if not 0 <= partial <= MAX_PARTIAL_IMAGES:
        raise ApiError(
            400, f"partial_images must be in 0..{MAX_PARTIAL_IMAGES}, got {partial}", param="partial_images"
        )
    if req.n != 1:
        raise ApiError(400, f"stream=true makes one image per request; send n=1 (got {req.n})", param="n")
    loop = asyncio.get_running_loop()
    previews: asyncio.Queue = asyncio.Queue()
    req.partial_images = partial
    req.on_preview = lambda index, image: loop.call_soon_threadsafe(previews.put_nowait, (index, image))
    try:
        future = ctx.batcher.submit(req)
    except QueueFull as e:
        raise busy(e) from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "server_unavailable") from None
    except InputError as e:
        raise ApiError(400, str(e), param="partial_images") from None
    common = {
        "size": f"{req.params['width']}x{req.params['height']}",
        "quality": "auto",
        "background": "opaque",
        "output_format": body.output_format,
    }

    async def encode(image) -> str:
        (b64,) = await asyncio.to_thread(
            encode_images, image[None], body.output_format, body.output_compression
        )
        return b64

    def event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    async def events():
        waiting = asyncio.wrap_future(future)
        deadline = time.monotonic() + ctx.timeout_s
        try:
            while not (waiting.done() and previews.empty()):
                left = deadline - time.monotonic()
                if left <= 0:
                    yield _error(
                        504, f"not done within {ctx.timeout_s:g} s (the server's --timeout)", "timeout"
                    )
                    return
                getter = asyncio.ensure_future(previews.get())
                done, _ = await asyncio.wait(
                    {waiting, getter}, timeout=min(0.25, left), return_when="FIRST_COMPLETED"
                )
                if getter in done:
                    index, image = getter.result()
                    data = {"type": "image_generation.partial_image", "b64_json": await encode(image)}
                    data.update(partial_image_index=index, created_at=int(time.time()), **common)
                    yield event("image_generation.partial_image", data)
                else:
                    getter.cancel()
                if not done and await request.is_disconnected():
                    return
            try:
                result = waiting.result()
            except InputError as e:
                yield _error(400, str(e), "invalid_request_error")
                return
            except Exception as e:
                yield _error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
                return
            data = {"type": "image_generation.completed", "b64_json": await encode(result.images[0])}
            data.update(created_at=int(time.time()), **common, usage=_NO_USAGE, seed=result.seeds[0])
            yield event("image_generation.completed", data)
        finally:
            if not future.done():
                ctx.batcher.withdraw(future)  # its slot is freed at the next chunk boundary

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# OpenAI's completed event has token usage (GPT image models); diffusion models count no tokens.
_NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def _error(status: int, message: str, kind: str) -> str:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return f"event: error\ndata: {json.dumps(body)}\n\n"


__all__ = ["MAX_PARTIAL_IMAGES", "stream"]
