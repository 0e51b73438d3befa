"""Config of diffusers' `AutoencoderKLWan` (the Wan2.1 and Wan2.2 video VAEs); fields are its config keys.

Wan2.1 (`Wan-AI/Wan2.1-*-Diffusers/vae`): base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2,
temperal_downsample [False, True, True]: 4x temporal, 8x8 spatial. Wan2.2 TI2V-5B adds a 2x2 patchify
(patch_size 2, in/out_channels 12 = 3 * 2 * 2), residual down/up blocks (is_residual), base_dim 160,
decoder_base_dim 256 and z_dim 48: 4x temporal, 16x16 spatial.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset

# diffusers' constructor defaults: the Wan2.1 latent statistics.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# diffusers encodes the first frame alone, then chunks of this many frames (hard-coded in `_encode`), so the
# network must halve time exactly twice.
FRAMES_PER_CHUNK = 4


@dataclass(frozen=True)
class WanVAEConfig:
    """diffusers `AutoencoderKLWan` config; defaults are diffusers' constructor defaults (the Wan2.1 VAE).

    `latents_mean` / `latents_std` do not change the network: the pipeline normalises latents with them, as
    diffusers' Wan pipelines do. `dropout` is inference-irrelevant. Released Wan2.2 configs also carry
    `clip_output: false`, a key diffusers 0.42 does not read (it always clamps decoded frames to [-1, 1]); it
    is ignored here too.
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] | None = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] | None = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    # Named presets: the released vae/config.json files, and a toy size.
    @classmethod
    def wan21(cls) -> WanVAEConfig:
        """The Wan2.1 VAE (also Wan2.2-A14B's): 16 latent channels, 4x temporal, 8x8 spatial."""
        return cls()

    @classmethod
    def wan22(cls) -> WanVAEConfig:
        """The Wan2.2-TI2V-5B VAE: 2x2 patchify, residual blocks, 48 latent channels, 16x16 spatial."""
        return cls(
            base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
            patch_size=2, scale_factor_spatial=16, latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> WanVAEConfig:
        """A toy Wan2.1 VAE: base_dim 8, 4 latent channels, the real temporal pattern, identity latent
        statistics (as many as z_dim); `overrides` replace fields."""
        z = overrides.get("z_dim", 4)
        return preset(
            cls,
            dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latents_mean=(0.0,) * z,
                 latents_std=(1.0,) * z),
            overrides,
        )  # fmt: skip

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def patch(self) -> int:
        """Pixels per side folded into channels before the encoder (1: no patchify)."""
        return self.patch_size or 1

    @property
    def spatial_factor(self) -> int:
        """Video pixels per latent pixel along each side."""
        return 2 ** (len(self.dim_mult) - 1) * self.patch

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first (latent frames t = 1 + (T - 1) / temporal_factor)."""
        return 2 ** sum(bool(d) for d in self.temperal_downsample)

    @property
    def video_in_channels(self) -> int:
        """Channels of the video given to `encode` (before the patchify)."""
        return self.in_channels // self.patch**2

    @property
    def video_out_channels(self) -> int:
        """Channels of the video `decode` returns (after the unpatchify)."""
        return self.out_channels // self.patch**2

    def validate(self) -> None:
        """Rejects values this implementation (or diffusers' frame chunking) cannot run.

        Raises:
            InputError: naming the key, the value got and what is expected.
        """
        levels = len(self.dim_mult)
        if levels < 1 or any(m < 1 for m in self.dim_mult):
            raise InputError(f"AutoencoderKLWan: dim_mult {self.dim_mult} must be one or more positive ints")
        for key in ("base_dim", "decoder_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            if getattr(self, key) < 1:
                raise InputError(f"AutoencoderKLWan: {key} must be >= 1, got {getattr(self, key)}")
        if len(self.temperal_downsample) != levels - 1:
            raise InputError(
                f"AutoencoderKLWan: temperal_downsample has {len(self.temperal_downsample)} entries for "
                f"{levels} dim_mult levels; expected one per downsampling level ({levels - 1})"
            )
        if self.temporal_factor != FRAMES_PER_CHUNK:
            raise InputError(
                f"AutoencoderKLWan: temperal_downsample {self.temperal_downsample} halves time "
                f"{sum(map(bool, self.temperal_downsample))} times; expected exactly 2 (4x), which the "
                f"first-frame-then-{FRAMES_PER_CHUNK}-frame chunking assumes"
            )
        if self.attn_scales:
            # diffusers' encoder passes its frame cache to the attention blocks these would add, which do not
            # take one: no AutoencoderKLWan with attention outside the mid-blocks runs (the released VAEs have
            # none).
            raise InputError(
                f"AutoencoderKLWan: attn_scales {self.attn_scales} not supported (diffusers cannot run them "
                f"either); expected [] as in the released Wan VAEs"
            )
        if self.patch_size is not None and self.patch_size < 1:
            raise InputError(f"AutoencoderKLWan: patch_size must be None or >= 1, got {self.patch_size}")
        for key in ("in_channels", "out_channels"):
            if getattr(self, key) % self.patch**2:
                raise InputError(
                    f"AutoencoderKLWan: {key}={getattr(self, key)} is not a multiple of patch_size**2="
                    f"{self.patch**2}; expected video channels * patch_size**2 (12 for Wan2.2)"
                )
        for key, want in (
            ("scale_factor_temporal", self.temporal_factor),
            ("scale_factor_spatial", self.spatial_factor),
        ):
            got = getattr(self, key)
            if got is not None and got != want:
                raise InputError(
                    f"AutoencoderKLWan: {key}={got} does not match the network, which compresses {want}x; "
                    f"set it to {want}"
                )
        if self.is_residual:
            self._validate_residual()
        for key in ("latents_mean", "latents_std"):
            stats = getattr(self, key)
            if stats is not None and len(stats) != self.z_dim:
                raise InputError(
                    f"AutoencoderKLWan: {key} has {len(stats)} entries; expected z_dim={self.z_dim}"
                )

    def _validate_residual(self) -> None:
        # The parameter-free shortcuts regroup channels: AvgDown3D averages groups of in * factor / out
        # channels, DupUp3D repeats each channel out * factor / in times; both must divide evenly.
        levels = len(self.dim_mult)
        enc = [self.base_dim * m for m in (1, *self.dim_mult)]
        for i in range(levels):
            last = i == levels - 1
            factor = (1 if last else 4) * (2 if not last and self.temperal_downsample[i] else 1)
            if enc[i] * factor % enc[i + 1]:
                raise InputError(
                    f"AutoencoderKLWan: encoder level {i} averages {enc[i]} channels x {factor} into "
                    f"{enc[i + 1]}, which does not divide; pick base_dim / dim_mult so that it does"
                )
        dec = [self.decoder_dim * m for m in (self.dim_mult[-1], *reversed(self.dim_mult))]
        up = tuple(reversed(self.temperal_downsample))
        for i in range(levels - 1):
            factor = 4 * (2 if up[i] else 1)
            if dec[i + 1] * factor % dec[i]:
                raise InputError(
                    f"AutoencoderKLWan: decoder level {i} repeats {dec[i]} channels into {dec[i + 1]} x "
                    f"{factor}, which does not divide; pick decoder_base_dim / dim_mult so that it does"
                )
