"""Flux2Transformer2DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset


@dataclass(frozen=True)
class Flux2Config:
    patch_size: int = 1
    in_channels: int = 128
    out_channels: int | None = None
    num_layers: int = 8
    num_single_layers: int = 48
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    joint_attention_dim: int = 15360
    timestep_guidance_channels: int = 256
    mlp_ratio: float = 3.0
    axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32)
    rope_theta: float = 2000.0
    eps: float = 1e-6
    guidance_embeds: bool = True

    # Named presets: the released transformer/config.json files, and a toy size for tests.
    @classmethod
    def dev(cls) -> Flux2Config:
        """FLUX.2-dev (32B; guidance-distilled; text width 3 x 5120 from Mistral-3's stacked layers)."""
        return cls()

    @classmethod
    def klein_4b(cls) -> Flux2Config:
        """FLUX.2-klein 4B (and its base): 5 + 20 blocks of width 3072, text 3 x 2560 (Qwen3-4B layers)."""
        return cls(
            num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
            guidance_embeds=False,
        )  # fmt: skip

    @classmethod
    def klein_9b(cls) -> Flux2Config:
        """FLUX.2-klein 9B (and its base): 8 + 24 blocks of width 4096, text 3 x 4096 (Qwen3-8B layers)."""
        return cls(
            num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
            guidance_embeds=False,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> Flux2Config:
        """A toy klein: 1 + 2 blocks, 3 heads of 16, rope axes (4, 4, 4, 4), 4 latent channels packed 2x2."""
        return preset(
            cls,
            dict(
                in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=3,
                joint_attention_dim=24, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
            ),
            overrides,
        )  # fmt: skip

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def output_channels(self) -> int:
        return self.patch_size * self.patch_size * (self.out_channels or self.in_channels)

    def validate(self) -> None:
        fix = "; fix the transformer's config.json"
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise InputError(
                f"FLUX.2 config: axes_dims_rope {self.axes_dims_rope} must be even and sum to "
                f"attention_head_dim {self.attention_head_dim}{fix}"
            )
        if len(self.axes_dims_rope) != 4:
            raise InputError(
                f"FLUX.2 config: axes_dims_rope {self.axes_dims_rope} has {len(self.axes_dims_rope)} axes; "
                f"FLUX.2's position ids have 4 (t, h, w, l){fix}"
            )
        if self.patch_size != 1:
            raise InputError(
                f"FLUX.2 config: patch_size {self.patch_size} not supported; the pipelines pack 2x2 patches "
                "before the transformer, which has patch_size 1"
            )
