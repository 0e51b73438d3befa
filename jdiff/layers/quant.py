"""fp8 (e4m3) linears: per-output-channel weight scales, per-token dynamic activation scales.

The recipe is torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`, the one the
PyTorch fp8 anchor of the project's reference figures runs:

* weights, once at load: `w_scale[o] = max_i |W[i, o]| / 448` (one per output channel, with the stack's
  leading layer axis where the kernel has one), `W_q = fp8(clip(W / w_scale, -448, 448))`;
* activations, at every call: `x_scale[t] = max(max_i |x[t, i]|, EPS) / 448` (one per token: per row of the
  input's last axis), `x_q = fp8(clip(x / x_scale, -448, 448))`;
* each scale is the quotient rounded to the dtype of the tensor it scales, as torchao divides a bfloat16
  amax by 448 in bfloat16 (`jdiff.layers.rounding`), then kept in float32. Per linear the rounding changes
  nothing on average (relative error 0.03551 vs 0.03552 at 3072 -> 1024, 256 tokens), but with it jdiff's
  fp8 outputs equal torchao's to ~1e-3 instead of differing by half the fp8 error (0.016), so the two can be
  compared on one model without the comparison drowning in which elements each rounds up;
* `y = (x_q @ W_q) * x_scale * w_scale (+ bias)`: the fp8 x fp8 dot accumulates in float32 and writes the
  activation dtype.

Axis letters: I a linear's input width, O its output width, L a stack's layer axis (optional, leading).

What XLA does with it on Hopper: `dot_general` of two `float8_e4m3fn` operands with a bf16
`preferred_element_type` is rewritten (XLA's GemmRewriter, fp8 path) to cuBLASLt's fp8 GEMM with unit
scales, when each operand has one contracting and one non-contracting axis (the tokens are flattened here) and
A is row-major and B column-major, i.e. both contract over their minor axis; otherwise it inserts a transpose
of the operand on every call. So the quantized kernel is stored transposed, [.., O, I] (torch's `weight`
layout), and the GEMM reads it in place. The per-row and
per-column scale multiply (and bias) is elementwise on the GEMM's output and fuses into whatever consumes it
(gate, residual, GELU); the activation's amax and its divide / clip / convert form one reduction fusion with
whatever produced `x` (a norm, a modulate). The functions are pure, so they run the same inside the scan
over stacked layers (`jdiff.layers.stack`), where `W_q` and its scales are that layer's slices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff.layers.rounding import rounded

FP8 = jnp.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite float8_e4m3fn
# Floor of an amax, so an all-zero row or channel gets a finite scale (torchao clamps the same way).
EPS = 1e-12

MODES = ("fp8",)


class Fp8Kernel(nnx.Param):
    """A linear's kernel quantized to float8_e4m3fn, stored [.., O, I] (see the module docstring)."""


class Fp8Scale(nnx.Param):
    """The float32 per-output-channel scales [.., O] of an `Fp8Kernel`."""


def _to_fp8(x: jax.Array, scale: jax.Array) -> jax.Array:
    # float8_e4m3fn has no infinity: a value rounding past 448 would become NaN, hence the clip.
    return jnp.clip(x.astype(jnp.float32) / scale, -FP8_MAX, FP8_MAX).astype(FP8)


def _scale(amax: jax.Array) -> jax.Array:
    return rounded(jnp.maximum(amax.astype(jnp.float32), EPS) / FP8_MAX, amax.dtype)


@jax.jit
def quantize_weight(kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A `Linear` kernel [.., I, O] (any float dtype) as (W_q [.., O, I] float8_e4m3fn, w_scale [.., O] f32)."""
    scale = _scale(jnp.max(jnp.abs(kernel), axis=-2))  # [.., O]
    q = _to_fp8(kernel, scale[..., None, :])  # [.., I, O]
    return jnp.swapaxes(q, -1, -2), scale


def dequantize_weight(w_q: jax.Array, scale: jax.Array) -> jax.Array:
    """(W_q [.., O, I], w_scale [.., O]) -> the float32 kernel [.., I, O] they stand for."""
    return jnp.swapaxes(w_q.astype(jnp.float32) * scale[..., None], -1, -2)


def quantize_tokens(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [.., I] -> (x_q [.., I] float8_e4m3fn, x_scale [.., 1] f32): one dynamic scale per token (row)."""
    scale = _scale(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
    return _to_fp8(x, scale), scale


def linear(
    x: jax.Array,
    w_q: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_sharding=None,
) -> jax.Array:
    """`x @ W + bias` through the fp8 recipe: x [.., I], W_q [O, I] fp8, w_scale [O] f32 -> [.., O] in x's
    dtype (float32 or bfloat16).

    Args:
        x: the activations; quantized here, per token.
        w_q: one layer's quantized kernel (`quantize_weight`), contracting axis minor.
        w_scale: its per-output-channel scales.
        bias: [O] or None; added after the scales, in the same elementwise pass.
        out_sharding: passed to the dot, as `nnx.Linear` does.
    """
    out_dtype = x.dtype if x.dtype in (jnp.float32, jnp.bfloat16, jnp.float16) else jnp.float32
    x_q, x_scale = quantize_tokens(x)
    lead = x.shape[:-1]
    if out_sharding is None:  # tokens flattened: XLA's fp8 GEMM rewrite wants one non-contracting axis
        x_q = x_q.reshape(-1, x.shape[-1])
    dims = (((x_q.ndim - 1,), (w_q.ndim - 1,)), ((), ()))
    y = jax.lax.dot_general(x_q, w_q, dims, preferred_element_type=out_dtype, out_sharding=out_sharding)
    y = y.reshape(*lead, -1)
    y = y.astype(jnp.float32) * x_scale * w_scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


__all__ = [
    "EPS",
    "FP8",
    "FP8_MAX",
    "MODES",
    "Fp8Kernel",
    "Fp8Scale",
    "dequantize_weight",
    "linear",
    "quantize_tokens",
    "quantize_weight",
]
