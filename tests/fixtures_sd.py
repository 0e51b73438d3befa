"""Tiny Stable Diffusion 1.5 / 2.x and SDXL diffusers pipelines built offline (random weights, deterministic
tokenizers from jdiff.tiny.tokenizers), from jdiff's named tiny presets."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.unet.config import UNet2DConditionConfig
from jdiff.tiny.tokenizers import clip_tokenizer
from tests import parity

WORDS = ("a", "red", "blue", "circle", "square", "on", "background", "ugly")
# SD 1.5's and SDXL's scheduler settings (scheduler/scheduler_config.json of the released models).
# Cross-attention (and SDXL added-embedding) weights this many times normal(0, 0.05): at 1 the prompt moves
# the tiny UNet's output by ~1e-5, below the parity tolerance, and a swapped negative/positive half would pass.
TEXT_GAIN = 8.0
# Tokens per prompt: short, so that the prompt (not the padding) makes most of what the UNet attends to.
MAX_LEN = 12
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _clip(cls, **overrides):
    import transformers

    cfg = CLIPTextConfig.tiny(**overrides)
    return parity.randomized(
        cls(transformers.CLIPTextConfig(**parity.kwargs(cfg, bos_token_id=0, pad_token_id=1)))
    )


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    cfg = AutoencoderKLConfig.tiny(use_quant_conv=True, use_post_quant_conv=True, shift_factor=None)
    return parity.randomized(AutoencoderKL(**parity.kwargs(cfg, scaling_factor=scaling_factor)), std=0.1)


def _unet(**overrides):
    from diffusers import UNet2DConditionModel

    ref = parity.randomized(UNet2DConditionModel(**parity.kwargs(UNet2DConditionConfig.tiny(**overrides))))
    with torch.no_grad():
        for m in ref.modules():  # norm scales near 1 (random ones make the tiny UNet's output explode)
            if isinstance(m, torch.nn.GroupNorm | torch.nn.LayerNorm):
                m.weight += 1.0
        for name, p in ref.named_parameters():  # strong text and SDXL size conditioning, so that they show
            if ".attn2." in name or name.startswith("add_embedding."):
                p.mul_(TEXT_GAIN)
    return ref


def tiny_sd_pipeline(*, v_prediction: bool = False, scheduler: str = "EulerDiscreteScheduler", seed: int = 0):
    """A diffusers StableDiffusionPipeline: SD 1.5-like, or SD 2.x-like (linear projections, heads per level,
    v-prediction) with `v_prediction`."""
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    unet = dict(cross_attention_dim=32, sample_size=16)
    if v_prediction:
        unet.update(attention_head_dim=(3, 5), block_out_channels=(24, 40), use_linear_projection=True)
    sched = getattr(diffusers, scheduler)(
        **SCHEDULER, prediction_type="v_prediction" if v_prediction else "epsilon",
        **({"timestep_spacing": "trailing"} if v_prediction else {"steps_offset": 1}),
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    return StableDiffusionPipeline(
        vae=_vae(0.18215).eval(),
        text_encoder=_clip(
            transformers.CLIPTextModel, hidden_act="gelu" if v_prediction else "quick_gelu"
        ).eval(),
        tokenizer=clip_tokenizer(tmp / "clip", WORDS, model_max_length=MAX_LEN),
        unet=_unet(**unet).eval(),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(*, seed: int = 0, force_zeros_for_empty_prompt: bool = True):
    """A diffusers StableDiffusionXLPipeline: two CLIP encoders (32 + 32 wide, the second with a 24-wide
    projection), a three-level UNet with text_time added embeddings."""
    import transformers
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    unet = _unet(
        sample_size=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 24, 40),
        attention_head_dim=(1, 3, 5), transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24 + 6 * 8,
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    tok = clip_tokenizer(tmp / "clip", WORDS, model_max_length=MAX_LEN)
    # SDXL's second tokenizer pads with "!" rather than the end-of-text token.
    tok_2 = CLIPTokenizer(
        str(tmp / "clip" / "vocab.json"),
        str(tmp / "clip" / "merges.txt"),
        pad_token="!",
        model_max_length=MAX_LEN,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(0.13025).eval(),
        text_encoder=_clip(transformers.CLIPTextModel, num_hidden_layers=3).eval(),
        text_encoder_2=_clip(
            transformers.CLIPTextModelWithProjection,
            hidden_act="gelu",
            projection_dim=24,
            num_hidden_layers=3,
        ).eval(),
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SCHEDULER, steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
