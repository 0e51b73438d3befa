"""The HunyuanVideo-1.5 video VAE (diffusers `AutoencoderKLHunyuanVideo15`): 16x spatial, 4x temporal, 32 channels.

Axis letters: B batch, T frames, H W height / width at a block's resolution, C channels (Ci in, Co out),
L = T*H*W tokens of the mid-block attention, Z latent channels, P packed (folded) channels.

Channels-last video [B, T, H, W, C] throughout; attribute names are diffusers' module names, so the default
conversion rules map the convs (plus `gamma` for the RMS norms, kept in their [C, 1, 1, 1] reference shape).

What differs from the Wan VAE (jdiff.models.wan_vae), whose RMS norm this reuses:
  * causal convs pad with *replicated* edges (the first frame twice in time, edge pixels in space), not zeros;
  * resamplers fold 2x2(x2) pixel blocks into channels (DC-AE style) with an averaged / repeated channel
    shortcut; the first frame is folded in space only, so T = 1 + 4k frames map to 1 + k latent frames;
  * the mid-block attention is causal over frames: every token sees all tokens of its own and earlier frames;
  * encoder and decoder add channel-averaged / channel-repeated shortcuts around their ends.

Frame chunks, as the Wan VAE (each chunk one jitted step of a `lax.scan`): the encoder takes the first frame,
then 4 frames at a time; the decoder one latent frame at a time. Every module is called as
`y, cache = module(x, cache, first=...)`; the cache is exact, not an approximation:
  * a causal conv keeps the last 2 frames of its padded input (before the video: the first frame, twice);
  * the resamplers' first-frame path is the first chunk's (`first=True`), the paired path every other's;
  * the mid-block attention keeps the keys and values of every frame so far in a buffer of all `total` frames
    (latent resolution, one frame per chunk) and masks the frames not reached yet.
`cache=None` means the first chunk. Outputs match diffusers' whole-video forward.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff.errors import InputError
from jdiff.layers import Conv, dot_product_attention
from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
from jdiff.models.hunyuan_video15.tiling import VAETiling, tiled
from jdiff.models.wan_vae.blocks import RMSNorm, child

Cache = Any  # a pytree of arrays; None on the first chunk

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp


class CausalConv3d(nnx.Module):
    """diffusers `HunyuanVideo15CausalConv3d` (kernel 3): replicate-pad 2 frames before and 1 pixel around."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.conv = Conv(in_dim, out_dim, (3, 3, 3), rngs=rngs)

    def __call__(self, x: Float[Array, "b t h w ci"], cache: Cache) -> tuple[jax.Array, jax.Array]:
        if cache is None:
            cache = jnp.repeat(x[:, :1], 2, axis=1)
        x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        return self.conv(jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")), x[:, -2:]


def _pointwise(conv: Conv, x: jax.Array) -> jax.Array:
    """A 1x1x1 Conv3d as a matmul over channels."""
    kernel = conv.kernel[...]
    return x @ kernel.reshape(kernel.shape[-2:]).astype(x.dtype) + conv.bias[...].astype(x.dtype)


def fold(x: Float[Array, "b t h w c"], rt: int) -> Float[Array, "b t2 h2 w2 p"]:
    """diffusers `_dcae_downsample_rearrange`: (rt, 2, 2) blocks into channels, P index (it, ih, iw, c)."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // rt, rt, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, t // rt, h // 2, w // 2, rt * 4 * c)


def unfold(x: Float[Array, "b t h w p"], rt: int) -> Float[Array, "b t2 h2 w2 c"]:
    """diffusers `_dcae_upsample_rearrange`: the inverse of `fold`."""
    b, t, h, w, p = x.shape
    x = x.reshape(b, t, h, w, rt, 2, 2, p // (4 * rt)).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, t * rt, h * 2, w * 2, -1)


def _group_mean(x: jax.Array, groups: int) -> jax.Array:
    """Averages each run of `groups` consecutive channels (diffusers' `view(B, C, g, ...).mean(2)`)."""
    return x.reshape(*x.shape[:-1], -1, groups).mean(-1)


class Downsample(nnx.Module):
    """diffusers `HunyuanVideo15Downsample`: conv to out/factor channels, fold; an averaged folded shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, temporal: bool, rngs: nnx.Rngs):
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(in_dim, out_dim // factor, rngs=rngs)
        self.temporal = temporal
        self.group = factor * in_dim // out_dim

    def __call__(self, x: Float[Array, "b t h w ci"], cache: Cache, *, first: bool):
        h, cache = self.conv(x, cache)
        if not self.temporal:
            return fold(h, 1) + _group_mean(fold(x, 1), self.group), cache
        if first:  # the first frame (the whole first chunk) folds in space only, its h duplicated
            h = fold(h, 1)
            return jnp.concatenate([h, h], -1) + _group_mean(fold(x, 1), self.group // 2), cache
        return fold(h, 2) + _group_mean(fold(x, 2), self.group), cache


class Upsample(nnx.Module):
    """diffusers `HunyuanVideo15Upsample`: conv to out*factor channels, unfold; a repeated unfolded shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, temporal: bool, rngs: nnx.Rngs):
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(in_dim, out_dim * factor, rngs=rngs)
        self.temporal = temporal
        self.repeats = factor * out_dim // in_dim

    def __call__(self, x: Float[Array, "b t h w ci"], cache: Cache, *, first: bool):
        h, cache = self.conv(x, cache)
        if not self.temporal:
            return unfold(h, 1) + unfold(jnp.repeat(x, self.repeats, axis=-1), 1), cache
        if first:  # the first frame unfolds in space only, keeping the first half of its channels
            h = unfold(h, 1)
            return h[..., : h.shape[-1] // 2] + jnp.repeat(unfold(x, 1), self.repeats // 2, axis=-1), cache
        return unfold(h, 2) + jnp.repeat(unfold(x, 2), self.repeats, axis=-1), cache


class ResnetBlock(nnx.Module):
    """diffusers `HunyuanVideo15ResnetBlock`: (RMS norm, SiLU, causal conv) x 2, 1x1x1 shortcut conv."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, rngs=rngs)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, rngs=rngs)
        self.conv_shortcut = Conv(in_dim, out_dim, (1, 1, 1), rngs=rngs) if in_dim != out_dim else None

    def __call__(self, x: Float[Array, "b t h w ci"], cache: Cache) -> tuple[jax.Array, Cache]:
        h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), child(cache, 0))
        h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), child(cache, 1))
        return h + (x if self.conv_shortcut is None else _pointwise(self.conv_shortcut, x)), (c1, c2)


class AttnBlock(nnx.Module):
    """diffusers `HunyuanVideo15AttnBlock`: single-head attention over all tokens, causal over frames."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim)
        self.to_q = Conv(dim, dim, (1, 1, 1), rngs=rngs)
        self.to_k = Conv(dim, dim, (1, 1, 1), rngs=rngs)
        self.to_v = Conv(dim, dim, (1, 1, 1), rngs=rngs)
        self.proj_out = Conv(dim, dim, (1, 1, 1), rngs=rngs)

    def __call__(self, x: Float[Array, "b t h w c"], cache: Cache, *, total: int) -> tuple[jax.Array, Cache]:
        """`cache`: (keys, values [B, total, H*W, C] of the frames so far, how many); `total` frames in all."""
        b, t, h, w, c = x.shape
        n = self.norm(x)
        q, k, v = (_pointwise(conv, n).reshape(b, t, h * w, c) for conv in (self.to_q, self.to_k, self.to_v))
        if cache is None:
            zeros = jnp.zeros((b, total, h * w, c), k.dtype)
            cache = (zeros, zeros, jnp.zeros((), jnp.int32))
        keys, values, start = cache
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k, start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, v, start, axis=1)
        # A query sees every token of its own and earlier frames (not yet written frames are later ones).
        q_frame = start + jnp.arange(t * h * w) // (h * w)
        k_frame = jnp.arange(total * h * w) // (h * w)
        mask = k_frame[None, :] <= q_frame[:, None]  # [T*H*W, total*H*W]
        out = dot_product_attention(
            q.reshape(b, -1, 1, c),
            keys.reshape(b, -1, 1, c),
            values.reshape(b, -1, 1, c),
            mask=mask[None, None],
        )
        return x + _pointwise(self.proj_out, out.reshape(b, t, h, w, c)), (keys, values, start + t)


class MidBlock(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(dim, dim, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttnBlock(dim, rngs=rngs)])

    def __call__(self, x: jax.Array, cache: Cache, *, total: int) -> tuple[jax.Array, Cache]:
        x, c0 = self.resnets[0](x, child(cache, 0))
        x, c1 = self.attentions[0](x, child(cache, 1), total=total)
        x, c2 = self.resnets[1](x, child(cache, 2))
        return x, (c0, c1, c2)


class _Level(nnx.Module):
    """diffusers `HunyuanVideo15DownBlock3D` / `UpBlock3D`: resnets, then an optional resampler."""

    def __init__(self, resnets, resampler_name: str, resampler):
        self.resnets = nnx.List(resnets)
        setattr(self, resampler_name, None if resampler is None else nnx.List([resampler]))
        self._resampler = resampler_name

    def __call__(self, x: jax.Array, cache: Cache, *, first: bool) -> tuple[jax.Array, Cache]:
        caches = []
        for i, resnet in enumerate(self.resnets):
            x, c = resnet(x, child(cache, i))
            caches.append(c)
        resampler = getattr(self, self._resampler)
        if resampler is not None:
            x, c = resampler[0](x, child(cache, len(caches)), first=first)
            caches.append(c)
        return x, tuple(caches)


class Encoder(nnx.Module):
    def __init__(self, cfg: HunyuanVideo15VAEConfig, *, rngs: nnx.Rngs):
        ch = cfg.block_out_channels
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], rngs=rngs)
        levels, c_in = [], ch[0]
        for i, c in enumerate(ch):
            resnets = [ResnetBlock(c_in if j == 0 else c, c, rngs=rngs) for j in range(cfg.layers_per_block)]
            down = None
            if i < cfg.spatial_levels:
                temporal = i >= cfg.spatial_levels - cfg.temporal_levels
                down = Downsample(c, ch[i + 1], temporal=temporal, rngs=rngs)
            levels.append(_Level(resnets, "downsamplers", down))
            c_in = ch[i + 1] if down is not None else c
        self.down_blocks = nnx.List(levels)
        self.mid_block = MidBlock(ch[-1], rngs=rngs)
        self.norm_out = RMSNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, rngs=rngs)
        self.group = ch[-1] // (2 * cfg.latent_channels)

    def __call__(self, x: Float[Array, "b t h w ci"], cache: Cache, *, first: bool, total: int):
        x, c_in = self.conv_in(x, child(cache, 0))
        c_down = []
        for i, level in enumerate(self.down_blocks):
            x, c = level(x, child(child(cache, 1), i), first=first)
            c_down.append(c)
        x, c_mid = self.mid_block(x, child(cache, 2), total=total)
        y, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), child(cache, 3))
        return y + _group_mean(x, self.group), (c_in, tuple(c_down), c_mid, c_out)


