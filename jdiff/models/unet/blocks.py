"""The UNet's building blocks: time-conditioned resnets, resamplers and the spatial transformer
(diffusers `ResnetBlock2D`, `Downsample2D`, `Upsample2D`, `Transformer2DModel`, `BasicTransformerBlock`).

Axis letters: B batch, H/W height/width at the block's resolution, C channels (Ci in, Co out), E time-embedding
width, L = H*W image tokens, T text tokens, J text width (cross_attention_dim), N heads, D head dim, F
feed-forward width.

Channels-last throughout. Attribute names are diffusers' module names, so the default conversion rules map
every parameter; a transformer's `transformer_blocks` are stacked (leading layer axis) and scanned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.layers import Conv, GroupNorm, LayerNorm, Linear, dot_product_attention
from jdiff.layers.stack import scan, stacked

_TOKENS = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)


class ResnetBlock2D(nnx.Module):
    """diffusers `ResnetBlock2D` (time_embedding_norm "default"): norm-SiLU-conv, plus the projected time
    embedding, norm-SiLU-conv, plus a 1x1-conv shortcut where the width changes; divided by `output_scale`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        output_scale: float = 1.0,
        rngs: nnx.Rngs,
    ):
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv(in_channels, out_channels, (3, 3), padding=1, rngs=rngs)
        self.time_emb_proj = Linear(temb_channels, out_channels, axes=(None, sh.CONV_OUT), rngs=rngs)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv(out_channels, out_channels, (3, 3), padding=1, rngs=rngs)
        self.conv_shortcut = (
            Conv(in_channels, out_channels, (1, 1), rngs=rngs) if in_channels != out_channels else None
        )
        self.output_scale = output_scale

    def __call__(self, x: Float[Array, "b h w ci"], temb: Float[Array, "b e"]) -> Float[Array, "b h w co"]:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(jax.nn.silu(temb)).astype(h.dtype)[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale == 1.0 else out / self.output_scale


class Downsample2D(nnx.Module):
    """diffusers `Downsample2D(use_conv=True, padding=p)`: a stride-2 3x3 conv (sizes round up when odd)."""

    def __init__(self, channels: int, *, padding: int, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), strides=2, padding=padding, rngs=rngs)

    def __call__(self, x: Float[Array, "b h w c"]) -> Float[Array, "b ho wo c"]:
        return self.conv(x)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # torch's "nearest" mode: source index floor(i * n_in / n_out), computed as torch does in float32.
    return np.minimum(
        np.floor(np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)), n_in - 1
    ).astype(np.int32)


class Upsample2D(nnx.Module):
    """diffusers `Upsample2D(use_conv=True)`: nearest-neighbour resize to `size` (2x unless the UNet's input
    size was not a multiple of its total downsampling), then a 3x3 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, (3, 3), padding=1, rngs=rngs)

    def __call__(self, x: Float[Array, "b h w c"], size: tuple[int, int]) -> Float[Array, "b ho wo c"]:
        h, w = x.shape[1:3]
        if size == (2 * h, 2 * w):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = jnp.take(jnp.take(x, _nearest_index(h, size[0]), axis=1), _nearest_index(w, size[1]), axis=2)
        return self.conv(x)


class Attention(nnx.Module):
    """diffusers `Attention` as the UNet's transformers build it: bias-free q/k/v, biased output projection
    (`to_out.0`; `to_out.1` is a param-less dropout), keys and values from `context` (cross-attention) or
    from the tokens themselves."""

    def __init__(self, dim: int, heads: int, context_dim: int | None, *, rngs: nnx.Rngs):
        kv_dim = context_dim or dim
        self.heads = heads
        self.to_q = Linear(dim, dim, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.to_k = Linear(kv_dim, dim, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.to_v = Linear(kv_dim, dim, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.to_out = nnx.List([Linear(dim, dim, axes=(sh.HEADS, sh.EMBED), rngs=rngs), None])

    def __call__(self, x: Float[Array, "b l c"], context: Float[Array, "b t j"] | None = None) -> jax.Array:
        b, n, c = x.shape
        src = x if context is None else context.astype(x.dtype)
        q = self.to_q(x).reshape(b, n, self.heads, -1)  # [B, L, N, D]
        k = self.to_k(src).reshape(b, src.shape[1], self.heads, -1)  # [B, T, N, D]
        v = self.to_v(src).reshape(b, src.shape[1], self.heads, -1)
        o = dot_product_attention(q, k, v).reshape(b, n, c)
        return self.to_out[0](o)


class GEGLU(nnx.Module):
    """diffusers `GEGLU`: one projection to 2F, split into (value, gate), value * exact-GELU(gate)."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.proj = Linear(dim, 2 * hidden, axes=(sh.EMBED, sh.MLP), bias_epilogue=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)  # [B, L, F] each
        return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """diffusers `FeedForward(activation_fn="geglu")`: `net.0` GEGLU (4x width), `net.1` dropout, `net.2`."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.net = nnx.List(
            [GEGLU(dim, 4 * dim, rngs=rngs), None, Linear(4 * dim, dim, axes=(sh.MLP, sh.EMBED), rngs=rngs)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):
    """diffusers `BasicTransformerBlock` (norm_type "layer_norm"): pre-norm self-attention, cross-attention to
    the text, GEGLU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, context_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, None, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, context_dim, rngs=rngs)
        self.norm3 = LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, rngs=rngs)

    def __call__(self, x: Float[Array, "b l c"], context: Float[Array, "b t j"]) -> Float[Array, "b l c"]:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        x = x + self.ff(self.norm3(x))
        return sh.constrain(x, _TOKENS)


class Transformer2DModel(nnx.Module):
    """diffusers `Transformer2DModel` on continuous input: group norm, `proj_in` (a 1x1 conv, or a linear
    with `use_linear_projection`: the same map on channels-last pixels), the transformer blocks (stacked and
    scanned), `proj_out`, plus the residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        *,
        num_layers: int,
        groups: int,
        linear_projection: bool,
        rngs: nnx.Rngs,
    ):
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        if linear_projection:
            self.proj_in = Linear(channels, channels, axes=(sh.CONV_IN, sh.EMBED), rngs=rngs)
            self.proj_out = Linear(channels, channels, axes=(sh.EMBED, sh.CONV_OUT), rngs=rngs)
        else:
            self.proj_in = Conv(channels, channels, (1, 1), rngs=rngs)
            self.proj_out = Conv(channels, channels, (1, 1), rngs=rngs)
        self.transformer_blocks = stacked(
            lambda r: BasicTransformerBlock(channels, heads, context_dim, rngs=r), num_layers, rngs
        )

    def __call__(self, x: Float[Array, "b h w c"], context: Float[Array, "b t j"]) -> Float[Array, "b h w c"]:
        b, h, w, c = x.shape
        t = self.proj_in(self.norm(x)).reshape(b, h * w, c)  # [B, L, C]
        t = scan(self.transformer_blocks, sh.constrain(t, _TOKENS), context)
        return x + self.proj_out(t.reshape(b, h, w, c))
