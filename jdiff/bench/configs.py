"""The configs `jdiff bench` runs: the models' named presets as reference config.json dicts (diffusers /
transformers constructor keywords), the schedulers' released scheduler_config.json values, toy variants, and
the texts the end-to-end workloads encode.

A config dict is what the component's config.json would hold, in the layout both engines read: jdiff reads it
with the family's loader (`spec.read_config`), diffusers / transformers build the model from it.
"""

from __future__ import annotations

from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux2.config import Flux2Config
from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config
from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config, HunyuanVideo15VAEConfig
from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from jdiff.models.qwen3.config import Qwen3Config
from jdiff.models.qwen_image.config import QwenImageConfig
from jdiff.models.t5.config import T5Config, UMT5Config
from jdiff.models.unet.config import UNet2DConditionConfig
from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan_vae.config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAEConfig
from jdiff.models.z_image.config import ZImageConfig
from jdiff.presets import load_preset
from jdiff.weights.config import to_dict

# The real configs are the models' named presets, as reference config.json dicts (diffusers / transformers
# constructor keywords).
FLUX_DEV = to_dict(FluxConfig.dev())
WAN_13B = to_dict(WanTransformerConfig.t2v_1_3b())
WAN_14B = to_dict(WanTransformerConfig.t2v_14b())
FLUX_VAE = to_dict(AutoencoderKLConfig.flux())
WAN_VAE = to_dict(WanVAEConfig.wan21())
CLIP_L = to_dict(CLIPTextConfig.large())
T5_XXL = to_dict(T5Config.xxl())
UMT5_XXL = to_dict(UMT5Config.xxl())
Z_IMAGE_TURBO = to_dict(ZImageConfig.turbo())
FLUX2_KLEIN_4B = to_dict(Flux2Config.klein_4b())
FLUX2_DEV = to_dict(Flux2Config.dev())
SDXL_UNET = to_dict(UNet2DConditionConfig.sdxl())
QWEN_IMAGE = to_dict(QwenImageConfig.qwen_image())
HY15_480P = to_dict(HunyuanVideo15Config.t2v_480p())
HY15_VAE = to_dict(HunyuanVideo15VAEConfig.hunyuan_video15())
# HunyuanVideo-1.5 480p text-to-video with CFG: 121 frames at 848x480 are a 31 x 30 x 53 latent (16x spatial,
# 4x temporal, patch 1). jdiff's pipeline runs [negative; prompt] as one batch with the Qwen text padded to its
# 128-token bucket and the glyph text (none in this prompt) to 64, all masked; diffusers' runs two batch-1 calls
# with the text padded to 1000 tokens, the glyph to 256 and 729 zero image tokens (T2V), masked.
HY15_SIZES = dict(
    f=31, h=30, w=53, text=128, text_lens=(24, 80), glyph=64, ref_text=1000, ref_glyph=256, image=729
)
HY15_TINY = to_dict(HunyuanVideo15Config.tiny())
HY15_TINY_SIZES = dict(f=2, h=4, w=6, text=8, text_lens=(3, 8), glyph=4, ref_text=12, ref_glyph=6, image=5)
HY15_VAE_TINY = to_dict(HunyuanVideo15VAEConfig.tiny())
# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
FLUX_PIPELINE = dict(
    transformer=FLUX_DEV,
    text_encoder=CLIP_L,
    text_encoder_2=T5_XXL,
    vae=FLUX_VAE,
    scheduler=FLUX_DEV_SCHEDULER,
)
FLUX_TINY = to_dict(FluxConfig.tiny())
# Four levels, as the real VAE: the 8x downsampling the FLUX pipeline's sizes assume.
FLUX_VAE_TINY = to_dict(
    AutoencoderKLConfig.tiny(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32), norm_num_groups=8, latent_channels=16,
    )
)  # fmt: skip
# Z-Image's caption: the prompt's real tokens in Qwen3's chat template, padded to a multiple of 32 (about 100
# words of prompt; the pipeline keeps only real tokens, so this is not max_sequence_length).
Z_IMAGE_TEXT = 128
# Qwen-Image's text: SGLang's CI prompt ("A futuristic cityscape at sunset with flying cars") in Qwen2.5-VL's
# chat template with the template's system prefix dropped, as the pipeline does: about 16 tokens.
QWEN_IMAGE_TEXT = 16
# Its negative prompt in a true-CFG step: SGLang's CI sends " " (a few template tokens remain).
QWEN_IMAGE_NEGATIVE_TEXT = 5
# SDXL's layout at toy widths: a plain first level, 1 and 2 transformer layers, text_time with pooled text 24.
SDXL_UNET_TINY = to_dict(
    UNet2DConditionConfig.tiny(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 24, 40), attention_head_dim=(1, 3, 5), transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True, cross_attention_dim=40, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24 + 6 * 8,
    )
)  # fmt: skip
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"

