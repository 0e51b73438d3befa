"""diffusers' `AutoencoderKLWan`: the causal 3D video VAE of Wan2.1 (4x8x8, z 16) and Wan2.2 (4x16x16, z 48).

Axis letters: B batch, T video frames, H/W video height/width, Ci/Co video channels in/out, t latent frames
(1 + (T - 1) / 4), h/w latent height/width, Z latent channels, K frames of one chunk, P encoder input
channels (Ci * patch_size**2).

Memory: like diffusers, the encoder sees the first frame alone and then chunks of 4 frames, the decoder one
latent frame at a time, and every temporal layer carries a small cache between chunks (`blocks.py`). The
chunks after the first run inside one `jax.lax.scan` whose carry is that cache, so only one chunk's
activations are ever live: decoding 81 frames costs about the memory of decoding 5. The first chunk runs
before the scan because the temporal resamplers treat it differently (and it has another frame count).

Channels-last video at the API ([B, T, H, W, C]); pipelines transpose from and to diffusers' [B, C, T, H, W].
Latent normalisation (`latents_mean` / `latents_std`) is the pipeline's job, as in diffusers.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff.errors import InputError
from jdiff.layers import Conv
from jdiff.models.wan_vae.blocks import (
    CausalConv3d,
    MidBlock,
    Resample,
    ResidualBlock,
    ResidualDownBlock,
    ResidualUpBlock,
    RMSNorm,
    UpBlock,
    child,
    run_sequential,
)
from jdiff.models.wan_vae.config import FRAMES_PER_CHUNK, WanVAEConfig

# diffusers' DiagonalGaussianDistribution clamps the log-variance to this range before anything uses it.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class Encoder3d(nnx.Module):
    """diffusers `WanEncoder3d`: video chunk -> 2Z moments per latent frame."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        levels = len(cfg.dim_mult)
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], (3, 3, 3), rngs=rngs)
        blocks: list[nnx.Module] = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            last = i == levels - 1
            temporal = not last and bool(cfg.temperal_downsample[i])
            if cfg.is_residual:
                blocks.append(
                    ResidualDownBlock(
                        in_dim, out_dim, cfg.num_res_blocks, temporal=temporal, down=not last, rngs=rngs
                    )
                )
                continue
            # Wan2.1 keeps resnets and resamplers in one flat list (diffusers' indices). diffusers would also put
            # attention blocks there for `attn_scales`, which the config rejects (diffusers cannot run them).
            for j in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim if j == 0 else out_dim, out_dim, rngs=rngs))
            if not last:
                blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d", rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], rngs=rngs)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), rngs=rngs)

    def __call__(self, x: Float[Array, "b k h w p"], cache, *, first: bool):
        x, c_in = self.conv_in(x, child(cache, 0))
        x, c_down = run_sequential(self.down_blocks, x, child(cache, 1), first=first)
        x, c_mid = self.mid_block(x, child(cache, 2))
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), child(cache, 3))
        return x, (c_in, c_down, c_mid, c_out)


