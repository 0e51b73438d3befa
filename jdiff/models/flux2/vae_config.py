"""Config of diffusers' `AutoencoderKLFlux2`: AutoencoderKL's keys plus the latent batch norm and packing."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.models.autoencoder_kl.config import DOWN_BLOCK, UP_BLOCK, AutoencoderKLConfig
from jdiff.weights.config import preset


@dataclass(frozen=True)
class AutoencoderKLFlux2Config(AutoencoderKLConfig):
    """diffusers `AutoencoderKLFlux2` config; defaults are its constructor's (the released FLUX.2 VAE)."""

    down_block_types: tuple[str, ...] = (DOWN_BLOCK,) * 4
    up_block_types: tuple[str, ...] = (UP_BLOCK,) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 32
    sample_size: int | tuple[int, ...] = 1024
    decoder_block_out_channels: tuple[int, ...] | None = None
    batch_norm_eps: float = 1e-4
    batch_norm_momentum: float = 0.1
    patch_size: tuple[int, ...] = (2, 2)

    @classmethod
    def flux2(cls) -> AutoencoderKLFlux2Config:
        """The FLUX.2 VAE (dev and klein): 32 latent channels, 8x downsampling, quant convs, 128-wide BN."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> AutoencoderKLFlux2Config:
        """A toy FLUX.2 VAE: two levels of 8 and 16 channels, 4 latent channels (4x downsampling)."""
        return preset(
            cls,
            dict(
                down_block_types=(DOWN_BLOCK,) * 2, up_block_types=(UP_BLOCK,) * 2, block_out_channels=(8, 16),
                layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
            ),
            overrides,
        )  # fmt: skip

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        return tuple(self.decoder_block_out_channels or self.block_out_channels)

    def validate(self) -> None:
        super().validate()
        if tuple(self.patch_size) != (2, 2):
            raise InputError(
                f"AutoencoderKLFlux2: patch_size {self.patch_size} not supported; the FLUX.2 pipelines pack "
                "2x2 latent patches"
            )
        dec = self.decoder_channels
        if len(dec) != len(self.block_out_channels) or any(c % self.norm_num_groups for c in dec):
            raise InputError(
                f"AutoencoderKLFlux2: decoder_block_out_channels {dec} needs one entry per level "
                f"({len(self.block_out_channels)}), each a multiple of norm_num_groups={self.norm_num_groups}"
            )
