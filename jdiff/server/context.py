"""What every endpoint needs to know about the server it runs in: one object, on `app.state.context`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from jdiff.server.batcher import Batcher
from jdiff.server.jobs import JobStore


@dataclass(frozen=True)
class ServerContext:
    """The loaded model, its device worker and the server's limits (see `create_app` for each)."""

    gen: Any  # a `DiffGenerator` (or `distributed.Leader` over one)
    pipeline: Any  # gen.pipeline: preset, is_video, accepts_image, ...
    name: str  # the model's public id
    batcher: Batcher  # or a `continuous.ContinuousBatcher` (the same interface)
    jobs: JobStore | None  # video models only
    max_batch: int
    max_pixels: int
    max_frames: int
    timeout_s: float
    created: int  # unix time the app was made, for the model card


def context(request: Request) -> ServerContext:
    return request.app.state.context


__all__ = ["ServerContext", "context"]