class Decoder(nnx.Module):
    def __init__(self, cfg: HunyuanVideo15VAEConfig, *, rngs: nnx.Rngs):
        ch = cfg.block_out_channels[::-1]
        self.repeat = ch[0] // cfg.latent_channels
        self.conv_in = CausalConv3d(cfg.latent_channels, ch[0], rngs=rngs)
        self.mid_block = MidBlock(ch[0], rngs=rngs)
        levels, c_in = [], ch[0]
        for i, c in enumerate(ch):
            resnets = [
                ResnetBlock(c_in if j == 0 else c, c, rngs=rngs) for j in range(cfg.layers_per_block + 1)
            ]
            up = None
            if i < cfg.spatial_levels:
                up = Upsample(c, ch[i + 1], temporal=i < cfg.temporal_levels, rngs=rngs)
            levels.append(_Level(resnets, "upsamplers", up))
            c_in = ch[i + 1] if up is not None else c
        self.up_blocks = nnx.List(levels)
        self.norm_out = RMSNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels, rngs=rngs)

    def __call__(self, z: Float[Array, "b t h w z"], cache: Cache, *, first: bool, total: int):
        x, c_in = self.conv_in(z, child(cache, 0))
        x, c_mid = self.mid_block(x + jnp.repeat(z, self.repeat, axis=-1), child(cache, 1), total=total)
        c_up = []
        for i, level in enumerate(self.up_blocks):
            x, c = level(x, child(child(cache, 2), i), first=first)
            c_up.append(c)
        y, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), child(cache, 3))
        return y, (c_in, c_mid, tuple(c_up), c_out)


