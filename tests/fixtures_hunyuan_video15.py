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


def tiny_hunyuan_video15(*, seed: int = 0, guidance_scale: float = 6.0, shift: float = 5.0):
    """A diffusers HunyuanVideo15Pipeline: 2 dual-stream blocks of 3 heads x 16, a 4-channel 4x/4x VAE, a
    4-layer Qwen2.5-VL text model of width 72, a 2-layer byT5-shaped encoder of width 12."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, T5EncoderModel
    from transformers import Qwen2_5_VLTextConfig as TorchQwenConfig
    from transformers import Qwen2_5_VLTextModel as TorchQwen
    from transformers import T5Config as TorchT5Config

    from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config, HunyuanVideo15VAEConfig
    from jdiff.models.hunyuan_video15.text import Qwen2_5_VLTextConfig
    from jdiff.models.t5.config import T5Config

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        **parity.kwargs(HunyuanVideo15Config.tiny(text_embed_dim=72, target_size=64, task_type="t2v"))
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
    return HunyuanVideo15Pipeline(
        text_encoder=qwen,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        text_encoder_2=byt5,
        tokenizer_2=ByT5Tokenizer(),
        guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
    )


def saved(pipe, folder: Path | None = None) -> Path:
    folder = Path(tempfile.mkdtemp()) if folder is None else folder
    pipe.save_pretrained(folder)
    return folder
