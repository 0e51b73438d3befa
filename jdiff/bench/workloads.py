"""What `jdiff bench` measures: real configs (reference config.json keys), input sizes, and repeat counts.

Every workload also has a toy variant (`--tiny`): the same code path with smaller widths, depths and sizes.
The configs live in `jdiff.bench.configs`, the FLOP formulas in `jdiff.bench.flops` (both re-exported here).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from jdiff.bench.configs import (
    FLUX2_DEV,
    FLUX2_KLEIN_4B,
    FLUX_DEV,
    FLUX_TINY,
    FLUX_VAE,
    FLUX_VAE_TINY,
    HY15_480P,
    HY15_SIZES,
    HY15_TINY,
    HY15_TINY_SIZES,
    HY15_VAE,
    HY15_VAE_TINY,
    PROMPT,
    QWEN_IMAGE,
    QWEN_IMAGE_NEGATIVE_TEXT,
    QWEN_IMAGE_TEXT,
    SDXL_UNET,
    SDXL_UNET_TINY,
    WAN_13B,
    WAN_14B,
    WAN_VAE,
    Z_IMAGE_TEXT,
    Z_IMAGE_TURBO,
)
from jdiff.bench.flops import flux2_tflop, hunyuan_video15_tflop, qwen_image_tflop, unet_tflop, z_image_tflop
from jdiff.bench.pipeline_workloads import PIPELINE_WORKLOADS
from jdiff.bench.spec import ENGINES, PipelineSpec, Workload
from jdiff.models.flux2.config import Flux2Config
from jdiff.models.qwen_image.config import QwenImageConfig
from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan_vae.config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAEConfig
from jdiff.models.z_image.config import ZImageConfig
from jdiff.weights.config import to_dict

if TYPE_CHECKING:  # `jdiff bench --help` imports this module: numpy only when a workload runs
    import numpy as np

# Re-exported: the driver, the engines and benchmarks/ scripts read them from here.
__all__ = ["ENGINES", "GIB", "PROMPT", "WORKLOADS", "PipelineSpec", "Workload"]

GIB = 2**30


def position_ids(text: int, h: int, w: int, axes: int) -> tuple[np.ndarray, np.ndarray]:
    """(text ids [T, A], image ids [h w, A]) as the FLUX.1 (A = 3) and FLUX.2 (A = 4) pipelines build them:
    an image token's row and column in axes 1 and 2, zeros elsewhere; FLUX.2 counts text tokens in axis 3."""
    import numpy as np

    txt = np.zeros((text, axes))
    if axes == 4:
        txt[:, 3] = np.arange(text)
    img = np.zeros((h, w, axes))
    img[..., 1], img[..., 2] = np.arange(h)[:, None], np.arange(w)[None, :]
    return txt, img.reshape(h * w, axes)


def sdxl_time_ids(sz: dict) -> list[list[float]]:
    """SDXL's added time ids per batch row: original size, crop top-left (0, 0), target size, in pixels."""
    h, w = 8 * sz["h"], 8 * sz["w"]
    return [[h, w, 0, 0, h, w]] * sz["batch"]


def _lora_workload(what: str, *, batch: int, slots: int) -> Workload:
    """A FLUX.1-dev step whose block linears hold `slots` rank-32 LoRA adapters (`jdiff.layers.lora`)."""
    return Workload(
        f"FLUX.1-dev transformer step, 1024x1024, {what}",
        FLUX_DEV,
        dict(h=64, w=64, text=512, batch=batch, slots=slots, rank=32),
        74.4 * batch,
        warmup=2,
        repeats=10,
        engines=("jdiff",),
        tiny_config=FLUX_TINY,
        tiny_sizes=dict(h=4, w=4, text=8, batch=batch, slots=slots, rank=4),
        tiny_title=f"tiny FLUX transformer step (toy config), 64x64, {what.replace('32', '4')}",
    )


