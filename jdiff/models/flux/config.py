"""FluxTransformer2DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError


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
