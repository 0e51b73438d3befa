"""The CLIP text encoder config: field names are transformers' `CLIPTextConfig` keys.

Defaults are transformers' `CLIPTextConfig` defaults (ViT-B/32 text tower); FLUX.1 ships the CLIP-L one
(hidden 768, 12 layers, 12 heads) in its `text_encoder/config.json`. Keys only used in training (dropouts,
initialiser ranges) are ignored by `from_dict`; `projection_dim` is read by `CLIPTextModelWithProjection` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset

SUPPORTED_ACTS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # 2 is the legacy value (configs written before transformers PR #24773): pooling then takes the
    # position of the largest token id instead of the first `eos_token_id`; see `CLIPTextTransformer`.
    eos_token_id: int = 49407
    # The width of `CLIPTextModelWithProjection`'s text_projection (CLIPTextModel has none).
    projection_dim: int = 512

    # Named presets: the released text_encoder/config.json files, and a toy size.
    @classmethod
    def large(cls) -> CLIPTextConfig:
        """CLIP ViT-L/14's text tower as FLUX.1 ships it (legacy eos_token_id 2: argmax pooling)."""
        return cls(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            eos_token_id=2,
            projection_dim=768,
        )

    @classmethod
    def openclip_h(cls) -> CLIPTextConfig:
        """OpenCLIP ViT-H/14's text tower as Stable Diffusion 2.x ships it (23 of its 24 layers, exact GELU)."""
        return cls(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
            eos_token_id=2, projection_dim=512,
        )  # fmt: skip

    @classmethod
    def bigg(cls) -> CLIPTextConfig:
        """OpenCLIP ViT-bigG/14's text tower with its projection, SDXL's `text_encoder_2`."""
        return cls(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
            eos_token_id=2, projection_dim=1280,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> CLIPTextConfig:
        """A toy text tower: vocabulary 1000, 2 layers, 4 heads of 8, legacy pooling; `overrides` replace
        fields."""
        return preset(
            cls,
            dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 eos_token_id=2),
            overrides,
        )  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raises InputError naming the first unsupported value."""
        if self.hidden_act not in SUPPORTED_ACTS:
            raise InputError(
                f"CLIP text config: hidden_act {self.hidden_act!r} is not supported; expected one of "
                f"{list(SUPPORTED_ACTS)}"
            )
        sizes = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "projection_dim",
        )
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"CLIP text config: {name} should be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"CLIP text config: hidden_size {self.hidden_size} does not split into "
                f"{self.num_attention_heads} attention heads; fix num_attention_heads"
            )
        if not isinstance(self.eos_token_id, int) or isinstance(self.eos_token_id, bool):
            raise InputError(
                f"CLIP text config: eos_token_id should be an integer (the pooled output is read at the end-of-"
                f"text token), got {self.eos_token_id!r}"
            )
