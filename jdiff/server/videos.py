"""The video endpoints, OpenAI's Videos API: an asynchronous job per request (`jobs.py`).

- `POST /v1/videos` queues a job and answers it at once (`status`: queued).
- `GET /v1/videos/{id}` polls it: queued -> in_progress -> completed | failed (with `error`).
- `GET /v1/videos/{id}/content` downloads the mp4 of a completed job (409 before).
- `GET /v1/videos` lists the jobs the server remembers.

On an image model each answers 400, naming the route to use instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from jdiff.server.batcher import QueueFull, ShuttingDown
from jdiff.server.context import ServerContext, context
from jdiff.server.encoding import mp4_response
from jdiff.server.errors import ApiError
from jdiff.server.jobs import COMPLETED, Job, JobStore
from jdiff.server.schemas import MAX_IMAGE_JSON_BYTES, VideoBody, parse_body
from jdiff.server.validation import video_params

router = APIRouter()


def _store(ctx: ServerContext) -> JobStore:
    if ctx.jobs is None:
        raise ApiError(400, f"model {ctx.name} does not make videos; use POST /v1/images/generations")
    return ctx.jobs


def _job(request: Request, video_id: str) -> Job:
    job = _store(context(request)).get(video_id)
    if job is None:
        raise ApiError(404, f"no video {video_id!r} (unknown, or evicted)", "not_found_error")
    return job


@router.post("/v1/videos")
async def create_video(request: Request):
    ctx = context(request)
    store = _store(ctx)
    body = await parse_body(request, VideoBody, MAX_IMAGE_JSON_BYTES)
    params, meta = video_params(body, ctx.pipeline, max_pixels=ctx.max_pixels)
    try:
        job = store.submit(params, model=ctx.name, **meta)
    except QueueFull as e:
        raise ApiError(429, str(e), "rate_limit_error") from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "server_unavailable") from None
    return JSONResponse(job.to_json())


@router.get("/v1/videos")
async def list_videos(request: Request):
    return {"object": "list", "data": [j.to_json() for j in _store(context(request)).list()]}


@router.get("/v1/videos/{video_id}")
async def get_video(request: Request, video_id: str):
    return _job(request, video_id).to_json()


@router.get("/v1/videos/{video_id}/content")
async def video_content(request: Request, video_id: str):
    job = _job(request, video_id)
    if job.status != COMPLETED:
        raise ApiError(
            409, f"video {video_id} is {job.status}; poll GET /v1/videos/{video_id} until completed"
        )
    return mp4_response(job.path, video_id)


__all__ = ["router"]
