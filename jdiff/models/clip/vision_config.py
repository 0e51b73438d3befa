"""The CLIP vision encoder config: field names are transformers' `CLIPVisionConfig` keys.

Defaults are transformers' `CLIPVisionConfig` defaults (ViT-B/32); Wan2.1 I2V ships an open-clip ViT-H/14
(hidden 1280, 32 layers, 16 heads, intermediate 5120, patch 14, image 224, exact "gelu") in its
`image_encoder/config.json`. Keys only used in training (dropouts, initialiser ranges) or by heads we do not
build (`projection_dim`) are ignored by `from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.models.clip.config import SUPPORTED_ACTS
from jdiff.weights.config import preset


@dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    # Named presets: the released image_encoder/config.json, and a toy size.
    @classmethod
    def vit_h_14(cls) -> CLIPVisionConfig:
        """open-clip ViT-H/14 as Wan2.1-I2V-14B ships it."""
        return cls(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
            hidden_act="gelu",
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> CLIPVisionConfig:
        """A toy ViT: 32x32 images in 8x8 patches, 3 layers, 4 heads of 8; `overrides` replace fields."""
        return preset(
            cls,
            dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                 num_attention_heads=4, hidden_act="gelu"),
            overrides,
        )  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        # A stride-`patch_size` convolution without padding drops a partial last row / column, as in torch.
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        """Raises InputError naming the first unsupported value."""
        if self.hidden_act not in SUPPORTED_ACTS:
            raise InputError(
                f"CLIP vision config: hidden_act {self.hidden_act!r} is not supported; expected one of "
                f"{list(SUPPORTED_ACTS)}"
            )
        sizes = (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_channels",
            "image_size",
            "patch_size",
        )
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"CLIP vision config: {name} should be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"CLIP vision config: hidden_size {self.hidden_size} does not split into "
                f"{self.num_attention_heads} attention heads; fix num_attention_heads"
            )
        if self.patch_size > self.image_size:
            raise InputError(
                f"CLIP vision config: patch_size {self.patch_size} is larger than image_size {self.image_size}, "
                "which leaves no patches; fix the image encoder's config.json"
            )