def _wan_forward(model: str, config: dict, h: int, w: int, tflop: float, *, warmup: int, repeats: int):
    """One Wan T2V transformer forward over 81 frames (21 latent frames) at h x w latents (8x pixels), 512 text
    tokens; its toy variant is the same for every size."""
    return Workload(
        f"{model} transformer forward, {8 * w}x{8 * h}x81",
        config,
        dict(f=21, h=h, w=w, text=512),
        tflop,
        warmup=warmup,
        repeats=repeats,
        tiny_config=to_dict(
            WanTransformerConfig.tiny(text_dim=32, freq_dim=16, in_channels=16, out_channels=16)
        ),
        tiny_sizes=dict(f=3, h=4, w=4, text=8),
        tiny_title="tiny Wan transformer forward (toy config), 32x32x9",
    )


WORKLOADS = {
    "flux_step": Workload(
        "FLUX.1-dev transformer step, 1024x1024",
        FLUX_DEV,
        dict(h=64, w=64, text=512),
        74.4,
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=FLUX_TINY,
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny FLUX transformer step (toy config), 64x64",
    ),
    # One prompt without CFG, as Z-Image-Turbo samples: 4096 image tokens (64x64 grid of 2x2 latent patches)
    # and the caption's Z_IMAGE_TEXT tokens.
    "z_image_step": Workload(
        "Z-Image-Turbo transformer step, 1024x1024",
        Z_IMAGE_TURBO,
        dict(h=64, w=64, text=Z_IMAGE_TEXT),
        z_image_tflop(Z_IMAGE_TURBO, dict(h=64, w=64, text=Z_IMAGE_TEXT)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(ZImageConfig.tiny()),
        tiny_sizes=dict(h=4, w=4, text=32),
        tiny_title="tiny Z-Image transformer step (toy config), 64x64",
    ),
    # The distilled klein samples without CFG; its text is always max_sequence_length (512) tokens, padding
    # included, as Flux2KleinPipeline feeds it.
    "flux2_klein_step": Workload(
        "FLUX.2-klein-4B transformer step, 1024x1024",
        FLUX2_KLEIN_4B,
        dict(h=64, w=64, text=512),
        flux2_tflop(FLUX2_KLEIN_4B, dict(h=64, w=64, text=512)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(Flux2Config.tiny()),
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny FLUX.2 transformer step (toy config), 64x64",
    ),
    # FLUX.2-dev is guidance-distilled (one call per step, guidance 4.0 embedded); Flux2Pipeline pads the
    # Mistral-3 prompt to 512 tokens.
    "flux2_dev_step": Workload(
        "FLUX.2-dev transformer step, 1024x1024",
        FLUX2_DEV,
        dict(h=64, w=64, text=512),
        flux2_tflop(FLUX2_DEV, dict(h=64, w=64, text=512)),
        warmup=2,
        repeats=5,
        engines=ENGINES,
        tiny_config=to_dict(Flux2Config.tiny(guidance_embeds=True)),
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny FLUX.2 transformer step with guidance (toy config), 64x64",
    ),
    # SDXL base with CFG as StableDiffusionXLPipeline runs it: [negative; prompt] in one batch of 2, 77 tokens
    # of the two encoders' 2048 features, pooled text 1280 and six size/crop numbers (text_time).
    "sdxl_unet_step": Workload(
        "SDXL base UNet step, 1024x1024, CFG batch 2",
        SDXL_UNET,
        dict(h=128, w=128, text=77, batch=2),
        unet_tflop(SDXL_UNET, dict(h=128, w=128, text=77, batch=2)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=SDXL_UNET_TINY,
        tiny_sizes=dict(h=8, w=8, text=8, batch=2),
        tiny_title="tiny SDXL-like UNet step (toy config), 64x64, CFG batch 2",
    ),
    # One transformer call at batch 1. SGLang's per-step figure for Qwen-Image (true CFG 4.0) is two of them,
    # cond and uncond: compare 2x this row with it.
    "qwen_image_step": Workload(
        "Qwen-Image transformer call, 1024x1024, batch 1",
        QWEN_IMAGE,
        dict(h=64, w=64, text=QWEN_IMAGE_TEXT),
        qwen_image_tflop(QWEN_IMAGE, dict(h=64, w=64, text=QWEN_IMAGE_TEXT)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(QwenImageConfig.tiny()),
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny Qwen-Image transformer call (toy config), 64x64, batch 1",
    ),
    # The true-CFG step as each pipeline runs it: jdiff one batch-2 call [negative; prompt] with the shorter
    # text padded (key lengths), diffusers' QwenImagePipeline two batch-1 calls of each text's own length.
    "qwen_image_cfg_step": Workload(
        "Qwen-Image true-CFG step, 1024x1024 (negative 5 + prompt 16 text tokens)",
        QWEN_IMAGE,
        dict(h=64, w=64, text=QWEN_IMAGE_TEXT, negative_text=QWEN_IMAGE_NEGATIVE_TEXT),
        sum(
            qwen_image_tflop(QWEN_IMAGE, dict(h=64, w=64, text=t))
            for t in (QWEN_IMAGE_TEXT, QWEN_IMAGE_NEGATIVE_TEXT)
        ),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(QwenImageConfig.tiny()),
        tiny_sizes=dict(h=4, w=4, text=8, negative_text=3),
        tiny_title="tiny Qwen-Image true-CFG step (toy config), 64x64",
    ),
    # LoRA (issue 20): one rank-32 adapter on every block linear but the modulation vs flux_step (no
    # adapter); a batch of 4 with 4 adapters loaded, each row its own, vs a batch of 4 with one loaded.
    "flux_lora_step": _lora_workload("one rank-32 LoRA", batch=1, slots=1),
    "flux_lora_batch4_one": _lora_workload("batch 4, one rank-32 LoRA", batch=4, slots=1),
    "flux_lora_batch4_mixed": _lora_workload("batch 4, 4 rank-32 LoRAs (one per row)", batch=4, slots=4),
    "wan_forward": _wan_forward("Wan2.1-T2V-1.3B", WAN_13B, 60, 104, 282.7, warmup=2, repeats=5),
    # Issue 19's Wan2.1-14B rows (ANCHORS.md's TFLOP): 40 layers of width 5120, 32760 and 75600 tokens.
    "wan_forward_14b": _wan_forward("Wan2.1-T2V-14B", WAN_14B, 60, 104, 1663.0, warmup=1, repeats=3),
    "wan_forward_14b_720p": _wan_forward("Wan2.1-T2V-14B", WAN_14B, 90, 160, 6489.0, warmup=1, repeats=2),
    "flux_vae_decode": Workload(
        "FLUX VAE decode, 1024x1024",
        FLUX_VAE,
        dict(h=128, w=128),
        None,
        warmup=2,
        repeats=10,
        tiny_config=FLUX_VAE_TINY,
        tiny_sizes=dict(h=4, w=4),
        tiny_title="tiny FLUX VAE decode (toy config), 32x32",
    ),
    "wan_vae_decode": Workload(
        "Wan2.1 VAE decode, 21 latent frames -> 81 x 832x480",
        WAN_VAE,
        dict(f=21, h=60, w=104),
        None,
        warmup=1,
        repeats=3,
        tiny_config=to_dict(
            WanVAEConfig.tiny(z_dim=16, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)
        ),
        tiny_sizes=dict(f=3, h=4, w=4),
        tiny_title="tiny Wan VAE decode (toy config), 3 latent frames -> 9 x 32x32",
    ),
    # HunyuanVideo-1.5 (issue 18): the CFG step and the VAE decode as each engine's pipeline runs them.
    "hunyuan_video15_step": Workload(
        "HunyuanVideo-1.5 480p T2V CFG step, 848x480x121",
        HY15_480P,
        HY15_SIZES,
        hunyuan_video15_tflop(HY15_480P, HY15_SIZES),
        warmup=1,
        repeats=3,
        engines=("jdiff", "diffusers"),
        tiny_config=HY15_TINY,
        tiny_sizes=HY15_TINY_SIZES,
        tiny_title="tiny HunyuanVideo-1.5 CFG step (toy config), 24x16x5",
    ),
    "hunyuan_video15_vae_decode": Workload(
        "HunyuanVideo-1.5 VAE decode, 31 latent frames -> 121 x 848x480",
        HY15_VAE,
        dict(f=31, h=30, w=53),
        None,
        warmup=1,
        repeats=3,
        engines=("jdiff", "diffusers"),
        tiny_config=HY15_VAE_TINY,
        tiny_sizes=dict(f=2, h=4, w=6),
        tiny_title="tiny HunyuanVideo-1.5 VAE decode (toy config), 2 latent frames -> 5 x 24x16",
    ),
    # 720p decoded in diffusers' default tiles (`enable_tiling()`: 256 px, a quarter overlapping): 45 x 80
    # latents are 4 x 7 tiles of 4 shapes, one lax.map each; the peak is one tile's activations + the video.
    "hunyuan_video15_vae_decode_720p_tiled": Workload(
        "HunyuanVideo-1.5 VAE decode, tiled (256 px tiles), 31 latent frames -> 121 x 1280x720",
        HY15_VAE,
        dict(f=31, h=45, w=80, tiling=(256, 256, 16, 16, 0.25)),
        None,
        warmup=1,
        repeats=3,
        engines=("jdiff", "diffusers"),
        tiny_config=HY15_VAE_TINY,
        tiny_sizes=dict(f=1, h=5, w=3, tiling=(16, 16, 4, 4, 0.25)),  # tiles 4 and 2 high, one column
        tiny_title="tiny HunyuanVideo-1.5 VAE decode, tiled (toy config, 16 px tiles), 1 latent frame -> 12x20",
    ),
    **PIPELINE_WORKLOADS,
}


# The step workloads with an fp8 variant `<base>_fp8`, and the plan module of the denoiser it quantizes.
FP8_STEPS = {
    "flux_step": "jdiff.models.flux.plan",
    "wan_forward": "jdiff.models.wan.plan",
    "wan_forward_14b": "jdiff.models.wan.plan",
    "wan_forward_14b_720p": "jdiff.models.wan.plan",
    "z_image_step": "jdiff.models.z_image.plan",
    "qwen_image_cfg_step": "jdiff.models.qwen_image.plan",
}


def fp8_variant(wl: Workload) -> Workload:
    """Workload `wl` with the denoiser's linears as `quantization="fp8"` quantizes them, jdiff only
    (diffusers' fp8 is torchao, not a dependency: benchmarks/fp8_error.py runs it next to jdiff)."""
    return replace(
        wl, title=f"{wl.title}, fp8 linears", engines=("jdiff",), tiny_title=f"{wl.tiny_title}, fp8 linears"
    )


# fp8 (issue 19): the block linears quantized as `quantization="fp8"` quantizes them (jdiff.layers.quant,
# per-channel weight and per-token activation scales), for the steps FP8_STEPS lists;
# the pipelines' fp8 workloads are in pipeline_workloads.
WORKLOADS |= {f"{base}_fp8": fp8_variant(WORKLOADS[base]) for base in FP8_STEPS}


def _resolve(name: str, tiny: bool) -> tuple[Workload, dict, dict]:
    """(workload, config, sizes), with the toy overrides applied under `tiny` (per component for pipelines)."""
    wl = WORKLOADS[name]
    if not tiny:
        return wl, wl.config, wl.sizes
    over = {
        k: {**wl.config[k], **v} if isinstance(wl.config.get(k), dict) else v
        for k, v in wl.tiny_config.items()
    }
    return wl, {**wl.config, **over}, wl.tiny_sizes


def timed_calls(call, warmup: int, repeats: int):
    """(first output, first call's seconds, seconds of each of `repeats` calls after `warmup` more).

    `call` must return only once the device has finished (a synchronising call).
    """
    t0 = time.perf_counter()
    out = call()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return out, first_s, times


def _median_ms(times: list[float]) -> float:
    return 1e3 * float(statistics.median(times))
