"""The building blocks of diffusers' `AutoencoderKL`: resnets, resamplers, the mid-block and its attention.

Axis letters: B batch, H/W height/width at the block's resolution, C channels (Ci in, Co out),
L = H*W tokens of the mid-block attention, N heads (one), D head dim (= C), Ho/Wo the resolution after a
block's optional resampler.

Layout is channels-last throughout. Attribute names are the diffusers module names, so the state-dict keys
map onto parameter paths by the default conversion rules alone. diffusers' `output_scale_factor` /
`rescale_output_factor` are 1 everywhere in this VAE, so the divisions by them are left out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.layers import Conv, GroupNorm, Linear, dot_product_attention

# Every norm of the VAE (resnets, attention, conv_norm_out) uses this epsilon, as diffusers hard-codes it.
EPS = 1e-6


class ResnetBlock2D(nnx.Module):
    """diffusers `ResnetBlock2D` without a time embedding: norm-act-conv twice plus a (1x1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = Conv(in_channels, out_channels, (3, 3), padding=1, rngs=rngs)
        self.norm2 = GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = Conv(out_channels, out_channels, (3, 3), padding=1, rngs=rngs)
        self.conv_shortcut = (
            Conv(in_channels, out_channels, (1, 1), rngs=rngs) if in_channels != out_channels else None
        )

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h w co"]:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nnx.Module):
    """diffusers `Downsample2D(padding=0)`: pad one row/column at the bottom/right, then a stride-2 3x3 conv.

    The asymmetric pad is what the VAE was trained with (diffusers pads (0, 1, 0, 1) before a padding-0 conv);
    a symmetric padding-1 conv would shift the sampling grid by one pixel.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), strides=2, padding=0, rngs=rngs)

    def __call__(self, x: Float[Array, "b h w c"]) -> Float[Array, "b h//2 w//2 c"]:
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample2D(nnx.Module):
    """diffusers `Upsample2D(use_conv=True)`: nearest-neighbour 2x (exactly a repeat), then a 3x3 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), padding=1, rngs=rngs)

    def __call__(self, x: Float[Array, "b h w c"]) -> Float[Array, "b 2*h 2*w c"]:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class Attention(nnx.Module):
    """The mid-block self-attention (diffusers `Attention` built with `_from_deprecated_attn_block`).

    Group norm, then single-head attention over the L = H*W pixels with biased q/k/v/out projections, plus
    the residual. diffusers builds it with `heads = C // attention_head_dim` and `attention_head_dim = C`,
    i.e. one head of width C. `to_out` keeps diffusers' indices: 0 is the projection, 1 the (param-less)
    dropout.
    """

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.group_norm = GroupNorm(groups, channels, eps=EPS)
        self.to_q = Linear(channels, channels, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.to_k = Linear(channels, channels, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.to_v = Linear(channels, channels, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.to_out = nnx.List([Linear(channels, channels, axes=(sh.HEADS, sh.EMBED), rngs=rngs), None])

    def __call__(self, x: Float[Array, "b h w c"]) -> Float[Array, "b h w c"]:
        b, h, w, c = x.shape
        # GroupNorm statistics pool over every non-channel axis, so norming before the flatten is the same.
        t = self.group_norm(x).reshape(b, h * w, c)  # [B, L, C]
        q = self.to_q(t)[:, :, None, :]  # [B, L, N, D]
        k = self.to_k(t)[:, :, None, :]
        v = self.to_v(t)[:, :, None, :]
        o = dot_product_attention(q, k, v).reshape(b, h * w, c)
        return x + self.to_out[0](o).reshape(b, h, w, c)


class UNetMidBlock2D(nnx.Module):
    """diffusers `UNetMidBlock2D` (one layer): resnet, [attention], resnet, at constant width.

    Without attention diffusers keeps a `None` in `attentions`; so do we, so indices line up.
    """

    def __init__(self, channels: int, groups: int, *, add_attention: bool, rngs: nnx.Rngs):
        self.attentions = nnx.List([Attention(channels, groups, rngs=rngs) if add_attention else None])
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, groups, rngs=rngs) for _ in range(2)])

    def __call__(self, x: Float[Array, "b h w c"]) -> Float[Array, "b h w c"]:
        x = self.resnets[0](x)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            if attn is not None:
                x = attn(x)
            x = resnet(x)
        return x


class DownEncoderBlock2D(nnx.Module):
    """diffusers `DownEncoderBlock2D`: `num_layers` resnets, then a downsampler on all levels but the last."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        *,
        num_layers: int,
        downsample: bool,
        rngs: nnx.Rngs,
    ):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, rngs=rngs)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs)]) if downsample else None

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b ho wo co"]:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nnx.Module):
    """diffusers `UpDecoderBlock2D`: `num_layers` resnets, then an upsampler on all levels but the last."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        *,
        num_layers: int,
        upsample: bool,
        rngs: nnx.Rngs,
    ):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, rngs=rngs)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs)]) if upsample else None

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b ho wo co"]:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