def _chunked(module: nnx.Module, head: jax.Array, rest: jax.Array | None, total: int) -> jax.Array:
    """Runs `module` over the first chunk, then scans it over the others (`rest`: [n, B, K, H, W, C]) with
    the cache as the carry; returns every chunk's output concatenated along time."""
    y, cache = module(head, None, first=True, total=total)
    if rest is None:
        return y
    graphdef, state = nnx.split(module)

    def step(cache, chunk):
        out, cache = nnx.merge(graphdef, state)(chunk, cache, first=False, total=total)
        return cache, out

    _, ys = jax.lax.scan(step, cache, rest)  # [n, B, Ko, Ho, Wo, Co]
    n, b, k = ys.shape[:3]
    return jnp.concatenate([y, jnp.moveaxis(ys, 0, 1).reshape(b, n * k, *ys.shape[3:])], axis=1)


class AutoencoderKLHunyuanVideo15(nnx.Module):
    """diffusers `AutoencoderKLHunyuanVideo15`: encoder and decoder (no quant convs)."""

    def __init__(self, cfg: HunyuanVideo15VAEConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    def encode(
        self, x: Float[Array, "b T H W ci"], tiling: VAETiling | None = None
    ) -> tuple[Float[Array, "b t h w z"], Float[Array, "b t h w z"]]:
        """The moments of the latent distribution (diffusers `encode(x).latent_dist.mean` / `.logvar`).

        Args:
            x: video [B, T, H, W, Ci] in [-1, 1], T = 1 + k * `temporal_compression_ratio`, H and W multiples
                of `spatial_compression_ratio`.
            tiling: encode in overlapping spatial tiles (`jdiff.models.hunyuan_video15.tiling`) where the video
                is larger than a tile, as diffusers' `enable_tiling()` does; None: the whole frame at once.

        Returns:
            (mean, logvar), each [B, 1 + k, H / s, W / s, Z]; logvar clamped to [-30, 20] as diffusers does.

        Raises:
            InputError: a video of the wrong rank, channel count or size.
        """
        cfg = self.cfg
        s, r = cfg.spatial_compression_ratio, cfg.temporal_compression_ratio
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise InputError(
                f"AutoencoderKLHunyuanVideo15.encode: expected a video [B, T, H, W, {cfg.in_channels}], "
                f"got shape {tuple(x.shape)}"
            )
        _, t, h, w, _ = x.shape
        if (t - 1) % r or h % s or w % s:
            raise InputError(
                f"AutoencoderKLHunyuanVideo15.encode: frames must be 1 + a multiple of {r} and height / width "
                f"multiples of {s}, got {t} frames of {h}x{w}; resize or trim the video"
            )
        if tiling is None or (h <= tiling.tile_sample_min_height and w <= tiling.tile_sample_min_width):
            moments = self._moments(x)
        else:  # diffusers blends the raw moments, the logvar clamp after
            tile = (tiling.tile_sample_min_height, tiling.tile_sample_min_width)
            stride = [int(n * (1 - tiling.tile_overlap_factor)) for n in tile]
            if any(n % s for n in (*tile, *stride)):
                raise InputError(
                    f"AutoencoderKLHunyuanVideo15.encode: tiles of {tile[0]}x{tile[1]} pixels advancing by "
                    f"{stride[0]}x{stride[1]} must be multiples of {s}; pick tile sizes and an overlap that keep them so"
                )
            latent = tiling.latent(s)
            moments = tiled(self._moments, x, tile=tile, overlap=tiling.tile_overlap_factor, tile_out=latent)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def _moments(self, x: Float[Array, "b T H W ci"]) -> Float[Array, "b t h w 2z"]:
        """The encoder's raw output (mean and unclamped logvar on channels), over frame chunks."""
        b, t = x.shape[:2]
        n = (t - 1) // self.cfg.temporal_compression_ratio
        rest = None if n == 0 else x[:, 1:].reshape(b, n, -1, *x.shape[2:]).swapaxes(0, 1)
        return _chunked(self.encoder, x[:, :1], rest, 1 + n)

    def decode(
        self, z: Float[Array, "b t h w z"], tiling: VAETiling | None = None
    ) -> Float[Array, "b T H W co"]:
        """Decodes latents (in the VAE's own scale: the pipeline divides by `scaling_factor` first) to video
        [B, 1 + r * (t - 1), h * s, w * s, Co], not clamped (diffusers clamps in post-processing).

        `tiling`: decode in overlapping spatial tiles (`jdiff.models.hunyuan_video15.tiling`) where the latents
        are larger than a tile, as diffusers' `enable_tiling()` does (the device then holds one tile's
        activations at a time); None: the whole frame at once.
        """
        if z.ndim != 5 or z.shape[-1] != self.cfg.latent_channels:
            raise InputError(
                f"AutoencoderKLHunyuanVideo15.decode: expected latents [B, t, h, w, {self.cfg.latent_channels}], "
                f"got shape {tuple(z.shape)}"
            )
        if tiling is not None:
            s = self.cfg.spatial_compression_ratio
            tile = tiling.latent(s)
            if z.shape[2] > tile[0] or z.shape[3] > tile[1]:
                out = (tiling.tile_sample_min_height, tiling.tile_sample_min_width)
                return tiled(self._decode, z, tile=tile, overlap=tiling.tile_overlap_factor, tile_out=out)
        return self._decode(z)

    def _decode(self, z: Float[Array, "b t h w z"]) -> Float[Array, "b T H W co"]:
        t = z.shape[1]
        rest = None if t == 1 else z[:, 1:, None].swapaxes(0, 1)  # [t - 1, B, 1, h, w, Z]
        return _chunked(self.decoder, z[:, :1], rest, t)
