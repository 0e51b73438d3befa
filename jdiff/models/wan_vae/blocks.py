"""The building blocks of diffusers' `AutoencoderKLWan`: causal 3D convs, RMS norm, resamplers, res/attn blocks.

Axis letters: B batch, K frames of the chunk being processed, H/W height/width at the block's resolution,
C channels (Ci in, Co out), L = H*W tokens of one frame's attention, N heads (one), D head dim (= C),
Ko/Ho/Wo the sizes after a block's optional resampler.

Channels-last video [B, K, H, W, C] throughout. The network runs over a video chunk by chunk (see `vae.py`);
every temporal layer carries a *cache* between chunks, so each block is called as
`y, cache = block(x, cache, first=...)`:

  * a causal conv (temporal kernel 3) caches the last `CACHE_T` = 2 frames of its input. Starting from a cache
    of zeros, prepending the cache to each chunk is exactly the causal zero padding of the whole video, which is
    what diffusers' `feat_cache` bookkeeping (one or two cached frames, "Rep" markers) amounts to;
  * `first=True` marks the first chunk, where diffusers' temporal resamplers differ: the time upsampler does not
    double the first frame, the time downsampler passes it through, and DupUp3D drops its leading copies.

Caches are pytrees of arrays (None where a block has no state), so the whole decoder state is a `lax.scan`
carry. `cache=None` means "all zeros" (the first chunk). Attribute names are diffusers' module names.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.layers import Conv, dot_product_attention

CACHE_T = 2
Cache = Any  # a pytree of arrays; None for stateless blocks


def child(cache: Cache, i: int) -> Cache:
    """The i-th sub-cache, or None (all zeros) before the first chunk."""
    return None if cache is None else cache[i]


class RMSNorm(nnx.Module):
    """diffusers `WanRMS_norm`: x / max(||x||_2, 1e-12) over channels, times sqrt(C) and a per-channel gamma.

    `gamma` keeps the reference's channel-first shape ([C, 1, 1, 1] for video, [C, 1, 1] for the attention's
    images), so the checkpoint tensor loads unchanged; it is flattened when applied to channels-last input.
    Computed in float32 (diffusers upcasts half precision too).
    """

    def __init__(self, dim: int, *, images: bool = False):
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim**0.5
        self.gamma = nnx.Param(
            jnp.ones(shape, jnp.float32),
            out_sharding=(sh.NORM,) + (None,) * (len(shape) - 1),
            eager_sharding=False,
        )

    def __call__(self, x: Float[Array, "... c"]) -> Float[Array, "... c"]:
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].reshape(-1).astype(jnp.float32)
        return y.astype(x.dtype)


class CausalConv3d(Conv):
    """diffusers `WanCausalConv3d` with a temporal kernel of 3: zero padding symmetric in space, and in time
    the 2 frames before the chunk (the cache; zeros before the video's first frame) and none after.

    diffusers' other causal convs (1x1x1 shortcuts and quant convs, the stride-2 time conv of the temporal
    downsampler, which pads nothing) need no cache and are plain `Conv`s here.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: tuple[int, int, int], *, rngs: nnx.Rngs):
        # The temporal kernel is always 3 = CACHE_T + 1: the cache is exactly the causal padding.
        _, kh, kw = kernel_size
        super().__init__(in_dim, out_dim, kernel_size, padding=(0, kh // 2, kw // 2), rngs=rngs)

    def __call__(
        self, x: Float[Array, "b k h w ci"], cache: Float[Array, "b 2 h w ci"] | None
    ) -> tuple[Float[Array, "b k h w co"], Float[Array, "b 2 h w ci"]]:
        if cache is None:
            cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
        x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        return super().__call__(x), x[:, -CACHE_T:]


def _per_frame(fn, x: jax.Array) -> jax.Array:
    """Applies a 2D op to every frame of [B, K, H, W, C]."""
    b, k = x.shape[:2]
    y = fn(x.reshape(b * k, *x.shape[2:]))
    return y.reshape(b, k, *y.shape[1:])


def avg_down(x: Float[Array, "b k h w ci"], out_dim: int, factor_t: int, factor_s: int) -> jax.Array:
    """diffusers `AvgDown3D`: fold (factor_t, factor_s, factor_s) blocks into channels, then average groups.

    The folded channel index is c * factor + (it * fs + ih) * fs + iw, as in diffusers' view/permute; time is
    first front-padded with zeros to a multiple of factor_t (the first chunk's lone frame is averaged with a
    zero frame).
    """
    b, k, h, w, c = x.shape
    ft, fs = factor_t, factor_s
    pad = (ft - k % ft) % ft
    x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
    k = (k + pad) // ft
    x = x.reshape(b, k, ft, h // fs, fs, w // fs, fs, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, k, h // fs, w // fs, out_dim, -1)
    return x.mean(-1)


def dup_up(
    x: Float[Array, "b k h w ci"], out_dim: int, factor_t: int, factor_s: int, *, first: bool
) -> jax.Array:
    """diffusers `DupUp3D`: repeat channels, then unfold them into (factor_t, factor_s, factor_s) blocks.

    On the first chunk the first factor_t - 1 frames are dropped (the first frame is not upsampled in time).
    """
    b, k, h, w, c = x.shape
    ft, fs = factor_t, factor_s
    x = jnp.repeat(x, out_dim * ft * fs * fs // c, axis=-1)
    x = x.reshape(b, k, h, w, out_dim, ft, fs, fs).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, k * ft, h * fs, w * fs, out_dim)
    return x[:, ft - 1 :] if first else x


class Resample(nnx.Module):
    """diffusers `WanResample`: 2x spatial up/down per frame, optionally 2x in time ("3d" modes).

    `resample` keeps diffusers' `nn.Sequential` indices: 0 is the parameter-free nearest upsample / zero pad,
    1 the 2D conv.
    """

    def __init__(self, dim: int, mode: str, *, out_dim: int | None = None, rngs: nnx.Rngs):
        self.mode = mode
        if mode.startswith("upsample"):
            conv = Conv(dim, dim // 2 if out_dim is None else out_dim, (3, 3), padding=1, rngs=rngs)
        else:
            conv = Conv(dim, dim, (3, 3), strides=2, padding=0, rngs=rngs)
        self.resample = nnx.List([None, conv])
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), rngs=rngs)
        elif mode == "downsample3d":
            self.time_conv = Conv(dim, dim, (3, 1, 1), strides=(2, 1, 1), rngs=rngs)
        else:
            self.time_conv = None

    def __call__(self, x: Float[Array, "b k h w c"], cache, *, first: bool) -> tuple[jax.Array, Cache]:
        if self.mode == "upsample3d":
            b, k, h, w, c = x.shape
            if first:
                # diffusers marks the cache "Rep" and skips the time conv: the first frame is not doubled, and
                # the time conv later runs causally over frames 1.. only, from zeros.
                cache = jnp.zeros((b, CACHE_T, h, w, c), x.dtype)
            else:
                x, cache = self.time_conv(x, cache)  # [B, K, H, W, 2C]
                # Channels [0, C) are the first of each pair of output frames, [C, 2C) the second.
                x = x.reshape(b, k, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * k, h, w, c)
        if self.mode.startswith("upsample"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact at 2x is a repeat
            return _per_frame(self.resample[1], x), cache
        # nn.ZeroPad2d((0, 1, 0, 1)): one column right, one row bottom, before a padding-0 stride-2 conv.
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
        x = _per_frame(self.resample[1], x)
        if self.mode != "downsample3d":
            return x, None
        last = x[:, -1:]
        if not first:
            # A stride-2 valid conv over [previous chunk's last frame, this chunk]; the first frame passes.
            x = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
        return x, last


class ResidualBlock(nnx.Module):
    """diffusers `WanResidualBlock`: (RMS norm, SiLU, causal conv) twice plus a 1x1x1-conv shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, (3, 3, 3), rngs=rngs)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, (3, 3, 3), rngs=rngs)
        self.conv_shortcut = Conv(in_dim, out_dim, (1, 1, 1), rngs=rngs) if in_dim != out_dim else None

    def __call__(self, x: Float[Array, "b k h w ci"], cache, *, first: bool = False):
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        y, c1 = self.conv1(jax.nn.silu(self.norm1(x)), child(cache, 0))
        y, c2 = self.conv2(jax.nn.silu(self.norm2(y)), child(cache, 1))
        return y + h, (c1, c2)


class AttentionBlock(nnx.Module):
    """diffusers `WanAttentionBlock`: single-head self-attention over the pixels of each frame separately."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = Conv(dim, 3 * dim, (1, 1), rngs=rngs)
        self.proj = Conv(dim, dim, (1, 1), rngs=rngs)

    def __call__(self, x: Float[Array, "b k h w c"], cache=None, *, first: bool = False):
        b, k, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * k, h * w, 1, 3 * c)  # [B*K, L, N, 3D]
        q, kk, v = jnp.split(qkv, 3, axis=-1)
        o = dot_product_attention(q, kk, v).reshape(b, k, h, w, c)  # head dim c > 256: XLA's path
        return x + self.proj(o), None


class MidBlock(nnx.Module):
    """diffusers `WanMidBlock(num_layers=1)`: resnet, attention, resnet at constant width."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])
        self.resnets = nnx.List([ResidualBlock(dim, dim, rngs=rngs) for _ in range(2)])

    def __call__(self, x: Float[Array, "b k h w c"], cache, *, first: bool = False):
        x, c0 = self.resnets[0](x, child(cache, 0))
        x, _ = self.attentions[0](x)
        x, c1 = self.resnets[1](x, child(cache, 1))
        return x, (c0, c1)


def run_sequential(layers, x: jax.Array, cache, *, first: bool) -> tuple[jax.Array, tuple]:
    """Runs `layers` in order, threading each one's cache."""
    caches = []
    for i, layer in enumerate(layers):
        x, c = layer(x, child(cache, i), first=first)
        caches.append(c)
    return x, tuple(caches)


class ResidualDownBlock(nnx.Module):
    """diffusers `WanResidualDownBlock` (Wan2.2): resnets and a resampler, plus an AvgDown3D shortcut."""

    def __init__(
        self, in_dim: int, out_dim: int, num_res_blocks: int, *, temporal: bool, down: bool, rngs: nnx.Rngs
    ):
        self.resnets = nnx.List(
            [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, rngs=rngs) for i in range(num_res_blocks)]
        )
        mode = "downsample3d" if temporal else "downsample2d"
        self.downsampler = Resample(out_dim, mode, rngs=rngs) if down else None
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1
        self.factor_s = 2 if down else 1

    def __call__(self, x: Float[Array, "b k h w ci"], cache, *, first: bool):
        shortcut = avg_down(x, self.out_dim, self.factor_t, self.factor_s)
        y, c_res = run_sequential(self.resnets, x, child(cache, 0), first=first)
        c_down = None
        if self.downsampler is not None:
            y, c_down = self.downsampler(y, child(cache, 1), first=first)
        return y + shortcut, (c_res, c_down)


class UpBlock(nnx.Module):
    """diffusers `WanUpBlock` (Wan2.1): num_res_blocks + 1 resnets, then an optional resampler (halving C)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, mode: str | None, *, rngs: nnx.Rngs):
        self.resnets = nnx.List(
            [
                ResidualBlock(in_dim if i == 0 else out_dim, out_dim, rngs=rngs)
                for i in range(num_res_blocks + 1)
            ]
        )
        self.upsamplers = nnx.List([Resample(out_dim, mode, rngs=rngs)]) if mode is not None else None

    def __call__(self, x: Float[Array, "b k h w ci"], cache, *, first: bool):
        x, c_res = run_sequential(self.resnets, x, child(cache, 0), first=first)
        c_up = None
        if self.upsamplers is not None:
            x, c_up = self.upsamplers[0](x, child(cache, 1), first=first)
        return x, (c_res, c_up)


class ResidualUpBlock(nnx.Module):
    """diffusers `WanResidualUpBlock` (Wan2.2): resnets and a resampler, plus a DupUp3D shortcut."""

    def __init__(
        self, in_dim: int, out_dim: int, num_res_blocks: int, *, temporal: bool, up: bool, rngs: nnx.Rngs
    ):
        self.resnets = nnx.List(
            [
                ResidualBlock(in_dim if i == 0 else out_dim, out_dim, rngs=rngs)
                for i in range(num_res_blocks + 1)
            ]
        )
        mode = "upsample3d" if temporal else "upsample2d"
        self.upsampler = Resample(out_dim, mode, out_dim=out_dim, rngs=rngs) if up else None
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1

    def __call__(self, x: Float[Array, "b k h w ci"], cache, *, first: bool):
        y, c_res = run_sequential(self.resnets, x, child(cache, 0), first=first)
        if self.upsampler is None:
            return y, (c_res, None)
        y, c_up = self.upsampler(y, child(cache, 1), first=first)
        return y + dup_up(x, self.out_dim, self.factor_t, 2, first=first), (c_res, c_up)
