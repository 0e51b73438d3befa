"""Normalisations computed in float32 whatever the activation dtype (as the references do), cast back after.

Parameter names follow torch: `scale` here is torch's `weight` (mapped by the default conversion rules).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff import sharding as sh


def _param(shape, value: float, axes) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, jnp.float32), out_sharding=axes, eager_sharding=False)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis; `elementwise_affine=False` has no parameters."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        use_bias: bool = True,
        rngs=None,
    ):
        self.eps = eps
        self.scale = _param((dim,), 1.0, (sh.NORM,)) if elementwise_affine else None
        self.bias = _param((dim,), 0.0, (sh.NORM,)) if elementwise_affine and use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """torch.nn.RMSNorm / T5LayerNorm: x / rms(x) * weight, statistics in float32."""

    def __init__(self, dim: int, *, eps: float = 1e-6, elementwise_affine: bool = True, rngs=None):
        self.eps = eps
        self.scale = _param((dim,), 1.0, (sh.NORM,)) if elementwise_affine else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        return y.astype(x.dtype)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm over channels-last input [B, *spatial, C], statistics in float32."""

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-6, rngs=None):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.scale = _param((num_channels,), 1.0, (sh.NORM,))
        self.bias = _param((num_channels,), 0.0, (sh.NORM,))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        g = self.num_groups
        x32 = x.astype(jnp.float32).reshape(shape[0], -1, g, shape[-1] // g)
        mean = x32.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=(1, 3), keepdims=True)
        y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)
