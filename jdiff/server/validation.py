"""Request bodies -> checked `generate` keywords: ranges, sizes the model can make, images that decode.

Every problem is an `ApiError(400)` naming the field, what was got and what is accepted, raised before the
request reaches the device worker, so bad input never costs device time or fails a batch.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import secrets

from jdiff.server.encoding import FORMATS
from jdiff.server.errors import ApiError
from jdiff.server.schemas import ImageGenerationBody, VideoBody

MAX_STEPS = 200
MAX_PROMPT_CHARS = 10_000
MAX_GUIDANCE = 100.0
MAX_FRAMES = 1025
MAX_SEED = 2**63 - 1
# Conditioning images are resized to the output size, so they may be larger than `max_pixels`; this bounds
# the memory one decoded upload takes (a compressed image of a few hundred KB can decode to gigabytes).
MAX_INPUT_PIXELS = 8192 * 8192
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SIZE = re.compile(r"(\d{1,6})x(\d{1,6})")


def _check_text(value: str | None, name: str) -> None:
    if value is not None and len(value) > MAX_PROMPT_CHARS:
        raise ApiError(
            400, f"{name} has {len(value)} characters; at most {MAX_PROMPT_CHARS} are accepted", param=name
        )


def _scale(value: float | None, default, name: str) -> float | None:
    value = default if value is None else value
    if value is not None and not 0 <= value <= MAX_GUIDANCE:
        raise ApiError(
            400, f"{name} must be a finite number in [0, {MAX_GUIDANCE:g}], got {value}", param=name
        )
    return value


def _steps(value: int | None, default: int) -> int:
    value = default if value is None else value
    if not 1 <= value <= MAX_STEPS:
        raise ApiError(
            400, f"num_inference_steps must be in 1..{MAX_STEPS}, got {value}", param="num_inference_steps"
        )
    return value


def _seed(value: int | None, n: int) -> int:
    if value is None:
        return secrets.randbelow(2**31)  # fits every JSON client's integers
    if not 0 <= value <= MAX_SEED - (n - 1):
        raise ApiError(400, f"seed must be in [0, {MAX_SEED - (n - 1)}] for n={n}, got {value}", param="seed")
    return value


def size_multiple(pipeline) -> int:
    """What the model's height and width must be divisible by (the pipeline declares it)."""
    return pipeline.size_multiple


def default_max_pixels(pipeline, platform: str | None = None) -> int:
    """The `--max-pixels` a server gets when none is given, from the model and the device.

    On a CPU, four times the model's default size (twice each side): the OpenAI client's usual 1024x1024
    against the 64x64 embedded model would otherwise compute for many minutes. On accelerators 2048x2048, or
    four times the default size if that is larger.
    """
    if platform is None:
        import jax

        platform = jax.default_backend()
    area = 4 * pipeline.preset["height"] * pipeline.preset["width"]
    return area if platform == "cpu" else max(2048 * 2048, area)


def parse_size(size: str | None, pipeline, max_pixels: int) -> tuple[int, int]:
    """ "WxH" -> (height, width), checked against the model's size multiple and `max_pixels`.

    No size or "auto" is the preset's, held to `max_pixels` too: a server limited below the model's default
    size refuses it instead of running it.
    """
    preset = pipeline.preset
    if size is None or size == "auto":
        height, width = preset["height"], preset["width"]
        if height * width > max_pixels:
            raise ApiError(
                400,
                f"size {size or 'omitted'}: the model's default {width}x{height} has {width * height} pixels; "
                f"this server allows {max_pixels} (--max-pixels); ask for a smaller size",
                param="size",
            )
        return height, width
    m = SIZE.fullmatch(size)
    if not m:
        raise ApiError(400, f"size must be 'WxH' (e.g. '1024x768') or 'auto', got {size!r}", param="size")
    width, height = int(m[1]), int(m[2])
    if width < 1 or height < 1:
        raise ApiError(400, f"size {size!r}: width and height must be positive", param="size")
    multiple = size_multiple(pipeline)
    for name, v in (("width", width), ("height", height)):
        if v % multiple:
            lo, hi = v // multiple * multiple, (v // multiple + 1) * multiple
            raise ApiError(
                400,
                f"size {size!r}: {name} {v} is not divisible by {multiple}, as the model needs; "
                f"use {lo or hi} or {hi}",
                param="size",
            )
    if width * height > max_pixels:
        raise ApiError(
            400,
            f"size {size!r} has {width * height} pixels; this server allows {max_pixels} (--max-pixels)",
            param="size",
        )
    return height, width


def takes(pipeline, name: str) -> bool:
    """Whether the pipeline declares the optional request field `name` (`Pipeline.accepts`)."""
    return name in pipeline.accepts


