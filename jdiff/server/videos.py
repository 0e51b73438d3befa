"""The video endpoints, OpenAI's Videos API: an asynchronous job per request (`jobs.py`).

- `POST /v1/videos` queues a job and answers it at once (`status`: queued); a JSON body, or the multipart
  form the OpenAI client sends (`input_reference` as an uploaded file).
- `GET /v1/videos/{id}` polls it: queued -> in_progress -> completed | failed (with `error`).
- `GET /v1/videos/{id}/content` downloads the mp4 of a completed job (409 before; `variant` "video" only).
- `DELETE /v1/videos/{id}` cancels a queued job, discards a running one's output, deletes a finished one.
- `GET /v1/videos` lists the jobs the server remembers.

On an image model each answers 400, naming the route to use instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

from jdiff.server.batcher import QueueFull, ShuttingDown
from jdiff.server.context import ServerContext, context
from jdiff.server.errors import ApiError, busy
from jdiff.server.forms import is_form, parse_form
from jdiff.server.jobs import COMPLETED, Job, JobStore
from jdiff.server.schemas import MAX_IMAGE_JSON_BYTES, VideoBody, parse_body, validated
from jdiff.server.validation import decode_image_bytes, video_params

router = APIRouter()


def _store(ctx: ServerContext) -> JobStore:
    if ctx.jobs is None:
        raise ApiError(400, f"model {ctx.name} does not make videos; use POST /v1/images/generations")
    return ctx.jobs


def _missing(video_id: str) -> ApiError:
    return ApiError(404, f"no video {video_id!r} (unknown, deleted or evicted)", "not_found_error")


def _job(request: Request, video_id: str) -> Job:
    job = _store(context(request)).get(video_id)
    if job is None:
        raise _missing(video_id)
    return job


@router.post("/v1/videos")
async def create_video(request: Request):
    ctx = context(request)
    store = _store(ctx)
    upload = None
    if is_form(request):
        form = await parse_form(request)
        body = validated(VideoBody, form.typed())
        files = form.files.get("input_reference", [])
        if len(files) > 1:
            raise ApiError(400, "send one input_reference file", param="input_reference")
        upload = files[0] if files else None
        if upload is not None and not ctx.pipeline.accepts_image:
            raise ApiError(
                400,
                "this model takes no input_reference image; send a text prompt only",
                param="input_reference",
            )
    else:
        body = await parse_body(request, VideoBody, MAX_IMAGE_JSON_BYTES)
    # Decoding a base64 or uploaded image takes a while: off the event loop.
    params, meta = await asyncio.to_thread(
        video_params, body, ctx.pipeline, max_pixels=ctx.max_pixels, max_frames=ctx.max_frames
    )
    if upload is not None:
        params["image"] = await asyncio.to_thread(decode_image_bytes, upload, "input_reference")
    try:
        job = store.submit(params, model=ctx.name, **meta)
    except QueueFull as e:
        raise busy(e) from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "server_unavailable") from None
    return JSONResponse(job.to_json())


@router.get("/v1/videos")
async def list_videos(request: Request):
    return {"object": "list", "data": [j.to_json() for j in _store(context(request)).list()]}


@router.get("/v1/videos/{video_id}")
async def get_video(request: Request, video_id: str):
    return _job(request, video_id).to_json()


@router.delete("/v1/videos/{video_id}")
async def delete_video(request: Request, video_id: str):
    if _store(context(request)).delete(video_id) is None:
        raise _missing(video_id)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


@router.get("/v1/videos/{video_id}/content")
async def video_content(request: Request, video_id: str, variant: str = "video"):
    job = _job(request, video_id)
    if variant != "video":
        raise ApiError(
            400, f"variant {variant!r} is not available; this server keeps the video only", param="variant"
        )
    if job.status != COMPLETED:
        raise ApiError(
            409, f"video {video_id} is {job.status}; poll GET /v1/videos/{video_id} until completed"
        )
    # The job may be evicted (its file removed) at any moment: serve a hard link of our own, made now, so
    # the download either gets the whole file or a 404, never a half-sent 500.
    link = job.path.with_name(f".download-{uuid.uuid4().hex}.mp4")
    try:
        os.link(job.path, link)
    except FileNotFoundError:
        raise _missing(video_id) from None
    except OSError:  # a file system without hard links: serve the file itself
        if not job.path.is_file():
            raise _missing(video_id) from None
        return FileResponse(job.path, media_type="video/mp4", filename=f"{video_id}.mp4")
    return FileResponse(
        link,
        media_type="video/mp4",
        filename=f"{video_id}.mp4",
        background=BackgroundTask(link.unlink, missing_ok=True),
    )


__all__ = ["router"]
