"""What every pipeline shares: the result type, request validation, post-processing and saving outputs."""

from __future__ import annotations

import contextvars
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jdiff.errors import InputError
from jdiff.io.outputs import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    check_output_file,
    check_suffix,
    check_video_writer,
    write_atomic,
)
from jdiff.sampling.noise import noise_keys

log = logging.getLogger("jdiff")
_logged: set[str] = set()  # warnings logged so far in this process
_logged_lock = threading.Lock()


@dataclass
class GenerationResult:
    """What `DiffGenerator.generate` returns.

    Attributes:
        images: image models: a list of PIL images (output_type "pil") or floats [B, H, W, 3] in [0, 1] ("np").
        frames: video models: per video a list of PIL frames, or floats [B, F, H, W, 3].
        latents: the final latents in diffusers' pipeline layout.
        timings: seconds per stage and in total.
        paths: the files written (when `output_path` was given).
        seeds: the seed of each output, in output order: drawing output i again alone takes `seed=seeds[i]`.
        warnings: what the request asked for that was ignored or is likely to give poor results (also logged
            once per process through the `jdiff` logger).
    """

    images: Any = None
    frames: Any = None
    latents: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def warn(warnings: list[str], message: str) -> None:
    """Adds `message` to a request's warnings and logs it (logger `jdiff`) the first time this process sees it.

    For what a request asked that is ignored, or likely to come out badly; the request still runs.
    """
    if message not in warnings:
        warnings.append(message)
    with _logged_lock:
        first = message not in _logged
        _logged.add(message)
    if first:
        log.warning(message)


def check_trained_size(warnings: list[str], height: int, width: int, preset: dict) -> None:
    """Warns when (height, width) is far from the size the model was trained at, the preset's default.

    Far means: the side of the square with the same pixel count is more than 2x or less than half the
    preset's, or one side is more than twice the preset's longer side or less than half its shorter side
    (1024x1024 FLUX.1: 512x512 to 2048x2048 pass, 256x256 or 512x2304 warn). A preset with
    `trained_size_only` (the embedded model, trained at 64x64 alone) warns at any other size.
    """
    ph, pw = preset["height"], preset["width"]
    if (height, width) == (ph, pw):
        return
    if preset.get("trained_size_only"):
        warn(
            warnings,
            f"this model was trained at {pw}x{ph} only; at {width}x{height} its shapes come out resized, cut "
            f"off or repeated: use {pw}x{ph}",
        )
        return
    scale = math.sqrt(height * width / (ph * pw))
    if not 0.5 <= scale <= 2 or max(height, width) > 2 * max(ph, pw) or min(height, width) < min(ph, pw) / 2:
        warn(
            warnings,
            f"{width}x{height} is far from the {pw}x{ph} this model was trained at (more than 2x or less than "
            "half per side); expect distorted or repeated content",
        )


def warn_truncated(
    warnings: list[str], tokenizer, texts: list[str], max_length: int, encoder: str, hint: str = ""
) -> None:
    """Warns for each text longer than `max_length` tokens of `tokenizer` (the encoder reads no further)."""
    for text, n in zip(texts, tokenizer.lengths(texts), strict=True):
        if n > max_length:
            preview = text if len(text) <= 40 else text[:37] + "..."
            warn(
                warnings,
                f"{encoder} reads at most {max_length} tokens and the prompt {preview!r} has {n}: the last "
                f"{n - max_length} are ignored; shorten it{hint}",
            )


_preparer = None


def text_bucket(n: int, multiple: int) -> int:
    """`n` tokens rounded up to a multiple of `multiple`: the text length a family pads to, so that prompts of
    nearby lengths share one compiled program (Qwen-Image, HunyuanVideo-1.5)."""
    return -(-n // multiple) * multiple


def _background():
    """One worker thread for stage preparation (created on first use)."""
    global _preparer
    if _preparer is None:
        from concurrent.futures import ThreadPoolExecutor

        _preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jdiff-prepare")
    return _preparer


def run_while_preparing(
    stage, args: tuple, kwargs: dict, *, following, following_args, done: set, key, following_kwargs=None
):
    """`stage(*args, **kwargs)`; on the first call for `key`, the `following` stage is prepared meanwhile.

    Preparing a jitted stage (trace, lower, compile or load from the persistent cache) is host work that needs
    no device. The denoising loop occupies the device for seconds, and its dispatch holds the calling thread
    in the runtime (the launch queue fills), so the decoder is prepared by a worker thread: `stage` is first
    compiled here (its output's abstract value, sharding included, is what the decoder is lowered for), the
    worker is started, `stage` is dispatched, and the worker is joined before returning, inside the caller's
    placement context. jax keeps the decoder's executable for the call that follows. Later calls for the
    same `key` (`done` records them) just run `stage`.

    Args:
        stage, args, kwargs: the jitted stage to run (e.g. the denoising loop) and its arguments.
        following: the jitted stage that consumes its output (the decoder); None: nothing to prepare.
        following_args: `spec -> args` for `following`, given the output's `jax.ShapeDtypeStruct` (its
            sharding too, when committed to one).
        following_kwargs: `following`'s static keyword arguments.
        done, key: the keys prepared so far, and this call's (shapes and static settings).
    """
    import concurrent.futures

    import jax

    if following is None or key in done:
        return stage(*args, **kwargs)
    info = stage.lower(*args, **kwargs).compile().out_info
    if isinstance(info, tuple | list):  # (latents, statistics): the following stage takes the latents
        info = info[0]
    # jit's output is committed to its sharding only when an input was; an uncommitted one (one device, host
    # inputs) is lowered for without a sharding, or the decoder would be compiled for another program.
    committed = any(getattr(x, "committed", False) for x in jax.tree.leaves((args, kwargs)))
    spec = jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=info.sharding if committed else None)
    # The worker traces in a copy of this thread's context: the ambient placement (a ContextVar) that makes
    # `constrain` pin the decoder's layouts must be the caller's.
    prepare = contextvars.copy_context().run
    job = _background().submit(
        prepare, lambda: following.lower(*following_args(spec), **(following_kwargs or {})).compile()
    )
    try:
        out = stage(*args, **kwargs)
    finally:
        concurrent.futures.wait([job])
    job.result()  # the worker's exception, if any
    done.add(key)
    return out


