"""Tiny diffusers Qwen-Image pipelines built offline: random Qwen2.5-VL, transformer and VAE; a deterministic
byte-level BPE Qwen2 tokenizer (no training) with Qwen's chat and vision special tokens; Qwen2.5-VL's
processor for the edit pipelines."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

VOCAB = 320  # 256 bytes + merges + specials fit below
SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)
WORDS = ("a", "red", "blue", "circle", "square", "on", "the", "image", "picture")


def qwen2_tokenizer(words=WORDS):
    """A `Qwen2TokenizerFast`: byte-level BPE over single bytes with merges spelling `words`, Qwen's specials."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    for w in words:
        left = w[0]
        for ch in w[1:]:
            if (left, ch) not in merges:
                merges.append((left, ch))
            vocab.setdefault(left + ch, len(vocab))
            left = left + ch
    tk = Tokenizer(BPE(vocab, merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tok = Qwen2TokenizerFast(
        tokenizer_object=tk,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIALS[1:]),
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    tok.model_max_length = 4096
    return tok


def tiny_qwen_vl():
    """A random Qwen2.5-VL: 2 text layers of width 32 (4 heads, 2 kv heads), a 2-block vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = qwen2_tokenizer()
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            rms_norm_eps=1e-6,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=24,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(cfg).eval(), tok


def tiny_processor(tok):
    """Qwen2.5-VL's processor with few pixels per image (56x56 .. 112x112: 4 to 16 vision tokens)."""
    from unittest import mock

    from transformers import ProcessorMixin, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    # Without torchvision transformers cannot resolve the video processor's class to check the (absent) one.
    with mock.patch.object(
        ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg)
    ):
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=None)
    processor.get_attributes = lambda: ["image_processor", "tokenizer"]  # nothing to save for the video one
    return processor


def tiny_qwen_image_pipeline(kind: str = "t2i", *, seed: int = 0, zero_cond_t: bool = False):
    """A diffusers QwenImagePipeline ("t2i"), QwenImageEditPipeline ("edit") or QwenImageEditPlusPipeline
    ("edit_plus") with tiny random components."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6), zero_cond_t=zero_cond_t,
    )  # fmt: skip
    with torch.no_grad():
        # O(1) QK-norm weights: sharp attention, so that a text token more or less (a wrong template cut) or a
        # wrong rotary position shows in the images, not only at 1e-6.
        for name, p in transformer.named_parameters():
            p.normal_(0, 2.0 if ".norm_" in name else 0.05)
        transformer.txt_norm.weight.normal_(1.0, 0.1)  # text features O(1): prompts (and CFG) move the output
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0],
    )  # fmt: skip
    text_encoder, tok = tiny_qwen_vl()
    # The released Qwen-Image scheduler config's keys (dynamic shift, exponential, shift_terminal).
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
        shift_terminal=0.02, use_dynamic_shifting=True, time_shift_type="exponential",
    )  # fmt: skip
    parts = dict(scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder, tokenizer=tok,
                 transformer=transformer.eval())  # fmt: skip
    if kind == "t2i":
        return QwenImagePipeline(**parts)
    cls = QwenImageEditPipeline if kind == "edit" else QwenImageEditPlusPipeline
    return cls(**parts, processor=tiny_processor(tok))


def saved(pipe, folder: Path | None = None) -> Path:
    folder = Path(tempfile.mkdtemp()) if folder is None else folder
    pipe.save_pretrained(folder)
    return folder
