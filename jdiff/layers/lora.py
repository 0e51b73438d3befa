"""LoRA adapters as inputs of the compiled programs: their weights are Variables, their scales an argument.

Axis letters: B batch (outputs of the request), R rows of a layer's input (B or a multiple of it),
K = S x Q adapter columns (S slots, each padded to the rank bucket Q), I/O a linear's input/output width.

A `jdiff.layers.Linear` given adapters holds two `LoraParam`s: `lora_a` [I, K] and `lora_b` [K, O] (with the
leading layer axis of a stack, like its kernel), every loaded adapter in its own slot of Q columns, its
alpha / rank folded into `lora_b`, zeros where an adapter does not touch the layer or has a smaller rank. The
layer adds `((x @ lora_a) * scales) @ lora_b`, where `scales` [B, K] (each output's scale of every slot,
repeated over the slot's Q columns) is what the jitted stage was given: `rows(scales)` sets it while tracing.
So a new adapter (of a seen rank bucket) or a new scale changes values, not shapes, and rows of one batch can
use different adapters. A layer without `lora_a` is exactly the plain linear layer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx


class LoraParam(nnx.Variable):
    """The low-rank factors of a `Linear`'s adapters (not a trained parameter of the base model)."""


# The traced per-output slot scales [B, K] while a stage with adapters is traced; None otherwise.
_SCALES: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar("jdiff_lora_scales", default=None)


@contextlib.contextmanager
def rows(scales: jax.Array | None) -> Iterator[None]:
    """Makes `scales` [B, K] the adapter scales of every `Linear` traced inside (None: adapters off)."""
    token = _SCALES.set(scales)
    try:
        yield
    finally:
        _SCALES.reset(token)


def delta(x: jax.Array, lora_a: jax.Array, lora_b: jax.Array) -> jax.Array | None:
    """The adapters' contribution to `x @ kernel`, or None when no scales are set (adapters off).

    The first axis of `x` is the batch or a multiple of it: classifier-free guidance stacks [negative;
    positive] and FLUX computes every step's modulation as step-major rows, and in both row r belongs to
    output r mod B, which is what tiling the scales gives.
    """
    scales = _SCALES.get()
    if scales is None:
        return None
    b = scales.shape[0]
    if x.ndim < 2 or x.shape[0] % b:
        raise ValueError(
            f"a LoRA layer got input of shape {x.shape}, whose first axis is not a multiple of the batch {b}"
        )
    s = jnp.tile(scales, (x.shape[0] // b, 1)).reshape(x.shape[0], *(1,) * (x.ndim - 2), -1)
    h = jnp.einsum("...i,ik->...k", x, lora_a.astype(x.dtype))  # [R, .., K]
    return jnp.einsum("...k,ko->...o", h * s.astype(h.dtype), lora_b.astype(x.dtype))


__all__ = ["LoraParam", "delta", "rows"]