def _extension(params: dict, pipeline, name: str, value: float | None) -> None:
    if value is None:
        return
    if not takes(pipeline, name):
        raise ApiError(400, f"this model takes no {name}; leave it out", param=name)
    params[name] = _scale(value, None, name)


def _step_cache(params: dict, pipeline, mode: str | None, threshold: float | None) -> None:
    """The request's `step_cache` / `step_cache_threshold` (`generate`'s), checked against the model."""
    if mode is None:
        if threshold is not None:
            raise ApiError(
                400,
                "step_cache_threshold needs a step_cache; add one or leave it out",
                param="step_cache_threshold",
            )
        return
    modes = sorted(pipeline.step_caches)
    if not modes:
        raise ApiError(400, "this model takes no step_cache; leave it out", param="step_cache")
    if mode not in modes:
        raise ApiError(
            400, f"step_cache must be one of {modes} for this model, got {mode!r}", param="step_cache"
        )
    params["step_cache"] = mode
    if threshold is not None:
        if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold >= 0):
            raise ApiError(
                400,
                f"step_cache_threshold must be a finite number >= 0, got {threshold!r}",
                param="step_cache_threshold",
            )
        params["step_cache_threshold"] = float(threshold)


def _field(name: str) -> str:
    """The form / JSON field an image name is from: `image[1]` -> `image`."""
    return name.partition("[")[0]


def decode_image(data: str, name: str):
    """A base64 string (or a `data:` URL) -> an RGB PIL image of at most `MAX_INPUT_PIXELS`."""

    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"{name} is not valid base64: {e}", param=_field(name)) from None
    return decode_image_bytes(raw, name)


def decode_image_bytes(raw: bytes, name: str):
    """An encoded image file (an upload) -> an RGB PIL image of at most `MAX_INPUT_PIXELS`."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise ApiError(
            400, f"{name} is an empty file; send a {', '.join(INPUT_FORMATS)} image", param=_field(name)
        )
    try:
        # Only common raster formats: PIL would otherwise hand e.g. EPS to Ghostscript, if installed.
        image = Image.open(io.BytesIO(raw), formats=INPUT_FORMATS)
        # The header gives the size: refuse a huge image before decoding it, not after.
        shape = f"{image.width}x{image.height}" if image.width * image.height > MAX_INPUT_PIXELS else None
        if shape is None:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ApiError(400, f"{name} is not a {', '.join(INPUT_FORMATS)} image", param=_field(name)) from None
    except Image.DecompressionBombError:  # PIL refuses at open past twice its own limit
        shape = "over PIL's decompression-bomb limit"
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ApiError(400, f"{name} is not a readable image: {e}", param=_field(name)) from None
    raise ApiError(
        400,
        f"{name} is {shape}; at most {MAX_INPUT_PIXELS} pixels (8192x8192) are accepted; send it smaller",
        param=_field(name),
    )


def lora_scales(value: dict[str, float] | None, pipeline) -> dict[str, float] | None:
    """The request's `loras`, checked against the adapters loaded now (unknown names are a 400)."""
    if not value:
        return None
    adapters = getattr(pipeline, "lora", None)
    if adapters is None:
        raise ApiError(400, "this model takes no LoRA adapters; leave loras out", param="loras")
    unknown = sorted(set(value) - set(adapters.names))
    if unknown:
        raise ApiError(
            400,
            f"unknown LoRA adapter(s) {unknown}; loaded: {adapters.names} (GET /v1/loras)",
            param="loras",
        )
    for name, scale in value.items():
        if not -MAX_GUIDANCE <= scale <= MAX_GUIDANCE:
            raise ApiError(
                400,
                f"the scale of LoRA {name!r} must be in [-{MAX_GUIDANCE:g}, {MAX_GUIDANCE:g}]",
                param="loras",
            )
    return dict(value)


# OpenAI image fields -> the values this server honours (what it does anyway), and what to do instead.
OPENAI_FIELDS = {
    "stream": (
        (False,),
        "streaming (Server-Sent Events) needs `jdiff serve --batching continuous`; leave it out",
    ),
    "partial_images": ((0,), "partial images need streaming (`--batching continuous`); leave it out"),
    "background": (("auto", "opaque"), "the model draws opaque images only; use 'opaque' or leave it out"),
    "quality": (("auto",), "set num_inference_steps to trade quality for speed; leave quality out"),
    "moderation": (("low",), "this server filters no content; send 'low' or leave it out"),
    "style": ((), "style is DALL-E 3's; describe the style in the prompt"),
    "mask": ((), "this server does not inpaint with a mask; describe the change in the prompt"),
    "input_fidelity": ((), "the model decides how closely to follow the input; leave it out"),
}


STREAMING = ("stream", "partial_images")


