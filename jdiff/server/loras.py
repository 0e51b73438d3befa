"""The LoRA endpoints: `GET /v1/loras`, `POST /v1/loras` `{"name", "path"}`, `DELETE /v1/loras/{name}`.

Loading and unloading run on the device worker, between batches, so no `generate` sees half an update.
Requests then name adapters in their `loras` field (`validation.lora_scales`).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from jdiff.errors import InputError
from jdiff.parallel.distributed import Leader
from jdiff.server.batcher import QueueFull, ShuttingDown
from jdiff.server.context import ServerContext, context
from jdiff.server.errors import ApiError, busy
from jdiff.server.schemas import LoraBody, parse_body

router = APIRouter()


def _adapters(ctx: ServerContext, change: bool = False):
    adapters = getattr(ctx.pipeline, "lora", None)
    if adapters is None:
        raise ApiError(400, f"model {ctx.name} takes no LoRA adapters")
    if change and isinstance(ctx.gen, Leader):  # the other processes would not follow
        raise ApiError(
            400, "a multi-host server loads LoRA adapters at start only: jdiff serve --lora NAME=PATH"
        )
    return adapters


def _listing(adapters) -> dict:
    return {"object": "list", "data": [{"object": "lora", **a} for a in adapters.info()]}


async def _on_worker(ctx: ServerContext, fn):
    try:
        future = ctx.batcher.submit_task(fn)
    except QueueFull as e:
        raise busy(e) from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "server_unavailable") from None
    try:
        return await asyncio.wrap_future(future)
    except InputError as e:
        raise ApiError(400, str(e)) from None


@router.get("/v1/loras")
async def list_loras(request: Request):
    return _listing(_adapters(context(request)))


@router.post("/v1/loras")
async def load_lora(request: Request):
    ctx = context(request)
    adapters = _adapters(ctx, change=True)
    body = await parse_body(request, LoraBody)
    if not body.name:
        raise ApiError(400, "name must be a non-empty string")
    if body.name in adapters.names:
        raise ApiError(
            409, f"a LoRA named {body.name!r} is already loaded; DELETE /v1/loras/{body.name} first"
        )
    name = await _on_worker(ctx, lambda: ctx.gen.load_lora(body.path, body.name))
    return next({"object": "lora", **a} for a in adapters.info() if a["name"] == name)


@router.delete("/v1/loras/{name}")
async def unload_lora(request: Request, name: str):
    ctx = context(request)
    adapters = _adapters(ctx, change=True)
    if name not in adapters.names:
        raise ApiError(404, f"no LoRA named {name!r} is loaded; loaded: {adapters.names}", "not_found_error")
    await _on_worker(ctx, lambda: ctx.gen.unload_lora(name))
    return {"object": "lora", "name": name, "deleted": True}


__all__ = ["router"]
