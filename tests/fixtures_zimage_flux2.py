"""Tiny, complete Z-Image and FLUX.2 diffusers pipelines built offline (random weights; a byte-level Qwen2
tokenizer with the Qwen3 chat template's user/assistant part, built from a fixed vocabulary)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

# The part of Qwen3's chat template that user-only messages reach (system turns, tools and history elided).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


# A Mistral-style template over diffusers' FLUX.2-dev messages (content as a list of typed parts).
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + message['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + message['content'][0]['text'] + '[/INST]' }}"
    "{%- endif %}{%- endfor %}"
)
MISTRAL_SPECIAL = ("<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")


def byte_tokenizer(
    folder: Path, cls_name: str, specials, template: str, *, padding_side: str = "right", **tokens
):
    """A fast tokenizer over single bytes (no merges) with `specials` and a chat template, saved to `folder`
    (`tokens`: pad_token, eos_token, bos_token ... by content)."""
    import transformers
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    cls = getattr(transformers, cls_name)
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(BPE({c: i for i, c in enumerate(chars)}, [], fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    named = set(tokens.values())
    tok = cls(tokenizer_object=tk, additional_special_tokens=[t for t in specials if t not in named],
                                  padding_side=padding_side, **tokens)  # fmt: skip
    tok.chat_template = template
    tok.model_max_length = 512
    tok.save_pretrained(folder)
    return cls.from_pretrained(folder)


def qwen_tokenizer(folder: Path, padding_side: str = "right"):
    """Qwen's special tokens and the Qwen3 chat template's user/assistant part over single bytes."""
    return byte_tokenizer(folder, "Qwen2TokenizerFast", SPECIAL, QWEN3_CHAT_TEMPLATE, padding_side=padding_side,
                          pad_token="<|endoftext|>", eos_token="<|im_end|>")  # fmt: skip


def mistral_tokenizer(folder: Path):
    return byte_tokenizer(folder, "LlamaTokenizerFast", MISTRAL_SPECIAL, MISTRAL_CHAT_TEMPLATE, pad_token="<pad>", bos_token="<s>",
                          eos_token="</s>")  # fmt: skip


def _randomize(module, std: float = 0.05):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module.eval()


def tiny_qwen3(cls_name: str = "Qwen3Model", hidden: int = 32, layers: int = 3):
    import transformers

    from jdiff.models.qwen3.config import Qwen3Config
    from tests import parity

    cfg = Qwen3Config.tiny(hidden_size=hidden, num_hidden_layers=layers)
    return _randomize(getattr(transformers, cls_name)(transformers.Qwen3Config(**parity.kwargs(cfg))), 0.1)


def tiny_z_image_pipeline(seed: int = 0):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )

    from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
    from jdiff.models.z_image.config import ZImageConfig
    from tests import parity

    torch.manual_seed(seed)
    transformer = _randomize(
        ZImageTransformer2DModel(**parity.kwargs(ZImageConfig.tiny(cap_feat_dim=32))), 0.1
    )
    vae = AutoencoderKL(**parity.kwargs(AutoencoderKLConfig.tiny(sample_size=32))).eval()
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
        ),
        vae=vae,
        text_encoder=tiny_qwen3(),
        tokenizer=qwen_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer"),
        transformer=transformer,
    )


def tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2

    from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config
    from tests import parity

    keys = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast")
    kwargs = {k: v for k, v in parity.kwargs(AutoencoderKLFlux2Config.tiny()).items() if k not in keys}
    vae = _randomize(AutoencoderKLFlux2(**kwargs), 0.1)
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.3)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def tiny_flux2_klein_pipeline(*, is_distilled: bool = True, seed: int = 0):
    """A diffusers Flux2KleinPipeline with tiny random components: Qwen3 of 28 layers (klein reads 9, 18, 27)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    from jdiff.models.flux2.config import Flux2Config
    from tests import parity

    torch.manual_seed(seed)
    transformer = _randomize(
        Flux2Transformer2DModel(**parity.kwargs(Flux2Config.tiny(joint_attention_dim=48))), 0.1
    )
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=tiny_flux2_vae(),
        text_encoder=tiny_qwen3("Qwen3ForCausalLM", hidden=16, layers=28),
        tokenizer=qwen_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer"),
        transformer=transformer,
        is_distilled=is_distilled,
    )


def real_size_dir(tiny_dir: Path, dst: Path, builders: dict) -> Path:
    """`tiny_dir`'s model index, scheduler and tokenizer with header-only real-size components: `builders`
    maps a component to (build on meta, its config.json dict, file stem)."""
    import json
    import shutil

    from tests.utils import meta_state_shapes, write_sparse_safetensors

    dst.mkdir(parents=True)
    shutil.copy2(tiny_dir / "model_index.json", dst / "model_index.json")
    for name in ("scheduler", "tokenizer"):
        shutil.copytree(tiny_dir / name, dst / name)
    for name, (build, config, stem) in builders.items():
        (dst / name).mkdir()
        shapes = meta_state_shapes(lambda b=build: b().to(torch.bfloat16))
        shapes.pop("lm_head.weight", None)  # Qwen3-4B ties it to the embeddings: not saved
        write_sparse_safetensors(dst / name / f"{stem}.safetensors", shapes)
        (dst / name / "config.json").write_text(json.dumps(config))
    return dst


def tiny_flux2_pipeline(seed: int = 0):
    """A diffusers Flux2Pipeline (dev-like: guidance embedding) with tiny random components: a Mistral-3 of 31
    layers (FLUX.2-dev reads 10, 20, 30) with a one-layer Pixtral tower."""
    import transformers
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

    from jdiff.models.flux2.config import Flux2Config
    from jdiff.models.mistral3.config import Mistral3Config
    from tests import parity

    torch.manual_seed(seed)
    dit = Flux2Config.tiny(joint_attention_dim=48, guidance_embeds=True)
    transformer = _randomize(Flux2Transformer2DModel(**parity.kwargs(dit)), 0.1)
    vision = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                  image_size=28, patch_size=14)  # fmt: skip
    lm = Mistral3Config.tiny(hidden_size=16, num_hidden_layers=31, sliding_window=None)
    text_encoder = transformers.Mistral3ForConditionalGeneration(
        transformers.Mistral3Config(**parity.kwargs(lm, vision_config=vision))
    )
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=tiny_flux2_vae(),
        text_encoder=_randomize(text_encoder, 0.1),
        tokenizer=mistral_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer"),
        transformer=transformer,
    )
