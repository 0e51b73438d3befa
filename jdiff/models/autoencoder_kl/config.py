"""Config of diffusers' `AutoencoderKL` (the SD / SDXL / FLUX.1 image VAE); fields are its config keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset

DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
# diffusers' get_activation lower-cases the name; "swish" and "silu" are both nn.SiLU.
ACTIVATIONS = ("silu", "swish")


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """diffusers `AutoencoderKL` config; defaults are diffusers' constructor defaults.

    `scaling_factor`, `shift_factor`, `latents_mean`/`latents_std`, `force_upcast` and `sample_size` do not
    change the network: they are read by pipelines (latent normalisation, dtype policy, tiling).
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,)
    up_block_types: tuple[str, ...] = (UP_BLOCK,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    # Named presets: the released vae/config.json files, and a toy size.
    @classmethod
    def flux(cls) -> AutoencoderKLConfig:
        """FLUX.1's VAE: 16 latent channels, 8x downsampling, latent scale and shift."""
        return cls(
            down_block_types=(DOWN_BLOCK,) * 4, up_block_types=(UP_BLOCK,) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, sample_size=1024,
            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        )  # fmt: skip

    @classmethod
    def sd15(cls) -> AutoencoderKLConfig:
        """Stable Diffusion 1.x / 2.x's VAE: 4 latent channels, 8x downsampling, scaling factor 0.18215."""
        return cls(
            down_block_types=(DOWN_BLOCK,) * 4, up_block_types=(UP_BLOCK,) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        )  # fmt: skip

    @classmethod
    def sdxl(cls) -> AutoencoderKLConfig:
        """SDXL's VAE: SD's layout, retrained, scaling factor 0.13025, 1024px."""
        return dataclasses.replace(cls.sd15(), sample_size=1024, scaling_factor=0.13025)

    @classmethod
    def tiny(cls, **overrides) -> AutoencoderKLConfig:
        """A toy FLUX VAE: two levels of 8 and 16 channels, 4 latent channels (4x downsampling); `overrides`
        replace fields."""
        return preset(
            cls,
            dict(
                down_block_types=(DOWN_BLOCK,) * 2, up_block_types=(UP_BLOCK,) * 2, block_out_channels=(8, 16),
                latent_channels=4, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False,
            ),
            overrides,
        )  # fmt: skip

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along each side (every block but the last halves the resolution)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        """Rejects values this implementation does not model.

        Raises:
            InputError: naming the key, the value got and what is supported.
        """
        fix = "; this AutoencoderKL supports the SD / SDXL / FLUX.1 VAE layout"
        levels = len(self.block_out_channels)
        if levels < 1:
            raise InputError(f"AutoencoderKL: block_out_channels is empty; expected one entry per level{fix}")
        bad = sorted({t for t in self.down_block_types if t != DOWN_BLOCK})
        if bad:
            raise InputError(
                f"AutoencoderKL: down_block_types {bad} not supported; expected {DOWN_BLOCK!r}{fix}"
            )
        bad = sorted({t for t in self.up_block_types if t != UP_BLOCK})
        if bad:
            raise InputError(f"AutoencoderKL: up_block_types {bad} not supported; expected {UP_BLOCK!r}{fix}")
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise InputError(
                f"AutoencoderKL: {len(self.down_block_types)} down and {len(self.up_block_types)} up block "
                f"types for {levels} block_out_channels; expected one of each per level"
            )
        if str(self.act_fn).lower() not in ACTIVATIONS:
            raise InputError(
                f"AutoencoderKL: act_fn {self.act_fn!r} not supported; expected one of {ACTIVATIONS}"
            )
        if self.layers_per_block < 1:
            raise InputError(f"AutoencoderKL: layers_per_block must be >= 1, got {self.layers_per_block}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise InputError(
                f"AutoencoderKL: block_out_channels {bad} do not split into norm_num_groups="
                f"{self.norm_num_groups} groups; expected multiples of it"
            )
        for key in ("latents_mean", "latents_std"):
            stats = getattr(self, key)
            if stats is not None and len(stats) != self.latent_channels:
                raise InputError(
                    f"AutoencoderKL: {key} has {len(stats)} entries; expected latent_channels="
                    f"{self.latent_channels}"
                )
