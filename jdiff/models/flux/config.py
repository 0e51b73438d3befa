"""FluxTransformer2DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset


@dataclass(frozen=True)
class FluxConfig:
    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    # Named presets: the released transformer/config.json files, and a toy size for tests and `--tiny`.
    @classmethod
    def dev(cls) -> FluxConfig:
        """FLUX.1-dev (guidance-distilled, 11.9B parameters)."""
        return cls(guidance_embeds=True)

    @classmethod
    def schnell(cls) -> FluxConfig:
        """FLUX.1-schnell (timestep-distilled, no guidance embedding)."""
        return cls(guidance_embeds=False)

    @classmethod
    def tiny(cls, **overrides) -> FluxConfig:
        """A toy FLUX.1-dev: 1 + 1 blocks, 2 heads of 16, rope axes (4, 6, 6); `overrides` replace fields."""
        return preset(
            cls,
            dict(
                num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
            ),
            overrides,
        )  # fmt: skip

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.patch_size * self.patch_size * (self.out_channels or self.in_channels)

    def validate(self) -> None:
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise InputError(
                f"FLUX config: axes_dims_rope {self.axes_dims_rope} must sum to attention_head_dim "
                f"{self.attention_head_dim}; fix the transformer's config.json"
            )
        if any(d % 2 for d in self.axes_dims_rope):
            raise InputError(f"FLUX config: axes_dims_rope {self.axes_dims_rope} must all be even")
