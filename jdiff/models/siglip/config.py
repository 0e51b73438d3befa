"""SiglipVisionConfig: transformers' `SiglipVisionConfig` keys (defaults: transformers' defaults, base/16-224)."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset


@dataclass(frozen=True)
class SiglipVisionConfig:
    """`vision_use_head` (the attention-pooling head) is read but not built: the DiT conditions on the patch
    tokens (`last_hidden_state`), so the head's weights are ignored by the plan."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True

    # Named presets: the released image_encoder/config.json, and a toy size.
    @classmethod
    def so400m_patch14_384(cls) -> SiglipVisionConfig:
        """google/siglip-so400m-patch14-384's vision tower (HunyuanVideo-1.5 I2V, Flux Redux): 729 tokens."""
        return cls(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
            patch_size=14,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> SiglipVisionConfig:
        """A toy tower: 28x28 images in 7x7 patches, 2 layers, 3 heads of 8; `overrides` replace fields."""
        return preset(
            cls,
            dict(image_size=28, patch_size=7, hidden_size=24, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=3),
            overrides,
        )  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        def bad(what: str) -> InputError:
            return InputError(f"SigLIP vision config: {what}; fix the image encoder's config.json")

        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_channels", "image_size", "patch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise bad(f"hidden_size {self.hidden_size} does not split into {self.num_attention_heads} heads")
        if self.hidden_act != "gelu_pytorch_tanh":
            raise bad(f"hidden_act {self.hidden_act!r} is not supported, expected 'gelu_pytorch_tanh'")
