"""The end-to-end workloads: one declaration per family (model_index.json components, which are models, the
tokenizers, the generate call, the configs and sizes); `jdiff_pipeline` and `diffusers_pipeline` run any of them.

The TFLOP of a call counts the denoiser only: steps x denoiser calls per step x the step formula of
`jdiff.bench.flops` at the call's sizes. Text encoders, VAE decode, the sampler and the host's work are not
counted, so the TFLOP/s column is a lower bound on the rate the whole pipeline achieves.
"""

from __future__ import annotations

from dataclasses import replace

from jdiff.bench.configs import (
    CLIP_BIGG,
    CLIP_L,
    FLUX2_KLEIN_4B,
    FLUX2_SCHEDULER,
    FLUX2_VAE,
    FLUX2_VAE_TINY,
    FLUX_PIPELINE,
    FLUX_TINY,
    FLUX_VAE,
    FLUX_VAE_TINY,
    KLEIN_PRESET,
    NEGATIVE_PROMPT,
    QWEN3_4B,
    QWEN3_KLEIN_TINY,
    QWEN3_TINY,
    QWEN_IMAGE,
    QWEN_IMAGE_PIPELINE_TEXT,
    QWEN_IMAGE_SCHEDULER,
    QWEN_IMAGE_VAE,
    QWEN_IMAGE_VAE_TINY,
    QWEN_VL_7B,
    QWEN_VL_TINY,
    SD_VAE_TINY,
    SDXL_SCHEDULER,
    SDXL_UNET,
    SDXL_UNET_TINY,
    SDXL_VAE,
    UMT5_TINY,
    UMT5_XXL,
    WAN_13B,
    WAN_SCHEDULER,
    WAN_TINY,
    WAN_VAE,
    WAN_VAE_TINY,
    Z_IMAGE_PIPELINE_TEXT,
    Z_IMAGE_PRESET,
    Z_IMAGE_SCHEDULER,
    Z_IMAGE_TURBO,
)
from jdiff.bench.flops import flux2_tflop, qwen_image_tflop, unet_tflop, z_image_tflop
from jdiff.bench.spec import ENGINES, PipelineSpec, Workload
from jdiff.models.flux2.config import Flux2Config
from jdiff.models.qwen_image.config import QwenImageConfig
from jdiff.models.z_image.config import ZImageConfig
from jdiff.weights.config import to_dict

FLOW = ("diffusers", "FlowMatchEulerDiscreteScheduler")
QWEN2_TOKENIZER = ("transformers", "Qwen2Tokenizer")
SIZE_1024 = dict(height=1024, width=1024)
TINY_64 = dict(height=64, width=64)
Z_IMAGE_SIZES = dict(
    **SIZE_1024,
    steps=Z_IMAGE_PRESET["num_inference_steps"],
    guidance=Z_IMAGE_PRESET["guidance_scale"],
    text=Z_IMAGE_PIPELINE_TEXT,
)
KLEIN_SIZES = dict(
    **SIZE_1024,
    steps=KLEIN_PRESET["num_inference_steps"],
    guidance=KLEIN_PRESET["guidance_scale"],
    text=KLEIN_PRESET["max_sequence_length"],
)
SDXL_SIZES = dict(**SIZE_1024, steps=30, guidance=5.0, text=77, batch=2)
WAN_SIZES = dict(height=480, width=832, frames=81, steps=50, guidance=5.0)
QWEN_IMAGE_SIZES = dict(**SIZE_1024, steps=50, true_cfg=4.0, text=QWEN_IMAGE_PIPELINE_TEXT)

