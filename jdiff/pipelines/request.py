"""A generation request, parsed once for every family: the documented `generate` fields, defaults from the preset,
the checks that need no model, and a clear refusal of fields the family does not take.

`Pipeline.generate(prompt, **fields)` builds a `Request` with `parse`; the family's hooks only ever see a
`Request`, never raw keyword arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jdiff.errors import InputError
from jdiff.io.images import read_images
from jdiff.sampling import step_cache

OUTPUT_TYPES = ("pil", "np", "latent")

# Fields every family takes; the others are declared per family (`Pipeline.accepts`).
COMMON = frozenset(
    {
        "height",
        "width",
        "num_inference_steps",
        "seed",
        "latents",
        "num_outputs_per_prompt",
        "output_type",
        "output_path",
        "progress",
        "loras",
    }
)
# Fields a family may declare, with what they are for (the refusal names it).
OPTIONAL = {
    "negative_prompt": "a negative prompt",
    "num_frames": "a frame count (video models)",
    "guidance_scale": "a guidance scale",
    "guidance_scale_2": "a second guidance scale (two-expert models)",
    "true_cfg_scale": "a true classifier-free guidance scale",
    "max_sequence_length": "a text length",
    "image": "an input image (image-to-video, edit and reference-image models)",
    "fps": "a frame rate (video models)",
    "guidance_rescale": "a guidance rescale (the CFG rescale of Stable Diffusion pipelines)",
    "original_size": "an original-size conditioning (SDXL micro-conditioning)",
    "target_size": "a target-size conditioning (SDXL micro-conditioning)",
    "crops_coords_top_left": "a crop conditioning (SDXL micro-conditioning)",
    "step_cache": "a step cache, for transformer (DiT) models",
    "step_cache_threshold": "a step-cache threshold, for transformer (DiT) models",
}
FIELDS = COMMON | frozenset(OPTIONAL)


@dataclass(frozen=True)
class Request:
    """One `generate` call, validated; sizes, steps and guidance resolved against the family's preset.

    Attributes:
        prompts: one per prompt (a single string becomes one).
        negative_prompts: one per prompt, or None when none was given.
        height, width, num_frames: the output size (num_frames 1 for image models).
        steps: denoising steps.
        guidance_scale, guidance_scale_2, true_cfg_scale: as given or from the preset (None: not used).
        max_sequence_length: the text encoder's token budget.
        seeds: one per output (`seeds_of`).
        latents: the caller's initial noise (diffusers' layout), or None to draw it from the seeds.
        images: the input images as RGB PIL images (`jdiff.io.images.read_images`), or None.
        num_outputs_per_prompt: outputs per prompt.
        output_type: "pil", "np" or "latent".
        output_path: where to save, or None.
        fps: frames per second of saved videos.
        guidance_rescale: the CFG rescale factor (diffusers' `guidance_rescale`), or None: not given.
        original_size, target_size, crops_coords_top_left: SDXL's (height, width) / (top, left)
            micro-conditioning, or None: not given (the pipeline's defaults).
        progress: show a progress bar.
        loras: per output, the LoRA adapters it uses (name -> scale), or None: none given.
        step_cache: "first_block", "teacache" (`jdiff.sampling.step_cache`) or None: every step runs in full.
        step_cache_threshold: as given (a finite number >= 0), or None: the family's default for the mode.
        given: the names of the fields the caller set (not None).
        warnings: what the request asks that is ignored or likely to come out badly (`base.warn` adds to
            it; it becomes `GenerationResult.warnings`).
    """

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] | None
    height: int
    width: int
    num_frames: int
    steps: int
    guidance_scale: float | None
    guidance_scale_2: float | None
    true_cfg_scale: float | None
    max_sequence_length: int | None
    seeds: tuple[int, ...]
    latents: np.ndarray | None
    images: tuple | None
    num_outputs_per_prompt: int
    output_type: str
    output_path: Path | None
    fps: int | None
    progress: bool
    guidance_rescale: float | None = None
    original_size: tuple[int, int] | None = None
    target_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] | None = None
    loras: tuple[dict[str, float], ...] | None = None
    step_cache: str | None = None
    step_cache_threshold: float | None = None
    given: frozenset[str] = field(default_factory=frozenset)
    warnings: list[str] = field(default_factory=list)

    @property
    def batch(self) -> int:
        """Outputs in this request: prompts x outputs per prompt."""
        return len(self.prompts) * self.num_outputs_per_prompt

    def texts(self, negatives: bool) -> list[str]:
        """Every text the encoder sees, each repeated per output: [negatives; prompts] with `negatives`."""
        order = (list(self.negative_prompts or ()) if negatives else []) + list(self.prompts)
        return [t for t in order for _ in range(self.num_outputs_per_prompt)]


def parse(
    prompt,
    fields: dict[str, Any],
    *,
    accepts: frozenset[str],
    preset: dict,
    family: str,
    reasons: dict[str, str] | None = None,
    max_images: int = 1,
) -> Request:
    """Checks and resolves `generate`'s keyword arguments into a `Request`.

    Args:
        prompt: a string or a list of strings.
        fields: the keyword arguments (None means "not given").
        accepts: the optional fields this family takes (`OPTIONAL` keys).
        preset: the family's defaults (height, width, num_inference_steps, guidance_scale, ...).
        family: the family's name, for messages.
        reasons: field -> the message refusing it, where the family can say more than "takes no X".
        max_images: how many images `image=` may hold, for a family that accepts it.

    Raises:
        InputError: an unknown field, a field the family does not take, or a bad value.
    """
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise InputError(f"generate() got unknown argument(s) {unknown}; known: {sorted(FIELDS)}")
    if "num_frames" not in accepts and fields.get("num_frames") == 1:
        fields = {**fields, "num_frames": None}  # one frame is what an image model makes anyway
    given = frozenset(k for k, v in fields.items() if v is not None and k != "progress")
    refused = sorted(k for k in given - COMMON if k not in accepts)
    for name in refused:
        if reasons and name in reasons:
            raise InputError(reasons[name])
    if refused:
        what = "; ".join(f"{k} ({OPTIONAL[k]})" for k in refused)
        raise InputError(f"{family} takes no {what}; leave {', '.join(refused)} out")

    def pick(name: str, default=None):
        value = fields.get(name)
        return preset.get(name, default) if value is None else value

    prompts = prompts_of(prompt)
    n_per = positive_int(pick("num_outputs_per_prompt", 1), "num_outputs_per_prompt")
    negative = fields.get("negative_prompt")
    negatives = None if negative is None else tuple(negatives_for(negative, prompts))
    output_type = fields.get("output_type") or "pil"
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    output_path = fields.get("output_path")
    if output_path is not None and output_type == "latent":
        raise InputError("output_path needs decoded outputs; use output_type 'pil' or 'np'")
    latents = fields.get("latents")
    if latents is not None:
        latents = np.asarray(latents, np.float32)
        if not np.isfinite(latents).all():
            raise InputError("latents contain NaN or infinite values")
    max_len = pick("max_sequence_length")
    fps = pick("fps")
    cache, threshold = fields.get("step_cache"), fields.get("step_cache_threshold")
    if cache is not None and cache not in step_cache.MODES:
        raise InputError(f"step_cache must be one of {list(step_cache.MODES)} or None, got {cache!r}")
    if threshold is not None:
        if cache is None:
            raise InputError("step_cache_threshold needs a step_cache ('first_block' or 'teacache')")
        threshold = finite_nonneg(threshold, "step_cache_threshold")

    def scale(name: str) -> float | None:
        value = pick(name)
        return None if value is None else finite_nonneg(value, name)

    return Request(
        prompts=tuple(prompts),
        negative_prompts=negatives,
        height=positive_int(pick("height"), "height"),
        width=positive_int(pick("width"), "width"),
        num_frames=positive_int(pick("num_frames", 1), "num_frames"),
        steps=positive_int(pick("num_inference_steps"), "num_inference_steps"),
        guidance_scale=scale("guidance_scale"),
        guidance_scale_2=scale("guidance_scale_2"),
        true_cfg_scale=scale("true_cfg_scale"),
        max_sequence_length=None if max_len is None else positive_int(max_len, "max_sequence_length"),
        seeds=tuple(seeds_of(0 if fields.get("seed") is None else fields["seed"], len(prompts) * n_per)),
        latents=latents,
        images=None if fields.get("image") is None else read_images(fields["image"], most=max_images),
        num_outputs_per_prompt=n_per,
        output_type=output_type,
        output_path=None if output_path is None else Path(output_path),
        fps=None if fps is None else positive_int(fps, "fps"),
        progress=bool(fields.get("progress")),
        guidance_rescale=scale("guidance_rescale"),
        original_size=pair(fields.get("original_size"), "original_size", 1),
        target_size=pair(fields.get("target_size"), "target_size", 1),
        crops_coords_top_left=pair(fields.get("crops_coords_top_left"), "crops_coords_top_left", 0),
        loras=loras_of(fields.get("loras"), len(prompts), n_per),
        step_cache=cache,
        step_cache_threshold=threshold,
        given=given,
    )


def loras_of(loras, n_prompts: int, n_per: int) -> tuple[dict[str, float], ...] | None:
    """Per output, the adapters it uses: one {name: scale} for all, or a list of one per prompt."""
    if loras is None:
        return None
    per_prompt = loras if isinstance(loras, list | tuple) else [loras] * n_prompts
    if len(per_prompt) != n_prompts:
        raise InputError(f"{len(per_prompt)} loras for {n_prompts} prompts; give one dict or one per prompt")
    out = []
    for d in per_prompt:
        if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
            raise InputError(f'loras must map adapter names to scales, e.g. {{"style": 0.8}}, got {d!r}')
        scales = {}
        for k, v in d.items():
            try:
                scales[k] = float(v)
            except (TypeError, ValueError):
                raise InputError(f"the scale of LoRA {k!r} must be a number, got {v!r}") from None
            if isinstance(v, bool) or not math.isfinite(scales[k]):
                raise InputError(f"the scale of LoRA {k!r} must be a finite number, got {v!r}")
        out.extend([scales] * n_per)
    return tuple(out)


def prompts_of(prompt, name: str = "prompt") -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list | tuple) or not prompt or not all(isinstance(p, str) for p in prompt):
        raise InputError(
            f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}"
        )
    return list(prompt)


def pair(value, name: str, least: int) -> tuple[int, int] | None:
    """Two integers >= `least` (a (height, width) or (top, left)), or None when not given."""
    if value is None:
        return None
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= least for v in value)
    if not ok:
        raise InputError(f"{name} must be two integers >= {least}, e.g. (1024, 1024), got {value!r}")
    return int(value[0]), int(value[1])


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def finite_nonneg(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def seeds_of(seed, batch: int) -> list[int]:
    """One seed per output: an int seed s gives s, s + 1, ...; a list gives one per output, in order.

    Each output's noise depends only on its own seed, so a request draws the same image alone or batched.
    """
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        seeds = [int(seed) + i for i in range(batch)]
    elif isinstance(seed, list | tuple) and all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) for s in seed
    ):
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise InputError(f"{len(seeds)} seeds for {batch} outputs; give one integer or one per output")
    else:
        raise InputError(f"seed must be an integer or a list of integers, got {seed!r}")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise InputError(f"seeds must be in [0, 2**63), got {seeds}")
    return seeds


def negatives_for(negative_prompt, prompts: list[str]) -> list[str]:
    """One negative prompt per prompt (a single one is shared by all)."""
    negatives = prompts_of(negative_prompt, "negative_prompt")
    if len(negatives) not in (1, len(prompts)):
        raise InputError(
            f"{len(negatives)} negative prompts for {len(prompts)} prompts; give 1 or {len(prompts)}"
        )
    return negatives * (len(prompts) // len(negatives))
