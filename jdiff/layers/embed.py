"""Embedding tables looked up in the loaded parameter's dtype.

Not `nnx.Embed`: it fixes its output dtype when built (float32, before weights are loaded), which would
silently upcast a bfloat16 model's activations. The attribute is `embedding`, mapped from torch's `weight`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Embed(nnx.Module):
    """A [num, dim] table with logical axes `axes`; `__call__(ids)` gathers rows."""

    def __init__(
        self, num: int, dim: int, *, axes: tuple[str | None, str | None], std: float = 0.02, rngs: nnx.Rngs
    ):
        init = nnx.with_partitioning(nnx.initializers.normal(std), axes, eager_sharding=False)
        self.embedding = nnx.Param(init(rngs.params(), (num, dim), jnp.float32))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)
