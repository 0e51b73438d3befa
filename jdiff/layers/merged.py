"""Reading the output of a projection merged at load: every head's q, k, v (and any share of an MLP input).

Axis letters: B batch, L tokens, N heads, H head dim, W a head's merged width (3H, + its MLP share).

A DiT's q, k and v projections of one stream read the same input, so jdiff merges them at load into one
`Linear` (`jdiff.weights.plan`'s grouped transforms: `merged_qkv` <- `to_q` / `to_k` / `to_v`): one GEMM, and
with LoRA one `x @ lora_a` instead of three. Its columns are head-major, [N, W] with each head's q, k, v (then
its MLP share) in turn, so that a contiguous split of the columns over the tensor axis leaves every head's q,
k and v on one device. `project` runs the matmul without the bias (so that on GPU a scanned layer's weight is
read in place, `jdiff.layers.linear`); the fused QK norm + rope pass reads q and k straight out of the merged
output (`Heads`) and adds their biases, v's bias goes where the caller adds it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from jaxtyping import Array, Float

from jdiff.kernels.norm_rope import Heads
from jdiff.layers.linear import Linear, _bias_apart


class Merged(NamedTuple):
    """A merged projection's output per head, [B, L, N, W], and its bias [N, W] (None without one)."""

    y: Float[Array, "b l n w"]
    bias: Float[Array, "n w"] | None
    head_dim: int

    def heads(self, i: int) -> Heads:
        """Part `i` (0: q, 1: k) of every head, as the fused norm + rope pass reads it in place."""
        y, h = self.y, self.head_dim
        return Heads(y.reshape(*y.shape[:2], -1, h), i, y.shape[-1] // h, y.shape[2])

    def part_bias(self, i: int) -> jax.Array | None:
        """Part `i`'s bias, [N * H] (None without one)."""
        h = self.head_dim
        return None if self.bias is None else self.bias[:, i * h : (i + 1) * h].reshape(-1)

    def norm_rope_part(self, i: int, norm) -> tuple:
        """Part `i` as a `jdiff.kernels.norm_rope` part, normalised by `norm` (an `RMSNorm` over H)."""
        return (self.heads(i), norm.scale[...], norm.eps, self.part_bias(i))

    def v(self, *, with_bias: bool = True) -> Float[Array, "b l n h"]:
        """v per head (its bias added when `with_bias` and there is one)."""
        h = self.head_dim
        v = self.y[..., 2 * h : 3 * h]
        return v if self.bias is None or not with_bias else v + self.bias[:, 2 * h : 3 * h].astype(v.dtype)

    def rest(self) -> Float[Array, "b l f"]:
        """The columns after each head's q, k, v (an MLP input), in their original order, bias added."""
        h, y = self.head_dim, self.y
        out = y[..., 3 * h :].reshape(*y.shape[:2], -1)
        return out if self.bias is None else out + self.bias[:, 3 * h :].reshape(-1).astype(out.dtype)


def project(proj: Linear, x: Float[Array, "b l d"], heads: int, head_dim: int) -> Merged:
    """`x @ proj.kernel` (LoRA adapters included, the bias left out) split per head."""
    y = proj.matmul(x)
    if proj.bias is not None and _bias_apart(proj.bias_epilogue):
        # As `Linear` keeps a bias apart: no later add of it may become the GEMM's epilogue.
        y = jax.lax.optimization_barrier(y)
    bias = None if proj.bias is None else proj.bias[...].reshape(heads, -1)
    return Merged(y.reshape(*y.shape[:-1], heads, -1), bias, head_dim)


__all__ = ["Merged", "project"]
