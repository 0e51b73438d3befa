"""Values rounded as PyTorch rounds them in a narrower dtype, kept in float32.

Where the reference computes a small value in the model's dtype, jdiff computes it in float32 and rounds it
the same way, so that its bfloat16 outputs stay next to the reference's:

* timesteps and guidance scales (`jdiff.layers.embeddings.pipeline_sigma` and the FLUX families'
  `timestep.to(hidden_states.dtype) * 1000`): in bfloat16 a guidance of 3.5 becomes 3504, not 3500, and
  the sinusoidal embeddings' fast frequencies turn that into a large change of the model's output;
* fp8 scales (`jdiff.layers.quant`): torchao divides a bfloat16 amax by 448 in bfloat16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rounded(x: jax.Array, dtype) -> jax.Array:
    """`x` as float32 holding the value `x.to(dtype)` has in torch: rounded to `dtype`'s precision when it is
    narrower than float32 (bfloat16, float16), unchanged otherwise.

    `lax.reduce_precision` and not an `astype` round trip: under XLA's default `xla_allow_excess_precision`,
    bfloat16 arithmetic between float32 ops may run in float32, and the rounding is lost.
    """
    x = x.astype(jnp.float32)
    info = jnp.finfo(dtype)
    if info.bits >= 32:
        return x
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


__all__ = ["rounded"]