PIPELINE_WORKLOADS = {
    # Text encoders and VAE are not counted in the TFLOP: 28 steps x 74.4 TFLOP of denoising only, so the
    # TFLOP/s column is a lower bound on the rate the whole pipeline achieves.
    "flux_pipeline": Workload(
        "FLUX.1-dev text-to-image, 1024x1024, 28 steps",
        FLUX_PIPELINE,
        dict(height=1024, width=1024, steps=28, guidance=3.5, text=512),
        28 * 74.4,
        warmup=0,  # the cold first call is measured on its own; it warms everything up
        repeats=3,
        engines=ENGINES,
        tiny_config=dict(
            transformer=FLUX_TINY,
            # Real vocabularies: the embedded tokenizers' ids must fit; the pooled CLIP width and the T5 width
            # must match the tiny transformer's pooled_projection_dim and joint_attention_dim.
            text_encoder=dict(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
            ),
            text_encoder_2=dict(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4),
            vae=FLUX_VAE_TINY,
        ),
        tiny_sizes=dict(height=64, width=64, steps=2, guidance=3.5, text=8),
        pipeline=PipelineSpec(
            "FluxPipeline",
            dict(
                scheduler=FLOW,
                text_encoder=("transformers", "CLIPTextModel"),
                text_encoder_2=("transformers", "T5EncoderModel"),
                tokenizer=("transformers", "CLIPTokenizer"),
                tokenizer_2=("transformers", "T5Tokenizer"),
                transformer=("diffusers", "FluxTransformer2DModel"),
                vae=("diffusers", "AutoencoderKL"),
            ),
            ("transformer", "vae", "text_encoder", "text_encoder_2"),
            dict(tokenizer="embedded:tokenizer", tokenizer_2="embedded:tokenizer_2"),
            lambda sz: dict(
                num_inference_steps=sz["steps"], guidance_scale=sz["guidance"], max_sequence_length=sz["text"]
            ),
            step="flux_step",
        ),
        tiny_title="tiny FLUX text-to-image (toy config), 64x64, 2 steps",
    ),
    # Z-Image-Turbo as its preset runs it: 9 steps, no CFG (guidance 0), one transformer call a step over the
    # 4096 image tokens and the prompt's Z_IMAGE_PIPELINE_TEXT caption tokens. Qwen3-4B encodes 512 tokens (the
    # prompt padded to max_sequence_length); the FLUX.1 VAE decodes. bf16: 12.3 GB transformer + 8 GB encoder.
    "z_image_pipeline": Workload(
        f"Z-Image-Turbo text-to-image, 1024x1024, {Z_IMAGE_PRESET['num_inference_steps']} steps",
        dict(transformer=Z_IMAGE_TURBO, text_encoder=QWEN3_4B, vae=FLUX_VAE, scheduler=Z_IMAGE_SCHEDULER),
        Z_IMAGE_SIZES,
        Z_IMAGE_SIZES["steps"] * z_image_tflop(Z_IMAGE_TURBO, dict(h=64, w=64, text=Z_IMAGE_SIZES["text"])),
        warmup=0,
        repeats=3,
        engines=ENGINES,
        tiny_config=dict(
            transformer=to_dict(ZImageConfig.tiny(in_channels=16, cap_feat_dim=32)),
            text_encoder=QWEN3_TINY,
            vae=FLUX_VAE_TINY,
        ),
        tiny_sizes=dict(**TINY_64, steps=2, guidance=0.0, text=32),
        pipeline=PipelineSpec(
            "ZImagePipeline",
            dict(
                scheduler=FLOW,
                text_encoder=("transformers", "Qwen3Model"),
                tokenizer=QWEN2_TOKENIZER,
                transformer=("diffusers", "ZImageTransformer2DModel"),
                vae=("diffusers", "AutoencoderKL"),
            ),
            ("transformer", "text_encoder", "vae"),
            dict(tokenizer="qwen3"),
            lambda sz: dict(
                num_inference_steps=sz["steps"],
                guidance_scale=sz["guidance"],
                max_sequence_length=Z_IMAGE_PRESET["max_sequence_length"],
            ),
            step="z_image_step",
        ),
        tiny_title="tiny Z-Image text-to-image (toy config), 64x64, 2 steps",
    ),
    # FLUX.2-klein-4B (step-distilled) as its preset runs it: 4 steps, no CFG, guidance ignored; one
    # transformer call a step over 4096 image + 512 text tokens (Qwen3-4B's layers 9, 18, 27 stacked, padding
    # included). bf16: 7.8 GB transformer + 8 GB encoder + VAE.
    "flux2_klein_pipeline": Workload(
        f"FLUX.2-klein-4B text-to-image, 1024x1024, {KLEIN_PRESET['num_inference_steps']} steps",
        dict(transformer=FLUX2_KLEIN_4B, text_encoder=QWEN3_4B, vae=FLUX2_VAE, scheduler=FLUX2_SCHEDULER),
        KLEIN_SIZES,
        KLEIN_SIZES["steps"] * flux2_tflop(FLUX2_KLEIN_4B, dict(h=64, w=64, text=KLEIN_SIZES["text"])),
        warmup=0,
        repeats=3,
        engines=ENGINES,
        tiny_config=dict(
            transformer=to_dict(Flux2Config.tiny(joint_attention_dim=3 * QWEN3_KLEIN_TINY["hidden_size"])),
            text_encoder=QWEN3_KLEIN_TINY,
            vae=FLUX2_VAE_TINY,
        ),
        tiny_sizes=dict(**TINY_64, steps=2, guidance=1.0, text=64),
        pipeline=PipelineSpec(
            "Flux2KleinPipeline",
            dict(
                scheduler=FLOW,
                text_encoder=("transformers", "Qwen3ForCausalLM"),
                tokenizer=QWEN2_TOKENIZER,
                transformer=("diffusers", "Flux2Transformer2DModel"),
                vae=("diffusers", "AutoencoderKLFlux2"),
            ),
            ("transformer", "text_encoder", "vae"),
            dict(tokenizer="qwen3"),
            lambda sz: dict(
                num_inference_steps=sz["steps"], guidance_scale=sz["guidance"], max_sequence_length=sz["text"]
            ),
            step="flux2_klein_step",
            index=dict(is_distilled=True),
            diffusers_kwargs=dict(is_distilled=True),
        ),
        tiny_title="tiny FLUX.2-klein text-to-image (toy config), 64x64, 2 steps",
    ),
    # SDXL base, 30 steps of its EulerDiscreteScheduler, CFG 5.0 with a negative prompt: one UNet call a step
    # on the batch of 2 ([negative; prompt], 77 tokens of both CLIPs). bf16: 5.1 GB UNet + 1.6 GB encoders.
    # diffusers' invisible watermark is off (add_watermarker=False): jdiff has none.
    "sdxl_pipeline": Workload(
        "SDXL base text-to-image, 1024x1024, 30 steps, CFG 5",
        dict(
            unet=SDXL_UNET,
            text_encoder=CLIP_L,
            text_encoder_2=CLIP_BIGG,
            vae=SDXL_VAE,
            scheduler=SDXL_SCHEDULER,
        ),
        SDXL_SIZES,
        SDXL_SIZES["steps"] * unet_tflop(SDXL_UNET, dict(h=128, w=128, text=77, batch=2)),
        warmup=0,
        repeats=3,
        engines=ENGINES,
        tiny_config=dict(
            unet=SDXL_UNET_TINY,
            text_encoder=dict(
                hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
            ),
            text_encoder_2=dict(
                hidden_size=24,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                projection_dim=24,
            ),
            vae=SD_VAE_TINY,
        ),
        tiny_sizes=dict(**TINY_64, steps=2, guidance=5.0, text=77, batch=2),
        pipeline=PipelineSpec(
            "StableDiffusionXLPipeline",
            dict(
                scheduler=("diffusers", "EulerDiscreteScheduler"),
                text_encoder=("transformers", "CLIPTextModel"),
                text_encoder_2=("transformers", "CLIPTextModelWithProjection"),
                tokenizer=("transformers", "CLIPTokenizer"),
                tokenizer_2=("transformers", "CLIPTokenizer"),
                unet=("diffusers", "UNet2DConditionModel"),
                vae=("diffusers", "AutoencoderKL"),
            ),
            ("unet", "text_encoder_2", "vae", "text_encoder"),
            dict(tokenizer="clip", tokenizer_2="clip_bang_pad"),
            lambda sz: dict(
                num_inference_steps=sz["steps"],
                guidance_scale=sz["guidance"],
                negative_prompt=NEGATIVE_PROMPT,
            ),
            denoiser="unet",
            step="sdxl_unet_step",
            index=dict(force_zeros_for_empty_prompt=True),
            diffusers_kwargs=dict(add_watermarker=False),
        ),
        tiny_title="tiny SDXL text-to-image (toy config), 64x64, 2 steps, CFG 5",
    ),
    # Qwen-Image, 50 steps with true CFG 4.0 and a negative prompt: two transformer calls a step (jdiff runs
    # them as one batch of 2, diffusers one after the other), over 4096 image tokens and the prompt's
    # QWEN_IMAGE_PIPELINE_TEXT text tokens (the shorter negative is counted at the same length): 6.8 PFLOP a
    # call, so 2 timed calls after the first (a call is seconds; all three engines fit a 10-minute run only
    # split, see `jdiff bench --tables`).
    # Memory on one 141 GB H200, each engine in its own process, one after the other; bf16 weights: jdiff
    # 40.9 GB transformer + 15.5 GB Qwen2.5-VL-7B (its 1.3 GB vision tower included: both engines' classes
    # hold it, though text-to-image never runs it; diffusers' also holds the unused 1.1 GB lm_head) + 0.25 GB
    # VAE = 57 GB, plus activations (a 2 x 4115-token batch) and the Qwen2.5-VL pass on 2 short texts.
    # diffusers builds each model in float32 on the device first (82 GB for the transformer, alone there,
    # then cast tensor by tensor), which fits too; jdiff builds in bf16 leaf by leaf.
    "qwen_image_pipeline": Workload(
        "Qwen-Image text-to-image, 1024x1024, 50 steps, true CFG 4",
        dict(
            transformer=QWEN_IMAGE,
            text_encoder=QWEN_VL_7B,
            vae=QWEN_IMAGE_VAE,
            scheduler=QWEN_IMAGE_SCHEDULER,
        ),
        QWEN_IMAGE_SIZES,
        QWEN_IMAGE_SIZES["steps"]
        * 2
        * qwen_image_tflop(QWEN_IMAGE, dict(h=64, w=64, text=QWEN_IMAGE_SIZES["text"])),
        warmup=0,
        repeats=2,
        engines=ENGINES,
        tiny_config=dict(
            transformer=to_dict(
                QwenImageConfig.tiny(joint_attention_dim=QWEN_VL_TINY["text_config"]["hidden_size"])
            ),
            text_encoder=QWEN_VL_TINY,
            vae=QWEN_IMAGE_VAE_TINY,
        ),
        tiny_sizes=dict(**TINY_64, steps=2, true_cfg=4.0, text=QWEN_IMAGE_PIPELINE_TEXT),
        pipeline=PipelineSpec(
            "QwenImagePipeline",
            dict(
                scheduler=FLOW,
                text_encoder=("transformers", "Qwen2_5_VLForConditionalGeneration"),
                tokenizer=QWEN2_TOKENIZER,
                transformer=("diffusers", "QwenImageTransformer2DModel"),
                vae=("diffusers", "AutoencoderKLQwenImage"),
            ),
            ("transformer", "text_encoder", "vae"),
            dict(tokenizer="qwen2_5_vl"),
            lambda sz: dict(
                num_inference_steps=sz["steps"],
                true_cfg_scale=sz["true_cfg"],
                negative_prompt=NEGATIVE_PROMPT,
            ),
            step="qwen_image_step",
        ),
        tiny_title="tiny Qwen-Image text-to-image (toy config), 64x64, 2 steps, true CFG 4",
    ),
    # Wan2.1-T2V-1.3B, issue 19's whole-pipeline row: 81 frames at 832x480, 50 UniPC steps, CFG 5 with a
    # negative prompt: two transformer calls a step (jdiff one batch of 2, diffusers two), 21x30x52 latent
    # tokens and 512 text tokens each; UMT5-XXL encodes both texts, padded to 512. bf16: 2.8 GB transformer +
    # 11.4 GB UMT5 + 0.25 GB VAE.
    "wan_pipeline": Workload(
        "Wan2.1-T2V-1.3B text-to-video, 832x480x81, 50 steps, CFG 5",
        dict(transformer=WAN_13B, text_encoder=UMT5_XXL, vae=WAN_VAE, scheduler=WAN_SCHEDULER),
        WAN_SIZES,
        WAN_SIZES["steps"] * 2 * 282.7,  # wan_forward's TFLOP a call
        warmup=0,
        repeats=1,
        engines=ENGINES,
        tiny_config=dict(transformer=WAN_TINY, text_encoder=UMT5_TINY, vae=WAN_VAE_TINY),
        tiny_sizes=dict(height=32, width=48, frames=5, steps=2, guidance=5.0),
        pipeline=PipelineSpec(
            "WanPipeline",
            dict(
                scheduler=("diffusers", "UniPCMultistepScheduler"),
                text_encoder=("transformers", "UMT5EncoderModel"),
                tokenizer=("transformers", "T5TokenizerFast"),
                transformer=("diffusers", "WanTransformer3DModel"),
                vae=("diffusers", "AutoencoderKLWan"),
            ),
            ("text_encoder", "transformer", "vae"),
            dict(tokenizer="umt5"),
            lambda sz: dict(
                num_frames=sz["frames"],
                num_inference_steps=sz["steps"],
                guidance_scale=sz["guidance"],
                negative_prompt=NEGATIVE_PROMPT,
            ),
            step="wan_forward",
        ),
        tiny_title="tiny Wan text-to-video (toy config), 48x32x5, 2 steps, CFG 5",
    ),
}

