"""diffusers' `AutoencoderKLQwenImage`: the Wan2.1 causal video VAE network, fine-tuned for images.

Its state-dict layout and its math are those of `AutoencoderKLWan` with the Wan2.1 options (diffusers 0.42's
two files differ only in names, Wan2.2's extra options and a cache slice `x[:, :, -min(2, T):]` that equals
Wan's `x[:, :, -2:]`), so jdiff runs it with `jdiff.models.wan_vae`'s module; only its config keys differ
(`input_channels` for Wan's `in_channels` / `out_channels`). Images are one-frame videos: [B, 1, H, W, 3].

Latent normalisation is the pipeline's: z_normalised = (z - latents_mean) / latents_std per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from flax import nnx

from jdiff.models.wan_vae.config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAEConfig
from jdiff.models.wan_vae.vae import AutoencoderKLWan
from jdiff.weights.config import preset


@dataclass(frozen=True)
class QwenImageVAEConfig:
    """diffusers `AutoencoderKLQwenImage` config; defaults are diffusers' (the released Qwen-Image VAE, whose
    latent statistics are Wan2.1's)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    input_channels: int = 3
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    @classmethod
    def qwen_image(cls) -> QwenImageVAEConfig:
        """The Qwen-Image VAE (all Qwen-Image and Qwen-Image-Edit releases): z 16, 8x8 spatial."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> QwenImageVAEConfig:
        """A toy Qwen-Image VAE: base_dim 8, 4 latent channels, the real temporal pattern."""
        return preset(
            cls,
            dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latents_mean=(0.1, -0.2, 0.3, 0.0),
                 latents_std=(1.5, 0.5, 2.0, 1.0)),
            overrides,
        )  # fmt: skip

    def wan(self) -> WanVAEConfig:
        """The same network as an `AutoencoderKLWan` config."""
        return WanVAEConfig(
            base_dim=self.base_dim, z_dim=self.z_dim, dim_mult=self.dim_mult, num_res_blocks=self.num_res_blocks,
            attn_scales=self.attn_scales, temperal_downsample=self.temperal_downsample, dropout=self.dropout,
            latents_mean=self.latents_mean, latents_std=self.latents_std, in_channels=self.input_channels,
            out_channels=self.input_channels, scale_factor_spatial=None, scale_factor_temporal=None,
        )  # fmt: skip

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(self.temperal_downsample)

    def validate(self) -> None:
        self.wan().validate()  # one-line InputErrors naming the key (as AutoencoderKLWan's)


class AutoencoderKLQwenImage(AutoencoderKLWan):
    """`AutoencoderKLWan` built from a Qwen-Image VAE config (same parameters, same paths, same math)."""

    def __init__(self, cfg: QwenImageVAEConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg.wan(), rngs=rngs)
