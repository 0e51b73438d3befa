"""Request bodies: the JSON fields each endpoint takes, and the one strict parser they all go through.

Bodies are parsed here, not by FastAPI, so that JSON's NaN / Infinity / 1e999 are refused like any bad value
and an oversized body is cut off at its limit (413) instead of read whole. Value ranges are checked later,
against the model (`validation.py`).
"""

from __future__ import annotations

import json
import math
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from jdiff.server.errors import ApiError, describe_errors, error_param

MAX_JSON_BYTES = 1 << 20  # text-only requests
MAX_IMAGE_JSON_BYTES = 32 << 20  # requests carrying a base64 image


class Body(BaseModel):
    # Strict: "n": "2" or "seed": 1.5 is an error, not a guess. Unknown fields are refused (a typo such as
    # `num_steps` must not silently run the default); OpenAI's own fields are declared below and either
    # honoured or refused with a reason (`validation.openai_fields`).
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ImageGenerationBody(Body):
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    size: str | None = None  # "WxH" (width first, as OpenAI) or "auto" = the model's preset
    seed: int | None = None  # extension: outputs get seed, seed + 1, ...; random when omitted
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None  # extension (FLUX): > 1 runs true CFG with negative_prompt
    loras: dict[str, float] | None = None  # extension: loaded LoRA adapter name -> scale
    step_cache: str | None = None  # extension: "first_block" | "teacache" where the model has it
    step_cache_threshold: float | None = None  # extension: with step_cache; default: the model's
    response_format: str | None = "b64_json"
    output_format: str = "png"
    output_compression: int | None = None  # 0..100, jpeg/webp quality
    model: str | None = None  # accepted for OpenAI clients; the server has one model
    user: str | None = None  # OpenAI's end-user id: accepted and ignored
    # OpenAI's fields this server honours only at their default (`validation.openai_fields`):
    stream: bool | None = None  # Server-Sent Events with --batching continuous (`streaming.py`), else False
    partial_images: int | None = None  # 0..3 previews while streaming, else 0
    background: str | None = None  # "auto" / "opaque": the models draw no alpha channel
    quality: str | None = None  # "auto": use num_inference_steps for quality vs. speed
    moderation: str | None = None  # "low": this server filters nothing
    style: str | None = None  # DALL-E 3's; refused


class ImageEditBody(ImageGenerationBody):
    image: (
        str | list[str]
    )  # base64 (or data: URLs) of the input image(s); multipart forms upload files instead
    mask: str | None = None  # refused: no inpainting
    input_fidelity: str | None = None  # refused: the model decides how closely to follow the image


class VideoBody(Body):
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
    loras: dict[str, float] | None = None
    step_cache: str | None = None
    step_cache_threshold: float | None = None
    model: str | None = None
    user: str | None = None


class LoraBody(Body):
    name: str
    path: str


B = TypeVar("B", bound=Body)


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text} is out of range")
    return v


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[B], limit: int = MAX_JSON_BYTES) -> B:
    """Reads `request`'s JSON body (at most `limit` bytes) into `model`.

    Raises:
        ApiError: 400 for a form upload, bad JSON, a non-object or a field of the wrong type; 413 past
            `limit`.
    """
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
    return validated(model, data)


def validated(model: type[B], data: dict) -> B:
    """`data` (parsed JSON, or a form's typed fields) as `model`; 400 naming every field problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, describe_errors(e.errors()), param=error_param(e.errors())) from None


__all__ = [
    "MAX_IMAGE_JSON_BYTES",
    "MAX_JSON_BYTES",
    "Body",
    "ImageEditBody",
    "ImageGenerationBody",
    "LoraBody",
    "VideoBody",
    "parse_body",
    "validated",
]
