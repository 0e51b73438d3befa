"""Blocks stacked along a leading layer axis: created with `nnx.vmap`, run with `jax.lax.scan`.

Scanning over stacked weights compiles one block instead of N (16x faster compiles for FLUX's single blocks
at equal run time, ANCHORS.md) and keeps parameter paths free of layer indices; the conversion plan stacks the
reference's per-layer tensors (`Plan.stacked`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jdiff import sharding as sh
from jdiff.layers.linear import scanned_weights


def stacked(make: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """`num_layers` blocks built by `make(rngs)`, parameters stacked on a leading `layers` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: sh.LAYERS})
    def build(r: nnx.Rngs) -> nnx.Module:
        return make(r)

    return build(rngs)


def scan(blocks: nnx.Module, carry: Any, *args: Any, unroll: int | bool = 1) -> Any:
    """Runs `carry = block(carry, *args)` for every block of a stack; `args` are shared by all layers."""
    graphdef, state = nnx.split(blocks)

    def body(c, layer_state):
        with scanned_weights():
            return nnx.merge(graphdef, layer_state)(c, *args), None

    carry, _ = jax.lax.scan(body, carry, state, unroll=unroll)
    return carry
