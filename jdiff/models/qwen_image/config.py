"""QwenImageTransformer2DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset


@dataclass(frozen=True)
class QwenImageConfig:
    """diffusers `QwenImageTransformer2DModel` config; defaults are diffusers' (the 20B Qwen-Image).

    `zero_cond_t` (Qwen-Image-Edit-2511): the tokens of the conditioning images are modulated with the
    timestep-0 embedding, the noise tokens and the text with the step's. `guidance_embeds`,
    `use_additional_t_cond` and `use_layer3d_rope` (Qwen-Image-Layered) are refused: no released Qwen-Image /
    Edit checkpoint sets them, and diffusers' own guidance path cannot run.
    """

    patch_size: int = 2
    in_channels: int = 64
    out_channels: int | None = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    zero_cond_t: bool = False
    use_additional_t_cond: bool = False
    use_layer3d_rope: bool = False

    # Named presets: the released transformer/config.json files, and a toy size for tests.
    @classmethod
    def qwen_image(cls) -> QwenImageConfig:
        """Qwen-Image (and -2512, Edit, Edit-2509): 60 dual-stream blocks, 24 heads of 128, 20.4B parameters."""
        return cls()

    @classmethod
    def edit_2511(cls) -> QwenImageConfig:
        """Qwen-Image-Edit-2511: Qwen-Image's network with the conditioning images modulated at t = 0."""
        return cls(zero_cond_t=True)

    @classmethod
    def tiny(cls, **overrides) -> QwenImageConfig:
        """A toy Qwen-Image: 2 blocks, 3 heads of 16, rope axes (4, 6, 6); `overrides` replace fields."""
        return preset(
            cls,
            dict(in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
                 joint_attention_dim=24, axes_dims_rope=(4, 6, 6)),
            overrides,
        )  # fmt: skip

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.patch_size * self.patch_size * (self.out_channels or self.in_channels)

    def validate(self) -> None:
        name = "QwenImageTransformer2DModel config"
        if len(self.axes_dims_rope) != 3 or sum(self.axes_dims_rope) != self.attention_head_dim:
            raise InputError(
                f"{name}: axes_dims_rope {self.axes_dims_rope} must be 3 values summing to attention_head_dim "
                f"{self.attention_head_dim}; fix the transformer's config.json"
            )
        if any(d % 2 for d in self.axes_dims_rope):
            raise InputError(f"{name}: axes_dims_rope {self.axes_dims_rope} must all be even")
        for key in ("guidance_embeds", "use_additional_t_cond", "use_layer3d_rope"):
            if getattr(self, key):
                raise InputError(
                    f"{name}: {key}=true is not supported (Qwen-Image-Layered / guidance-distilled variants); "
                    "expected false as in Qwen-Image and Qwen-Image-Edit"
                )
