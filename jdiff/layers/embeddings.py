"""Timestep embeddings and the small MLPs diffusers wraps around them. Computed in float32.

Axis letters: B batch, D embedding dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.layers.linear import Linear
from jdiff.layers.rounding import rounded


def pipeline_sigma(timesteps: jax.Array, dtype) -> jax.Array:
    """The sigma diffusers' flow pipelines pass their transformer, `t.to(latents.dtype) / 1000`, with the
    latents in the model's `dtype` (FLUX.1, FLUX.2, Qwen-Image): `timesteps` on the 0..1000 scale, rounded,
    divided, rounded again (`rounded`), as float32."""
    return rounded(rounded(timesteps, dtype) / 1000, dtype)


def timestep_embedding(
    t: Float[Array, " b"],
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> Float[Array, "b d"]:
    """Sinusoidal embedding of (possibly fractional) timesteps, as diffusers' `get_timestep_embedding`."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    emb = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :] * scale
    sin, cos = jnp.sin(emb), jnp.cos(emb)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers `TimestepEmbedding`: linear_1 -> SiLU -> linear_2 (`use_bias=False`: its `sample_proj_bias`)."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, use_bias: bool = True, rngs: nnx.Rngs):
        self.linear_1 = Linear(
            in_channels, time_embed_dim, axes=(None, sh.EMBED), use_bias=use_bias, rngs=rngs
        )
        self.linear_2 = Linear(
            time_embed_dim, time_embed_dim, axes=(None, sh.EMBED), use_bias=use_bias, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TextProjection(nnx.Module):
    """diffusers `PixArtAlphaTextProjection` (act "silu" or "gelu_tanh"): linear_1 -> act -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int, *, act: str = "silu", rngs: nnx.Rngs):
        self.linear_1 = Linear(in_features, hidden_size, axes=(None, sh.EMBED), rngs=rngs)
        self.linear_2 = Linear(hidden_size, hidden_size, axes=(None, sh.EMBED), rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.linear_1(x)
        h = jax.nn.silu(h) if self.act == "silu" else jax.nn.gelu(h, approximate=True)
        return self.linear_2(h)