# FLUX.1-dev's pipeline with the first-block step cache at its default threshold, on both engines (diffusers:
# its FirstBlockCache hook). The TFLOP is not counted: how many steps run depends on the run. Random weights
# skip differently from trained ones; the jdiff row records the steps it skipped (`step_cache`).
PIPELINE_WORKLOADS["flux_pipeline_fbcache"] = replace(
    PIPELINE_WORKLOADS["flux_pipeline"],
    title="FLUX.1-dev text-to-image, 1024x1024, 28 steps, first-block cache 0.12",
    tflop=None,
    pipeline=replace(PIPELINE_WORKLOADS["flux_pipeline"].pipeline, step_cache=("first_block", 0.12)),
    tiny_title="tiny FLUX text-to-image (toy config), 64x64, 2 steps, first-block cache",
)


# The pipelines with `quantization="fp8"` (jdiff only: diffusers' fp8 is torchao, not a dependency).
# Quantizing the random bf16 weights is part of construct_s, as `from_pretrained` does it.
def _fp8_pipeline(wl: Workload) -> Workload:
    return replace(
        wl,
        title=f"{wl.title}, fp8 linears",
        engines=("jdiff",),
        pipeline=replace(wl.pipeline, quantization="fp8"),
        tiny_title=f"{wl.tiny_title}, fp8 linears",
    )


PIPELINE_WORKLOADS |= {
    f"{name}_fp8": _fp8_pipeline(PIPELINE_WORKLOADS[name])
    for name in ("flux_pipeline", "z_image_pipeline", "qwen_image_pipeline", "wan_pipeline")
}
# Issue 19's Wan2.1-1.3B target "fp8 + TeaCache" (jdiff only): TeaCache at Wan2.1-1.3B's default threshold
# (0.08, `WanPipeline.step_caches`). Steps skipped depend on the weights: random ones skip differently from
# trained ones; the row records how many it skipped.
PIPELINE_WORKLOADS["wan_pipeline_fp8_teacache"] = replace(
    PIPELINE_WORKLOADS["wan_pipeline_fp8"],
    title=PIPELINE_WORKLOADS["wan_pipeline_fp8"].title + ", TeaCache 0.08",
    tflop=None,
    pipeline=replace(PIPELINE_WORKLOADS["wan_pipeline_fp8"].pipeline, step_cache=("teacache", 0.08)),
    tiny_title=PIPELINE_WORKLOADS["wan_pipeline_fp8"].tiny_title + ", TeaCache",
)
