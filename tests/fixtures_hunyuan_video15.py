"""Tiny, complete diffusers HunyuanVideo-1.5 pipelines built offline: random transformer, VAE, Qwen2.5-VL text
model and byT5 encoder; a byte-level Qwen2 tokenizer with a Qwen2.5-VL-style chat template (system, user and
assistant turns) and a byT5 tokenizer (bytes, no vocabulary file)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tests import parity
from tests.fixtures_zimage_flux2 import SPECIAL, byte_tokenizer

# Qwen2.5-VL's chat template for string contents (the image / video parts elided).
QWEN25_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message.role != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TEXT_VOCAB = 300  # 256 bytes + the specials
F = 9  # video frames of the parity tests: 3 latent frames


def tiny_hunyuan_video15(
    kind: str = "t2v",
    *,
    seed: int = 0,
    guidance_scale: float = 6.0,
    shift: float = 5.0,
    meanflow: bool = False,
):
    """A diffusers HunyuanVideo15Pipeline ("t2v") or HunyuanVideo15ImageToVideoPipeline ("i2v"): 2 dual-stream
    blocks of 3 heads x 16, a 4-channel 4x/4x VAE, a 4-layer Qwen2.5-VL text model of width 72, a 2-layer
    byT5-shaped encoder of width 12; I2V adds a 2-layer SigLIP tower on 28 x 28 images (16 tokens of 24)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, SiglipImageProcessor, SiglipVisionModel, T5EncoderModel
    from transformers import Qwen2_5_VLTextConfig as TorchQwenConfig
    from transformers import Qwen2_5_VLTextModel as TorchQwen
    from transformers import SiglipVisionConfig as TorchSiglipConfig
    from transformers import T5Config as TorchT5Config

    from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config, HunyuanVideo15VAEConfig
    from jdiff.models.hunyuan_video15.text import Qwen2_5_VLTextConfig
    from jdiff.models.siglip.config import SiglipVisionConfig
    from jdiff.models.t5.config import T5Config

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        **parity.kwargs(
            HunyuanVideo15Config.tiny(
                text_embed_dim=72, image_embed_dim=24, target_size=64, task_type=kind, use_meanflow=meanflow
            )
        )
    )
    transformer = parity.randomized(transformer, norms_near_one=True).eval()
    with torch.no_grad():  # sharper attention: the text and glyph tokens move the video measurably
        for name, p in transformer.named_parameters():
            if "norm_q" in name or "norm_k" in name or "norm_added" in name:
                p.mul_(3.0)
    vae = parity.randomized(
        AutoencoderKLHunyuanVideo15(**parity.kwargs(HunyuanVideo15VAEConfig.tiny())), 0.1
    ).eval()
    qwen = TorchQwen(TorchQwenConfig(**parity.kwargs(Qwen2_5_VLTextConfig.tiny(vocab_size=TEXT_VOCAB))))
    qwen = parity.randomized(qwen, 0.1, norms_near_one=True).eval()
    with torch.no_grad():
        qwen.embed_tokens.weight.mul_(10.0)  # O(1) token features: the prompt's words show in the output
    t5_cfg = T5Config.tiny(
        d_model=12, num_heads=3, d_kv=8, d_ff=29, num_layers=2, vocab_size=384, feed_forward_proj="gated-gelu"
    )
    byt5 = parity.randomized(T5EncoderModel(TorchT5Config(**parity.kwargs(t5_cfg))), 0.2).eval()
    folder = Path(tempfile.mkdtemp())
    tokenizer = byte_tokenizer(
        folder / "qwen", "Qwen2TokenizerFast", SPECIAL, QWEN25_VL_CHAT_TEMPLATE,
        pad_token="<|endoftext|>", eos_token="<|im_end|>",
    )  # fmt: skip
    tokenizer.model_max_length = 4096
    parts = dict(
        text_encoder=qwen,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        text_encoder_2=byt5,
        tokenizer_2=ByT5Tokenizer(),
        guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
    )
    if kind == "t2v":
        return HunyuanVideo15Pipeline(**parts)
    siglip = SiglipVisionModel(TorchSiglipConfig(**parity.kwargs(SiglipVisionConfig.tiny())))
    return HunyuanVideo15ImageToVideoPipeline(
        **parts,
        image_encoder=parity.randomized(siglip, 0.1, norms_near_one=True).eval(),
        feature_extractor=SiglipImageProcessor(size={"height": 28, "width": 28}),
    )


def saved(pipe, folder: Path | None = None) -> Path:
    folder = Path(tempfile.mkdtemp()) if folder is None else folder
    pipe.save_pretrained(folder)
    return folder


def reference(pipe, prompt, latents, **kw):
    """(final latents [B, C, F, h, w], frames [B, NF, H, W, 3]) of diffusers, each video decoded alone
    (diffusers' VAE cannot decode a batch of 2)."""
    final = pipe(prompt=prompt, latents=latents, output_type="latent", num_frames=F, **kw).frames
    with torch.no_grad():
        frames = [pipe.vae.decode(z[None] / pipe.vae.config.scaling_factor).sample for z in final]
    video = torch.cat(frames).permute(0, 2, 3, 4, 1)
    return final.numpy(), (video * 0.5 + 0.5).clamp(0, 1).numpy()
