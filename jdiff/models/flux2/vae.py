"""diffusers' `AutoencoderKLFlux2`: FLUX.1's VAE layout (jdiff.models.autoencoder_kl) with 32 latent channels,
an optional decoder width, and a parameter-free batch norm over 2x2-packed latents.

Axis letters: B batch, Hi/Wi image height/width, H/W latent height/width, Z latent channels, K = 4Z packed
channels, h/w = H/2, W/2 packed height/width.

The FLUX.2 pipelines do not use `scaling_factor` / `shift_factor`: they pack the VAE mean into 2x2 patches
(channel-major: k = 4 z + 2 row + column) and normalise each packed channel with the batch norm's running
statistics, (p - running_mean) / sqrt(running_var + eps); decoding inverts both. Those statistics are
checkpoint buffers (`bn.running_mean`, `bn.running_var`), kept in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.models.autoencoder_kl.vae import AutoencoderKL, Decoder
from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config


def patchify(z: Float[Array, "b hh ww z"]) -> Float[Array, "b h w k"]:
    """[B, H, W, Z] -> [B, H/2, W/2, 4Z], channel-major within a patch (diffusers' `_patchify_latents`)."""
    b, hh, ww, z_ = z.shape
    x = z.reshape(b, hh // 2, 2, ww // 2, 2, z_).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, hh // 2, ww // 2, 4 * z_)


def unpatchify(p: Float[Array, "b h w k"]) -> Float[Array, "b hh ww z"]:
    """The inverse of `patchify`."""
    b, h, w, k = p.shape
    x = p.reshape(b, h, w, k // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, 2 * h, 2 * w, k // 4)


class LatentBatchNorm(nnx.Module):
    """The running statistics of diffusers' `BatchNorm2d(affine=False)`, applied in float32 (eval mode)."""

    def __init__(self, channels: int, eps: float):
        self.eps = eps
        self.running_mean = nnx.Param(
            jnp.zeros((channels,), jnp.float32), out_sharding=(sh.NORM,), eager_sharding=False
        )
        self.running_var = nnx.Param(
            jnp.ones((channels,), jnp.float32), out_sharding=(sh.NORM,), eager_sharding=False
        )

    def _std(self) -> jax.Array:
        return jnp.sqrt(self.running_var[...].astype(jnp.float32) + self.eps)

    def normalize(self, p: jax.Array) -> jax.Array:
        return ((p.astype(jnp.float32) - self.running_mean[...].astype(jnp.float32)) / self._std()).astype(
            p.dtype
        )

    def denormalize(self, p: jax.Array) -> jax.Array:
        return (p.astype(jnp.float32) * self._std() + self.running_mean[...].astype(jnp.float32)).astype(
            p.dtype
        )


class AutoencoderKLFlux2(AutoencoderKL):
    """diffusers `AutoencoderKLFlux2`; `encode` / `decode` as AutoencoderKL's, plus the pipelines' packed
    normalised latents (`encode_packed`, `decode_packed`)."""

    def __init__(self, cfg: AutoencoderKLFlux2Config, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        if cfg.decoder_channels != tuple(cfg.block_out_channels):
            self.decoder = Decoder(
                dataclasses.replace(cfg, block_out_channels=cfg.decoder_channels), rngs=rngs
            )
        self.bn = LatentBatchNorm(4 * cfg.latent_channels, cfg.batch_norm_eps)

    def encode_packed(self, x: Float[Array, "b hi wi ci"]) -> Float[Array, "b h w k"]:
        """Images in [-1, 1] -> the pipelines' normalised packed latents (diffusers' `_encode_vae_image`: the
        posterior's mode, packed 2x2, batch-normalised)."""
        mean, _ = self.encode(x)
        return self.bn.normalize(patchify(mean))

    def decode_packed(self, p: Float[Array, "b h w k"]) -> Float[Array, "b hi wi co"]:
        """The inverse path of the pipelines: un-normalise, unpack 2x2, decode."""
        return self.decode(unpatchify(self.bn.denormalize(p)))
