"""Logical axis names carried by parameters and activations.

Modules annotate parameters with these names and never name mesh axes; the rule tables that map logical
names to mesh axes (and the mesh construction) belong to the parallelism layer. `constrain` is the one helper
that pins an activation's layout; without an active rule set it does nothing. The active placement (mesh,
rules, sequence-parallel mode) is ambient per thread (`ambient`, `use`), so kernels and layers read it
without importing the parallelism layer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax


def path_str(path: tuple) -> str:
    """A parameter's NNX state path as one dotted string (`blocks.attn.to_q.kernel`): how shardings, plans
    and checkpoints name parameters."""
    return ".".join(str(p) for p in path)


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


@dataclass(frozen=True)
class Ambient:
    """The placement that jitted code is being traced under: set by `jdiff.parallel.rules.activate`.

    Attributes:
        mesh: the device mesh (a `jax.sharding.Mesh`).
        rules: the logical-name -> mesh-axes rule table in force.
        sequence_parallel: how context-parallel attention runs over the `context` axis ("ulysses", "ring",
            "auto").
        constrain: (array, logical names) -> array with that layout pinned.
    """

    mesh: Any
    rules: Any
    sequence_parallel: str
    constrain: Callable[[jax.Array, tuple[str | None, ...]], jax.Array]


# A ContextVar, not a module global: the server traces requests on worker threads, and a thread (or a
# `contextvars` copy) sees only the placement it activated.
_AMBIENT: contextvars.ContextVar[Ambient | None] = contextvars.ContextVar("jdiff_ambient", default=None)


def ambient() -> Ambient | None:
    """The placement of the innermost `activate` block in this thread, or None (one device, no rules)."""
    return _AMBIENT.get()


@contextlib.contextmanager
def use(placement: Ambient) -> Iterator[Ambient]:
    """Makes `placement` ambient for the block (restoring the previous one on exit)."""
    token = _AMBIENT.set(placement)
    try:
        yield placement
    finally:
        _AMBIENT.reset(token)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Constrains `x` to the layout the ambient rules give `names`; a no-op when no placement is ambient."""
    current = _AMBIENT.get()
    return x if current is None else current.constrain(x, names)