def check_outputs(output_type: str, output_path, suffixes: dict[str, str], what: str) -> None:
    """When saving, validates the output path for `output_type` (`what`: "images" or "frames"); the type
    itself was checked with the request (`request.parse`).

    Called while validating a request, before any model runs: the suffix, that files can be created in the
    directory (`jdiff.io.outputs.check_output_file`) and, for mp4, the writer, by the process that will write
    them (process 0).
    """
    if output_path is not None:
        if output_type == "latent":
            raise InputError(f"output_path needs decoded {what}; use output_type 'pil' or 'np'")
        check_output_path(output_path, suffixes)
        if _writes_outputs():
            check_output_file(output_path, suffixes)


def _writes_outputs() -> bool:
    """Whether this process writes output files: process 0 of a multi-host run, or the only one."""
    import jax

    return jax.process_index() == 0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[.., 3] floats in [0, 1] -> uint8, rounding like diffusers' `numpy_to_pil`."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(im) for im in to_uint8(images)]


def check_output_path(path: str | os.PathLike, kinds: dict[str, str] = IMAGE_SUFFIXES) -> Path:
    return check_suffix(path, kinds)


def output_paths(path: Path, n: int) -> list[Path]:
    """`out.png` for one output; `out-0.png`, `out-1.png`, ... for several."""
    return [path] if n == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]


def save_images(images: np.ndarray, path: str | os.PathLike) -> list[str]:
    """Saves float images [B, H, W, 3] to `path` (format from its suffix), each through a temp file + rename.

    Raises:
        OutputError: a file could not be written (one line naming it).
    """
    path = check_output_path(path)
    out = []
    for im, p in zip(to_pil(images), output_paths(path, len(images)), strict=True):
        fmt = IMAGE_SUFFIXES[p.suffix.lower()]
        out.append(write_atomic(p, lambda tmp, im=im, fmt=fmt: im.save(tmp, format=fmt)))
    return out


def save_video(videos: np.ndarray, path: str | os.PathLike, *, fps: int) -> list[str]:
    """Saves float videos [B, F, H, W, 3] as H.264 mp4 (imageio-ffmpeg's bundled ffmpeg), each through a
    temporary file and a rename.

    Raises:
        OutputError: no ffmpeg, or a file could not be written.
    """
    import imageio.v2 as imageio

    path = check_output_path(path, VIDEO_SUFFIXES)
    check_video_writer()  # checked before the work too; a direct call gets the same one-line error
    out = []
    for video, p in zip(videos, output_paths(path, len(videos)), strict=True):
        frames = list(to_uint8(video))
        # format="FFMPEG": without ffmpeg, imageio would otherwise pick another plugin for .mp4 and fail late.
        # macro_block_size=1: keep sizes that are not multiples of 16 exactly (Wan sizes are, tiny ones not).
        out.append(
            write_atomic(
                p,
                lambda tmp, frames=frames: imageio.mimwrite(
                    tmp, frames, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1, quality=8
                ),
            )
        )
    return out


def video_latents(latents, seeds, batch: int, c: int, f: int, h: int, w: int, model: str):
    """(init, noise_shape) for a video pipeline's denoising stage: the seeds' noise keys and (F, h, w, C), or
    the caller's latents (diffusers' [B, C, F, H, W]) channels-last on the host and None."""
    if latents is None:
        return noise_keys(seeds), (f, h, w, c)
    arr = np.asarray(latents, np.float32)
    if arr.shape != (batch, c, f, h, w):
        raise InputError(
            f"latents have shape {arr.shape}; for {batch} output(s) at this size {model} expects "
            f"{(batch, c, f, h, w)} (diffusers' [B, C, F, H, W] layout)"
        )
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 4, 1)), None
