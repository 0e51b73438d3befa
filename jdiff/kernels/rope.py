"""Applying interleaved rotary embeddings: the plain composition that the fused kernels reproduce.

Axis letters: B batch, L sequence, N heads, H head dim. The tables come from `jdiff.layers.rope.rope_cos_sin`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def apply_rope(
    x: Float[Array, "b l n h"], cos: Float[Array, "l h"], sin: Float[Array, "l h"]
) -> Float[Array, "b l n h"]:
    """x * cos + rotate(x) * sin with rotate((a, b)) = (-b, a) over interleaved pairs, in float32."""
    x32 = x.astype(jnp.float32)
    pairs = x32.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    out = x32 * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.astype(x.dtype)