NEGATIVE_PROMPT = "blurry, low quality, distorted"


def qwen_vl(cfg: Qwen2_5_VLConfig) -> dict:
    """A Qwen2.5-VL config in transformers 5's nested layout (`text_config` with `rope_parameters` holding the
    mrope sections, `vision_config`), which transformers builds and jdiff's config reads."""
    d = to_dict(cfg)
    vision = {
        k: list(v) if isinstance(v, tuple) else v for k, v in d.pop("vision_config").items() if v is not None
    }
    text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")  # fmt: skip
    text = {k: d[k] for k in text_keys}
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": d["rope_theta"],
        "mrope_section": d["mrope_section"],
    }
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return {"text_config": text, "vision_config": vision, **{k: d[k] for k in ids}}


# ---- the end-to-end workloads' other components --------------------------------------------------------------

QWEN3_4B = to_dict(Qwen3Config.qwen3_4b())
SDXL_VAE = to_dict(AutoencoderKLConfig.sdxl())
CLIP_BIGG = to_dict(CLIPTextConfig.bigg())
FLUX2_VAE = to_dict(AutoencoderKLFlux2Config.flux2())
# The vision tower is built too (both engines' Qwen2.5-VL classes hold it), though text-to-image never runs it.
QWEN_VL_7B = qwen_vl(Qwen2_5_VLConfig.qwen_image_7b())
# QwenImageVAEConfig.qwen_image() written out: its module (the VAE itself) imports jax, which `jdiff bench --help`
# must not (tests/bench checks the two agree).
QWEN_IMAGE_VAE = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, latents_mean=list(WAN21_LATENTS_MEAN),
    latents_std=list(WAN21_LATENTS_STD),
)  # fmt: skip
# The released scheduler_config.json values (keys left out take the class defaults, as in the files).
Z_IMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
FLUX2_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
)  # fmt: skip
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading", steps_offset=1,
    use_karras_sigmas=False,
)  # fmt: skip
QWEN_IMAGE_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)  # fmt: skip
# Wan2.1-T2V-1.3B's UniPC (flow sigmas, shift 3.0 for 480p).
WAN_SCHEDULER = dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
)  # fmt: skip
# Steps and guidance of the distilled models: their presets (configs/*.json), as `jdiff generate` runs them.
Z_IMAGE_PRESET = load_preset("z-image-turbo")
KLEIN_PRESET = load_preset("flux2-klein")
# Token counts of PROMPT as each pipeline feeds its denoiser, with the bench tokenizers (jdiff.bench.tokenizers,
# whose counts are Qwen's real ones; tests/bench checks them): Z-Image's caption is its 22 real tokens in the
# Qwen3 chat template, padded to 32; Qwen-Image's, the 14 prompt tokens and the template's 5 closing ones
# after its 34-token system prefix is dropped (the negative prompt, 11, is padded to the batch's 19).
Z_IMAGE_PIPELINE_TEXT = 32
QWEN_IMAGE_PIPELINE_TEXT = 19

# ---- toy variants of the end-to-end workloads (per-component overrides of the real configs) ------------------

# Real vocabularies stay (the bench tokenizers' ids fit either way); widths are chained: each text encoder's
# width is the denoiser's text input, each VAE's latent channels the denoiser's.
QWEN3_TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=1024)  # fmt: skip
# FLUX.2-klein reads Qwen3's hidden states 9, 18 and 27: 28 layers, narrow.
QWEN3_KLEIN_TINY = {**QWEN3_TINY, "hidden_size": 16, "num_hidden_layers": 28}
FLUX2_VAE_TINY = to_dict(AutoencoderKLFlux2Config.tiny())
SD_VAE_TINY = to_dict(
    AutoencoderKLConfig.tiny(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), latent_channels=4, scaling_factor=0.13025, shift_factor=None,
        use_quant_conv=True, use_post_quant_conv=True,
    )
)  # fmt: skip
# A toy Wan2.1 (4 latent channels both sides, UMT5's real vocabulary for the bench tokenizer's ids).
WAN_TINY = to_dict(WanTransformerConfig.tiny(text_dim=32))
UMT5_TINY = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16)  # fmt: skip
WAN_VAE_TINY = to_dict(WanVAEConfig.tiny())
QWEN_VL_TINY = qwen_vl(Qwen2_5_VLConfig.tiny(vocab_size=152064))
# QwenImageVAEConfig.tiny()'s overrides: 4 latent channels, 8x downsampling as the real one.
QWEN_IMAGE_VAE_TINY = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=[0.1, -0.2, 0.3, 0.0],
    latents_std=[1.5, 0.5, 2.0, 1.0],
)  # fmt: skip