class Decoder3d(nnx.Module):
    """diffusers `WanDecoder3d`: latent chunk -> video chunk, widths reversed, one more resnet a level."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        levels = len(cfg.dim_mult)
        temperal_upsample = tuple(reversed(cfg.temperal_downsample))
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), rngs=rngs)
        self.mid_block = MidBlock(dims[0], rngs=rngs)
        blocks: list[nnx.Module] = []
        for i, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            up = i != levels - 1
            temporal = up and bool(temperal_upsample[i])
            if cfg.is_residual:
                blocks.append(
                    ResidualUpBlock(in_dim, out_dim, cfg.num_res_blocks, temporal=temporal, up=up, rngs=rngs)
                )
            else:
                # Wan2.1's upsamplers halve the width, so every level after the first starts at half.
                mode = ("upsample3d" if temporal else "upsample2d") if up else None
                blocks.append(
                    UpBlock(in_dim // 2 if i > 0 else in_dim, out_dim, cfg.num_res_blocks, mode, rngs=rngs)
                )
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, (3, 3, 3), rngs=rngs)

    def __call__(self, x: Float[Array, "b k h w z"], cache, *, first: bool):
        x, c_in = self.conv_in(x, child(cache, 0))
        x, c_mid = self.mid_block(x, child(cache, 1))
        x, c_up = run_sequential(self.up_blocks, x, child(cache, 2), first=first)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), child(cache, 3))
        return x, (c_in, c_mid, c_up, c_out)


def _chunked(module: nnx.Module, head: jax.Array, rest: jax.Array | None) -> jax.Array:
    """Runs `module` over the first chunk, then scans it over the others with the cache as the carry.

    Args:
        module: an `Encoder3d` or `Decoder3d`.
        head: the first chunk [B, K0, H, W, C].
        rest: the other chunks stacked on a leading axis [n, B, K, H, W, C], or None.

    Returns:
        The outputs of all chunks, concatenated along time.
    """
    y, cache = module(head, None, first=True)
    if rest is None:
        return y
    graphdef, state = nnx.split(module)

    def step(cache, chunk):
        out, cache = nnx.merge(graphdef, state)(chunk, cache, first=False)
        return cache, out

    _, ys = jax.lax.scan(step, cache, rest)  # [n, B, Ko, Ho, Wo, Co]
    n, b, k = ys.shape[:3]
    ys = jnp.moveaxis(ys, 0, 1).reshape(b, n * k, *ys.shape[3:])
    return jnp.concatenate([y, ys], axis=1)


def patchify(x: Float[Array, "b t h w c"], p: int) -> jax.Array:
    """diffusers `patchify`: [B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p], channel c*p*p + iw*p + ih."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: Float[Array, "b t h w c"], p: int) -> jax.Array:
    """diffusers `unpatchify`, the inverse of `patchify`."""
    if p == 1:
        return x
    b, t, h, w, cp = x.shape
    x = x.reshape(b, t, h, w, cp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cp // (p * p))


class AutoencoderKLWan(nnx.Module):
    """diffusers `AutoencoderKLWan`: encoder, decoder and the 1x1x1 quant / post-quant convs."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        z = cfg.z_dim
        self.encoder = Encoder3d(cfg, rngs=rngs)
        self.quant_conv = Conv(2 * z, 2 * z, (1, 1, 1), rngs=rngs)
        self.post_quant_conv = Conv(z, z, (1, 1, 1), rngs=rngs)
        self.decoder = Decoder3d(cfg, rngs=rngs)

    def encode(
        self, x: Float[Array, "b T H W ci"]
    ) -> tuple[Float[Array, "b t h w z"], Float[Array, "b t h w z"]]:
        """The moments of the latent distribution (diffusers `encode(x).latent_dist.mean` / `.logvar`).

        Args:
            x: video [B, T, H, W, Ci] in [-1, 1]. As in diffusers, only the first 1 + 4 * ((T - 1) // 4)
                frames are encoded (pipelines use T = 4k + 1). With residual blocks (Wan2.2), H and W must be
                multiples of `cfg.spatial_factor` (of `patch_size` with a patchify alone); otherwise the
                downsamplers floor odd sizes, as diffusers' do.

        Returns:
            (mean, logvar), each [B, 1 + (T - 1) // 4, H / f, W / f, Z] for f = `cfg.spatial_factor`;
            logvar is clamped to [-30, 20] as diffusers does.

        Raises:
            InputError: a video of the wrong rank, channel count or size.
        """
        cfg = self.cfg
        if x.ndim != 5 or x.shape[-1] != cfg.video_in_channels:
            raise InputError(
                f"AutoencoderKLWan.encode: expected a video [B, T, H, W, {cfg.video_in_channels}], "
                f"got shape {tuple(x.shape)}"
            )
        b, frames, h, w, _ = x.shape
        f = cfg.spatial_factor if cfg.is_residual else cfg.patch
        if h % f or w % f:
            raise InputError(
                f"AutoencoderKLWan.encode: height and width must be multiples of {f} for this VAE, "
                f"got {h}x{w}; resize or crop the video"
            )
        n = (frames - 1) // FRAMES_PER_CHUNK
        x = patchify(x[:, : 1 + FRAMES_PER_CHUNK * n], cfg.patch)
        rest = None
        if n:
            rest = x[:, 1:].reshape(b, n, FRAMES_PER_CHUNK, *x.shape[2:]).swapaxes(0, 1)
        moments = self.quant_conv(_chunked(self.encoder, x[:, :1], rest))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Float[Array, "b t h w z"]) -> Float[Array, "b T H W co"]:
        """Decodes (unnormalised) latents to video (diffusers `decode(z).sample`).

        Args:
            z: latents [B, t, h, w, Z] in the VAE's own scale, i.e. after the pipeline undid the
                `latents_mean` / `latents_std` normalisation.

        Returns:
            video [B, 1 + 4 * (t - 1), h * f, w * f, Co] (f = `cfg.spatial_factor`), clamped to [-1, 1]
            as diffusers does.

        Raises:
            InputError: latents of the wrong rank or channel count.
        """
        if z.ndim != 5 or z.shape[-1] != self.cfg.z_dim:
            raise InputError(
                f"AutoencoderKLWan.decode: expected latents [B, t, h, w, {self.cfg.z_dim}], "
                f"got shape {tuple(z.shape)}"
            )
        x = self.post_quant_conv(z)  # 1x1x1: no temporal context, so the whole video at once is the same
        rest = None if x.shape[1] == 1 else x[:, 1:, None].swapaxes(0, 1)  # [t-1, B, 1, h, w, Z]
        out = unpatchify(_chunked(self.decoder, x[:, :1], rest), self.cfg.patch)
        return jnp.clip(out, -1.0, 1.0)
