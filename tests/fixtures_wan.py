"""Tiny diffusers Wan pipelines with random weights, built offline: T2V, two-expert A14B-style, TI2V and I2V."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from jdiff.models.t5.config import UMT5Config as Preset
from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan_vae.config import WanVAEConfig
from jdiff.tiny.tokenizers import t5_tokenizer
from tests.parity import kwargs

VOCAB = 400
WORDS = ("a", "cat", "dog", "running", "red", "blue", "in", "the", "snow")


def _stats(z: int) -> dict:
    g = torch.Generator().manual_seed(7)
    return {
        "latents_mean": (torch.randn(z, generator=g) * 0.1).tolist(),
        "latents_std": (torch.rand(z, generator=g) + 0.5).tolist(),
    }


def _transformer(in_channels: int, out_channels: int, **extra):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        **kwargs(
            WanTransformerConfig.tiny(
                text_dim=32, in_channels=in_channels, out_channels=out_channels, **extra
            )
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _vae(wan22: bool):
    from diffusers import AutoencoderKLWan

    # Wan2.1 layout with 16 latent channels, or the Wan2.2 layout (patchify, residual blocks, own decoder width).
    cfg = WanVAEConfig.tiny(z_dim=16)
    if wan22:
        cfg = WanVAEConfig.tiny(
            decoder_base_dim=12, is_residual=True, patch_size=2, in_channels=12, out_channels=12,
            scale_factor_spatial=16,
        )  # fmt: skip
    cfg = {k: v for k, v in kwargs(cfg).items() if k not in ("latents_mean", "latents_std")}
    vae = AutoencoderKLWan(**cfg, **_stats(cfg["z_dim"]))
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.normal_(0, 0.1)
            if "gamma" in name:
                p.add_(1.0)
    return vae.eval()


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(**kwargs(Preset.tiny(vocab_size=VOCAB, num_layers=2), decoder_start_token_id=0))
    return UMT5EncoderModel(cfg).eval()


def _scheduler(kind: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if kind == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        )
    return FlowMatchEulerDiscreteScheduler(shift=5.0)


def tiny_wan(kind: str, *, scheduler: str = "unipc", seed: int = 0):
    """kind: "t2v", "a14b" (two experts), "ti2v" (Wan2.2 VAE, expand_timesteps), "ti2v-i2v", "i2v" (Wan2.1
    with a CLIP image encoder)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    torch.manual_seed(seed)
    tok = t5_tokenizer(WORDS, model_max_length=512)
    common = dict(tokenizer=tok, text_encoder=_text_encoder(), scheduler=_scheduler(scheduler))
    if kind == "t2v":
        return WanPipeline(transformer=_transformer(16, 16), vae=_vae(False), **common)
    if kind == "a14b":
        return WanPipeline(
            transformer=_transformer(16, 16),
            transformer_2=_transformer(16, 16),
            boundary_ratio=0.875,
            vae=_vae(False),
            **common,
        )
    if kind == "ti2v":
        return WanPipeline(transformer=_transformer(4, 4), vae=_vae(True), expand_timesteps=True, **common)
    if kind == "ti2v-i2v":
        return WanImageToVideoPipeline(
            transformer=_transformer(4, 4),
            vae=_vae(True),
            expand_timesteps=True,
            image_encoder=None,
            image_processor=None,
            **common,
        )
    if kind == "i2v":
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=24,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
                projection_dim=24,
            )
        ).eval()
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        transformer = _transformer(36, 16, image_dim=24, added_kv_proj_dim=24)
        return WanImageToVideoPipeline(
            transformer=transformer,
            vae=_vae(False),
            image_encoder=vision,
            image_processor=processor,
            **common,
        )
    raise ValueError(kind)


def saved(pipe) -> Path:
    path = Path(tempfile.mkdtemp(prefix="tiny-wan-"))
    pipe.save_pretrained(path)
    return path
