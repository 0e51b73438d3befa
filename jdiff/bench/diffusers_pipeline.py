"""diffusers' side of `flux_pipeline`: `diffusers.FluxPipeline` over random weights, timed end to end.

The components are the ones FLUX.1-dev's model_index.json names (transformers' CLIPTextModel and
T5EncoderModel, diffusers' FluxTransformer2DModel and AutoencoderKL, FlowMatchEulerDiscreteScheduler), built
at the workload's configs with random bfloat16 weights on the device; the tokenizers are the embedded tiny
model's, as on jdiff's side. `output_type="np"`, as jdiff's: decoded images as float32 arrays on the host.
With `compiled`, only the transformer goes through `torch.compile` (default mode), as diffusers documents.
"""

from __future__ import annotations

import time

import numpy as np

from jdiff.bench.diffusers_engine import (
    _torch_random,
    _transformers_random,
    settle,
    torch_memory,
    torch_versions,
)
from jdiff.bench.workloads import PROMPT, _resolve, timed_calls


def random_models(config: dict, device) -> dict:
    """FLUX.1's four models with random bfloat16 weights on `device`, by model_index.json component name."""
    import diffusers
    import torch
    import transformers

    bf16 = torch.bfloat16
    builders = {
        # The transformer first: its float32 build is the largest transient, best taken on an empty device.
        "transformer": lambda: _torch_random(
            diffusers.FluxTransformer2DModel, config["transformer"], device, bf16
        ),
        "vae": lambda: _torch_random(diffusers.AutoencoderKL, config["vae"], device, bf16),
        "text_encoder": lambda: _transformers_random(
            transformers.CLIPTextModel, transformers.CLIPTextConfig, config["text_encoder"], device, bf16
        ),
        "text_encoder_2": lambda: _transformers_random(
            transformers.T5EncoderModel, transformers.T5Config, config["text_encoder_2"], device, bf16
        ),
    }
    models = {}
    for name, build in builders.items():
        models[name] = build()
        torch.cuda.empty_cache()  # hand the float32 build's blocks back before the next one (no-op on CPU)
    return models


def flux_pipeline(models: dict, config: dict):
    """A `diffusers.FluxPipeline` over `models`, with the embedded model's tokenizers, progress bar off."""
    import diffusers
    import transformers

    from jdiff.api import embedded_model_path

    tokenizers = embedded_model_path()
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
        tokenizer=transformers.AutoTokenizer.from_pretrained(str(tokenizers / "tokenizer")),
        tokenizer_2=transformers.AutoTokenizer.from_pretrained(str(tokenizers / "tokenizer_2")),
        **models,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers_pipeline(name: str, tiny: bool, compiled: bool) -> dict:
    import torch

    wl, config, sz = _resolve(name, tiny)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    models = random_models(config, device)
    weights_gib = settle(cuda)
    t0 = time.perf_counter()
    pipe = flux_pipeline(models, config)
    if compiled:
        pipe.transformer = torch.compile(pipe.transformer)
    construct_s = time.perf_counter() - t0

    def run():
        with torch.inference_mode():
            images = pipe(
                PROMPT,
                height=sz["height"],
                width=sz["width"],
                num_inference_steps=sz["steps"],
                guidance_scale=sz["guidance"],
                max_sequence_length=sz["text"],
                generator=torch.Generator(device).manual_seed(0),
                output_type="np",
            ).images
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
