"""`GET /`: the try-it page, one plain HTML + JS file (`static/index.html`, package data; no build step).

It asks `GET /v1/models` what the loaded model makes and its defaults, then sends the form (prompt, negative
prompt, size, steps, seed) to `POST /v1/images/generations` (shows the images and the `Server-Timing`
stages) or `POST /v1/videos` (polls the job, plays the mp4, shows the job's `timings`). With `--api-key` the
page asks for the key and keeps it in the browser's localStorage; the page itself is open.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@cache
def html() -> str:
    return resources.files("jdiff.server").joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def index():
    return HTMLResponse(html(), headers={"Cache-Control": "no-cache"})


__all__ = ["html", "router"]
