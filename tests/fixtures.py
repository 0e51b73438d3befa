"""Tiny, complete diffusers-format model directories built offline (no hub): random weights, and tokenizers
constructed deterministically from fixed vocabularies (no training, so the files are reproducible)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.flux.config import FluxConfig
from jdiff.models.t5.config import T5Config
from jdiff.tiny.tokenizers import clip_tokenizer, t5_tokenizer
from tests.parity import kwargs

CLIP_VOCAB = 1000
T5_VOCAB = 1000
WORDS = ("a", "red", "blue", "circle", "square", "on", "background")


def tiny_flux_pipeline(*, guidance_embeds: bool = True, seed: int = 0):
    """A diffusers FluxPipeline with tiny random components (dev-like with guidance, schnell-like without)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig as TorchCLIPTextConfig
    from transformers import CLIPTextModel, T5EncoderModel
    from transformers import T5Config as TorchT5Config

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        **kwargs(
            FluxConfig.tiny(
                in_channels=16, num_layers=2, num_single_layers=2, pooled_projection_dim=32,
                guidance_embeds=guidance_embeds,
            )
        )
    )  # fmt: skip
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.05)
    # The legacy eos id of openai/clip-vit-large-patch14 (the preset's): pooled at argmax(input_ids), which is
    # the end-of-text token because it has the highest id in the vocabulary (here as there).
    clip_cfg = CLIPTextConfig.tiny(vocab_size=CLIP_VOCAB)
    clip = CLIPTextModel(
        TorchCLIPTextConfig(**kwargs(clip_cfg, projection_dim=32, bos_token_id=0, pad_token_id=1))
    )
    t5_cfg = T5Config.tiny(vocab_size=T5_VOCAB, num_layers=2, feed_forward_proj="gated-gelu")
    t5 = T5EncoderModel(TorchT5Config(**kwargs(t5_cfg, decoder_start_token_id=0)))
    vae = AutoencoderKL(**kwargs(AutoencoderKLConfig.tiny(sample_size=32)))
    scheduler = FlowMatchEulerDiscreteScheduler(
        **(
            dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
            if guidance_embeds
            else {}
        )
    )
    tmp = Path(tempfile.mkdtemp())
    return FluxPipeline(
        scheduler=scheduler,
        text_encoder=clip.eval(),
        tokenizer=clip_tokenizer(tmp / "clip", WORDS),
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tokenizer(WORDS),
        vae=vae.eval(),
        transformer=transformer.eval(),
    )
