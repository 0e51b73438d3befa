"""Tiny, complete diffusers-format model directories built offline (no hub): random weights, and tokenizers
constructed deterministically from fixed vocabularies (no training, so the files are reproducible)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from jdiff.tiny.tokenizers import clip_tokenizer, t5_tokenizer

CLIP_VOCAB = 1000
T5_VOCAB = 1000
WORDS = ("a", "red", "blue", "circle", "square", "on", "background")


def tiny_flux_pipeline(*, guidance_embeds: bool = True, seed: int = 0):
    """A diffusers FluxPipeline with tiny random components (dev-like with guidance, schnell-like without)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[4, 6, 6],
    )
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.05)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            # The legacy eos id of openai/clip-vit-large-patch14: pooled at argmax(input_ids), which is the
            # end-of-text token because it has the highest id in the vocabulary (here as there).
            eos_token_id=2,
            bos_token_id=0,
            pad_token_id=1,
            hidden_act="quick_gelu",
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=T5_VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        sample_size=32,
    )
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
