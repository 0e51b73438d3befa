"""diffusers' side of the end-to-end workloads: diffusers' pipeline class over random weights, timed end to end.

The components are the ones the workload's model_index.json names (`jdiff.bench.pipeline_workloads`), built at
the workload's configs with random bfloat16 weights on the device (float32 where the loaders keep it); the
scheduler and tokenizers come from the same model directory jdiff's side reads (`jdiff.bench.model_dir`).
`output_type="np"`, as jdiff's: decoded images as float32 arrays on the host. With `compiled`, only the
denoiser (transformer or UNet) goes through `torch.compile` (default mode), as diffusers documents.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np

from jdiff.bench.configs import PROMPT
from jdiff.bench.diffusers_engine import (
    _torch_random,
    _transformers_random,
    settle,
    torch_memory,
    torch_versions,
)
from jdiff.bench.model_dir import write_model_dir
from jdiff.bench.workloads import _resolve, timed_calls


def random_models(name: str, config: dict, device) -> dict:
    """Workload `name`'s models with random bfloat16 weights on `device`, by model_index.json component name,
    each built from its config as the component's class (diffusers: the keys its constructor takes, as
    `from_config` keeps them; transformers: its `config_class`)."""
    import diffusers
    import torch
    import transformers

    from jdiff.bench.workloads import WORKLOADS

    spec = WORKLOADS[name].pipeline
    models = {}
    for component in spec.models:  # largest first: its float32 build is best taken on an empty device
        library, cls_name = spec.components[component]
        if library == "diffusers":
            cls = getattr(diffusers, cls_name)
            takes = inspect.signature(cls.__init__).parameters
            kwargs = {k: v for k, v in config[component].items() if k in takes}
            models[component] = _torch_random(cls, kwargs, device, torch.bfloat16)
        else:
            cls = getattr(transformers, cls_name)
            models[component] = _transformers_random(
                cls, cls.config_class, config[component], device, torch.bfloat16
            )
        torch.cuda.empty_cache()  # hand the float32 build's blocks back before the next one (no-op on CPU)
    return models


def build_pipeline(name: str, root: Path, models: dict):
    """diffusers' pipeline class of workload `name` over `models`, with the scheduler and tokenizers of its
    model directory `root` (`jdiff.bench.model_dir`), progress bar off."""
    import diffusers
    import transformers

    from jdiff.bench.workloads import WORKLOADS

    spec = WORKLOADS[name].pipeline
    scheduler = getattr(diffusers, spec.components["scheduler"][1]).from_pretrained(str(root / "scheduler"))
    tokenizers = {t: transformers.AutoTokenizer.from_pretrained(str(root / t)) for t in spec.tokenizers}
    pipe = getattr(diffusers, spec.pipeline_class)(
        scheduler=scheduler, **tokenizers, **models, **spec.diffusers_kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    if spec.step_cache:
        from diffusers.hooks import FirstBlockCacheConfig

        mode, threshold = spec.step_cache
        if mode != "first_block":
            raise SystemExit(f"jdiff bench: diffusers has no {mode!r} step cache")
        getattr(pipe, spec.denoiser).enable_cache(FirstBlockCacheConfig(threshold=threshold))
    return pipe


def run_diffusers_pipeline(name: str, tiny: bool, compiled: bool) -> dict:
    import torch

    wl, config, sz = _resolve(name, tiny)
    spec = wl.pipeline
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    root = write_model_dir(name, config)
    models = random_models(name, config, device)
    weights_gib = settle(cuda)
    t0 = time.perf_counter()
    pipe = build_pipeline(name, root, models)
    if compiled:
        setattr(pipe, spec.denoiser, torch.compile(getattr(pipe, spec.denoiser)))
    construct_s = time.perf_counter() - t0
    call = dict(height=sz["height"], width=sz["width"], output_type="np", **spec.call(sz))

    def run():
        with torch.inference_mode():
            out = pipe(prompt=PROMPT, generator=torch.Generator(device).manual_seed(0), **call)
        images = out.frames if hasattr(out, "frames") else out.images  # a video pipeline's frames
        if cuda:
            torch.cuda.synchronize()
        return images

    out, first_s, times = timed_calls(run, wl.warmup, wl.repeats)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "versions": torch_versions(cuda),
        "attention": "torch SDPA (diffusers native backend)",
        # torch.compile compiles during the first call: what that call takes beyond a steady one (as on
        # jdiff's side; a whole pipeline call is seconds, too long to count in).
        "compile_s": round(first_s - float(np.median(times)), 2) if compiled else None,
        "construct_s": round(construct_s, 3),
        "first_s": round(first_s, 3),
        "start_s": round(construct_s + first_s, 3),
        "times_ms": [round(1e3 * t, 2) for t in times],
        "weights_gib": None if weights_gib is None else round(weights_gib, 2),
        **torch_memory(cuda),
        "out_shape": list(out.shape),
        "finite": bool(np.isfinite(out).all()),
    }
