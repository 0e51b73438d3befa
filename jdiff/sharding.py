"""Logical axis names carried by parameters and activations.

Modules annotate parameters with these names and never name mesh axes; the rule tables that map logical
names to mesh axes (and the mesh construction) belong to the parallelism layer. `constrain` is the one helper
that pins an activation's layout; without an active rule set it does nothing.
"""

from __future__ import annotations

import jax

# Parameter axes.
EMBED = "embed"  # model width D
MLP = "mlp"  # feed-forward hidden width
HEADS = "heads"  # attention heads x head dim, flattened (q/k/v outputs, o inputs)
VOCAB = "vocab"
CONV_IN = "conv_in"  # convolution input channels
CONV_OUT = "conv_out"  # convolution output channels
NORM = "norm"  # norm scales and biases (replicated)
LAYERS = "layers"  # leading axis of blocks stacked for a scan over layers

# Activation axes.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"

# Set by the parallel layer: a callable (array, logical names) -> array applying a sharding constraint.
_constrain_fn = None


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Constrains `x` to the layout the active rules give `names`; a no-op when no rules are active."""
    return x if _constrain_fn is None else _constrain_fn(x, names)