def openai_fields(body, streaming: bool = False) -> None:
    """Refuses OpenAI fields the server cannot honour (400 naming the field), instead of dropping them;
    `streaming`: the server streams (`streaming.py`), so stream and partial_images are checked there."""
    for name, (honoured, hint) in OPENAI_FIELDS.items():
        if streaming and name in STREAMING:
            continue
        value = getattr(body, name, None)
        if value is not None and value not in honoured:
            raise ApiError(400, f"{name}={value!r} is not supported: {hint}", param=name)


def image_params(
    body: ImageGenerationBody, pipeline, *, max_batch: int, max_pixels: int, streaming: bool = False
) -> dict:
    """Validated `generate` keywords shared by a batch, plus n and seed (`streaming`: see `openai_fields`)."""
    openai_fields(body, streaming)
    _check_text(body.prompt, "prompt")
    _check_text(body.negative_prompt, "negative_prompt")
    if not 1 <= body.n <= max_batch:
        raise ApiError(
            400, f"n must be in 1..{max_batch} (the server's --max-batch), got {body.n}", param="n"
        )
    if body.response_format == "url":
        raise ApiError(
            400,
            "response_format 'url' is not supported (this server hosts no files); use 'b64_json'",
            param="response_format",
        )
    if body.response_format not in (None, "b64_json"):
        raise ApiError(
            400, f"response_format must be 'b64_json', got {body.response_format!r}", param="response_format"
        )
    if body.output_format not in FORMATS:
        raise ApiError(
            400,
            f"output_format must be one of {sorted(FORMATS)}, got {body.output_format!r}",
            param="output_format",
        )
    if body.output_compression is not None and not 0 <= body.output_compression <= 100:
        raise ApiError(
            400,
            f"output_compression must be in 0..100, got {body.output_compression}",
            param="output_compression",
        )
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
    _step_cache(params, pipeline, body.step_cache, body.step_cache_threshold)
    loras = lora_scales(body.loras, pipeline)
    return {"params": params, "n": body.n, "seed": _seed(body.seed, body.n), "loras": loras}


def _frames_of_seconds(value: str | int | float, preset: dict) -> int:
    """OpenAI's `seconds` -> frames at the preset's fps, + 1 (the first frame is at time 0)."""
    try:
        seconds = float(value)
    except ValueError:
        raise ApiError(400, f"seconds must be a number, got {value!r}", param="seconds") from None
    except OverflowError:  # an integer past float's range
        seconds = math.inf
    if "fps" not in preset or not 0 < seconds < math.inf:
        raise ApiError(400, f"cannot turn seconds={value!r} into frames; give num_frames", param="seconds")
    frames = seconds * preset["fps"]
    if frames > MAX_FRAMES:  # also an overflow to inf, which round() cannot take
        raise ApiError(
            400, f"seconds={value!r} is over {MAX_FRAMES} frames at {preset['fps']} fps", param="seconds"
        )
    return round(frames) + 1


def video_params(
    body: VideoBody, pipeline, *, max_pixels: int, max_frames: int = MAX_FRAMES
) -> tuple[dict, dict]:
    """(`generate` keywords, the job's public fields) for a video request; at most `max_frames` frames,
    the model's default length (no `num_frames` or `seconds`) included."""
    _check_text(body.prompt, "prompt")
    _check_text(body.negative_prompt, "negative_prompt")
    preset = pipeline.preset
    height, width = parse_size(body.size, pipeline, max_pixels)
    frames = body.num_frames
    if frames is None and body.seconds is not None:
        frames = _frames_of_seconds(body.seconds, preset)
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise ApiError(400, f"num_frames must be in 1..{MAX_FRAMES}, got {frames}", param="num_frames")
    length = frames if frames is not None else preset.get("num_frames")
    if length is not None and length > max_frames:
        field = "num_frames" if body.num_frames is not None or body.seconds is None else "seconds"
        what = f"{length} frames" if frames is not None else f"the model's default {length} frames"
        raise ApiError(
            400, f"{what}: this server allows at most {max_frames} (--max-frames); ask for fewer", param=field
        )
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
    _step_cache(params, pipeline, body.step_cache, body.step_cache_threshold)
    if body.loras:
        params["loras"] = lora_scales(body.loras, pipeline)
    if body.input_reference is not None:
        if not pipeline.accepts_image:
            raise ApiError(
                400,
                "this model takes no input_reference image; send a text prompt only",
                param="input_reference",
            )
        params["image"] = decode_image(body.input_reference, "input_reference")
    meta = {"size": f"{width}x{height}", "seconds": None if body.seconds is None else str(body.seconds)}
    meta["seed"] = params["seed"]
    return params, meta


__all__ = [
    "INPUT_FORMATS",
    "MAX_FRAMES",
    "MAX_GUIDANCE",
    "MAX_INPUT_PIXELS",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_STEPS",
    "decode_image",
    "decode_image_bytes",
    "default_max_pixels",
    "image_params",
    "lora_scales",
    "openai_fields",
    "parse_size",
    "size_multiple",
    "takes",
    "video_params",
]
