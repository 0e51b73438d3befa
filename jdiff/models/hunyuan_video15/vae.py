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
Like diffusers (without tiling), the whole video runs at once: the attention over all frames makes the
network's state at a frame depend on every earlier frame's mid-block keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff.errors import InputError
from jdiff.layers import Conv, dot_product_attention
from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
from jdiff.models.wan_vae.blocks import RMSNorm

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp


class CausalConv3d(nnx.Module):
    """diffusers `HunyuanVideo15CausalConv3d` (kernel 3): replicate-pad 2 frames before and 1 pixel around."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.conv = Conv(in_dim, out_dim, (3, 3, 3), rngs=rngs)

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t h w co"]:
        return self.conv(jnp.pad(x, ((0, 0), (2, 0), (1, 1), (1, 1), (0, 0)), mode="edge"))


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

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        h = self.conv(x)
        if not self.temporal:
            return fold(h, 1) + _group_mean(fold(x, 1), self.group)
        # The first frame folds in space only; its h is duplicated to the full channel count.
        h_first = fold(h[:, :1], 1)
        h = jnp.concatenate([jnp.concatenate([h_first, h_first], -1), fold(h[:, 1:], 2)], axis=1)
        short = [_group_mean(fold(x[:, :1], 1), self.group // 2), _group_mean(fold(x[:, 1:], 2), self.group)]
        return h + jnp.concatenate(short, axis=1)


class Upsample(nnx.Module):
    """diffusers `HunyuanVideo15Upsample`: conv to out*factor channels, unfold; a repeated unfolded shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, temporal: bool, rngs: nnx.Rngs):
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(in_dim, out_dim * factor, rngs=rngs)
        self.temporal = temporal
        self.repeats = factor * out_dim // in_dim

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        h = self.conv(x)
        if not self.temporal:
            return unfold(h, 1) + unfold(jnp.repeat(x, self.repeats, axis=-1), 1)
        # The first frame unfolds in space only, keeping the first half of its channels.
        h_first = unfold(h[:, :1], 1)
        h = jnp.concatenate([h_first[..., : h_first.shape[-1] // 2], unfold(h[:, 1:], 2)], axis=1)
        short = [
            jnp.repeat(unfold(x[:, :1], 1), self.repeats // 2, axis=-1),
            jnp.repeat(unfold(x[:, 1:], 2), self.repeats, axis=-1),
        ]
        return h + jnp.concatenate(short, axis=1)


class ResnetBlock(nnx.Module):
    """diffusers `HunyuanVideo15ResnetBlock`: (RMS norm, SiLU, causal conv) x 2, 1x1x1 shortcut conv."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, rngs=rngs)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, rngs=rngs)
        self.conv_shortcut = Conv(in_dim, out_dim, (1, 1, 1), rngs=rngs) if in_dim != out_dim else None

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t h w co"]:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (x if self.conv_shortcut is None else _pointwise(self.conv_shortcut, x))


class AttnBlock(nnx.Module):
    """diffusers `HunyuanVideo15AttnBlock`: single-head attention over all tokens, causal over frames."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim)
        self.to_q = Conv(dim, dim, (1, 1, 1), rngs=rngs)
        self.to_k = Conv(dim, dim, (1, 1, 1), rngs=rngs)
        self.to_v = Conv(dim, dim, (1, 1, 1), rngs=rngs)
        self.proj_out = Conv(dim, dim, (1, 1, 1), rngs=rngs)

    def __call__(self, x: Float[Array, "b t h w c"]) -> Float[Array, "b t h w c"]:
        b, t, h, w, c = x.shape
        n = self.norm(x)
        q, k, v = (_pointwise(conv, n).reshape(b, -1, 1, c) for conv in (self.to_q, self.to_k, self.to_v))
        frame = jnp.arange(t * h * w) // (h * w)
        mask = frame[:, None] >= frame[None, :]  # [L, L]: a query sees its own and earlier frames
        out = dot_product_attention(q, k, v, mask=mask[None, None]).reshape(b, t, h, w, c)
        return x + _pointwise(self.proj_out, out)


class MidBlock(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(dim, dim, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttnBlock(dim, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class _Level(nnx.Module):
    """diffusers `HunyuanVideo15DownBlock3D` / `UpBlock3D`: resnets, then an optional resampler."""

    def __init__(self, resnets, resampler_name: str, resampler):
        self.resnets = nnx.List(resnets)
        setattr(self, resampler_name, None if resampler is None else nnx.List([resampler]))
        self._resampler = resampler_name

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        resampler = getattr(self, self._resampler)
        return x if resampler is None else resampler[0](x)


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

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 z2"]:
        x = self.conv_in(x)
        for level in self.down_blocks:
            x = level(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x))) + _group_mean(x, self.group)


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

    def __call__(self, z: Float[Array, "b t h w z"]) -> Float[Array, "b t2 h2 w2 co"]:
        x = self.conv_in(z) + jnp.repeat(z, self.repeat, axis=-1)
        x = self.mid_block(x)
        for level in self.up_blocks:
            x = level(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class AutoencoderKLHunyuanVideo15(nnx.Module):
    """diffusers `AutoencoderKLHunyuanVideo15`: encoder and decoder (no quant convs)."""

    def __init__(self, cfg: HunyuanVideo15VAEConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    def encode(
        self, x: Float[Array, "b T H W ci"]
    ) -> tuple[Float[Array, "b t h w z"], Float[Array, "b t h w z"]]:
        """The moments of the latent distribution (diffusers `encode(x).latent_dist.mean` / `.logvar`).

        Args:
            x: video [B, T, H, W, Ci] in [-1, 1], T = 1 + k * `temporal_compression_ratio`, H and W multiples
                of `spatial_compression_ratio`.

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
        mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Float[Array, "b t h w z"]) -> Float[Array, "b T H W co"]:
        """Decodes latents (in the VAE's own scale: the pipeline divides by `scaling_factor` first) to video
        [B, 1 + r * (t - 1), h * s, w * s, Co], not clamped (diffusers clamps in post-processing)."""
        if z.ndim != 5 or z.shape[-1] != self.cfg.latent_channels:
            raise InputError(
                f"AutoencoderKLHunyuanVideo15.decode: expected latents [B, t, h, w, {self.cfg.latent_channels}], "
                f"got shape {tuple(z.shape)}"
            )
        return self.decoder(z)
