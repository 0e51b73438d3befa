"""Logical-to-mesh rule tables: where each logical axis name (`jdiff.sharding`) goes on the mesh.

A rule table maps every logical name to a tuple of mesh axes (empty: replicated). One table covers parameters
and activations, whose names are distinct:

  parameter   mesh axes   why
  embed       fsdp        model width: the FSDP split of every matmul weight (gathered per layer)
  mlp         tensor      feed-forward width: column/row-parallel MLPs
  heads       tensor      attention heads x head dim: head-parallel q/k/v/o
  conv_out    fsdp        convolution output channels: the FSDP split of conv kernels
  conv_in     -           the other conv dim stays whole, so one gather rebuilds a kernel
  vocab       -           embedding rows stay whole: their width (embed) is already split over fsdp, and a
                          lookup then needs no cross-device gather of rows
  norm        -           small; every device needs them whole
  layers      -           a scan over stacked layers slices this axis; splitting it would be pipelining

  activation  mesh axes       why
  batch       (data, fsdp)    data parallelism; under FSDP each device also takes its own batch slice
  length      context         sequence parallelism
  heads       tensor          matches the head-parallel weights
  embed       -               replicated between blocks (Megatron): the tensor axis re-reduces after o / down

Resolving a spec (`logical_to_spec`), mesh axes are taken greedily, dim by dim, left to right:
  * a mesh axis already taken by an earlier dim of the same spec is skipped (never emitted twice);
  * with a `mesh`: axes absent from the mesh or of size 1 are dropped (specs then read as the real layout);
  * with a `shape` and a `mesh`: an axis is kept only if the dim stays divisible by the product of the axes
    kept so far for it; otherwise it is skipped and the dim falls back towards replicated. jax rejects
    shardings of non-divisible dims, and replication is always correct (e.g. batch 1 on data=2, CLIP's 77
    tokens on context=4).

`activate(mesh, rules)` installs `jdiff.sharding.constrain` for the duration of a `with` block. Constraints
are applied when a function is traced, so trace (first-call) jitted functions inside the block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdiff import sharding as sh

Rules = Mapping[str, tuple[str, ...]]

PARAM_RULES: Rules = {
    sh.EMBED: ("fsdp",),
    sh.MLP: ("tensor",),
    sh.HEADS: ("tensor",),
    sh.CONV_OUT: ("fsdp",),
    sh.CONV_IN: (),
    sh.VOCAB: (),
    sh.NORM: (),
    sh.LAYERS: (),
}

ACTIVATION_RULES: Rules = {
    sh.BATCH: ("data", "fsdp"),
    sh.LENGTH: ("context",),
    sh.ACT_HEADS: ("tensor",),
    sh.ACT_EMBED: (),
}

DEFAULT_RULES: Rules = {**PARAM_RULES, **ACTIVATION_RULES}

LogicalName = str | tuple[str, ...] | None


def logical_to_spec(
    names: Sequence[LogicalName],
    rules: Rules = DEFAULT_RULES,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """The PartitionSpec for an array whose dims carry logical `names`.

    Args:
        names: one entry per dim: None (replicated), a logical name, or a tuple of logical names (their
            mesh axes concatenated).
        rules: the rule table.
        shape: the array's shape; with `mesh`, enables the divisibility fallback.
        mesh: the target mesh; drops axes it lacks or has at size 1.

    Returns:
        A spec of len(names) entries, each None, one mesh axis name, or a tuple of them.

    Raises:
        ValueError: a logical name without a rule, or `shape` of a different rank than `names` (jdiff bugs).
    """
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"logical names {tuple(names)} do not match the rank of shape {tuple(shape)}")
    sizes = dict(mesh.shape) if mesh is not None else None
    taken: set[str] = set()
    out = []
    for i, name in enumerate(names):
        kept: list[str] = []
        for axis in _mesh_axes(name, rules):
            if axis in taken:
                continue
            if sizes is not None:
                size = sizes.get(axis, 1)
                if size == 1:
                    continue
                if shape is not None and shape[i] % (math.prod(sizes[a] for a in kept) * size):
                    continue
            kept.append(axis)
            taken.add(axis)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def _mesh_axes(name: LogicalName, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    if isinstance(name, tuple):
        return tuple(a for n in name for a in _mesh_axes(n, rules))
    if name not in rules:
        raise ValueError(
            f"logical axis {name!r} has no rule; add it to the rule table (jdiff.parallel.rules)"
        )
    return tuple(rules[name])


def named_sharding(
    names: Sequence[LogicalName],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    *,
    shape: Sequence[int] | None = None,
) -> NamedSharding:
    """`NamedSharding(mesh, logical_to_spec(names, rules, shape=shape, mesh=mesh))`: for jit in/out shardings
    and `jax.device_put` of activations (latents, text embeddings) by logical names."""
    return NamedSharding(mesh, logical_to_spec(names, rules, shape=shape, mesh=mesh))


def _variable_names(var: nnx.Variable) -> tuple[LogicalName, ...] | None:
    meta = var.get_metadata()
    # flax 0.12 stores the names as `out_sharding`; earlier releases used `sharding_names` / `sharding`.
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None:
            return tuple(names)
    return None


def param_shardings(abstract_state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """The NamedSharding of every variable of a model, from the logical names its parameters carry.

    Args:
        abstract_state: an `nnx.State` (typically `nnx.state(nnx.eval_shape(lambda: Model(cfg, rngs=...)))`)
            or an `nnx.Module` (abstract or concrete). Each variable's logical names are read from its
            `out_sharding` metadata (set by `nnx.with_partitioning(..., eager_sharding=False)` and the jdiff
            layers; stacked blocks carry a leading `layers` name). Variables without names are replicated.
        mesh: the target mesh.
        rules: the rule table.

    Returns:
        A pytree of the state's structure with one NamedSharding in place of each variable: a tree prefix of
        the state, so `jax.device_put(state, shardings)` and `jax.jit(..., out_shardings=shardings)` accept it.
        The divisibility fallback uses each variable's shape.
    """
    state = nnx.state(abstract_state) if isinstance(abstract_state, nnx.Module) else abstract_state

    def one(leaf):
        if isinstance(leaf, nnx.Variable):
            names, shape = _variable_names(leaf), leaf.get_value().shape
        else:
            names, shape = None, getattr(leaf, "shape", ())
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        return named_sharding(names, mesh, rules, shape=shape)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def current() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) installed by the innermost `activate` block in this thread, or None outside any."""
    placement = sh.ambient()
    return None if placement is None else (placement.mesh, placement.rules)


def sequence_parallel_mode() -> str:
    """How attention marked `context_parallel` runs over the `context` axis: "ulysses", "ring" or "auto"."""
    placement = sh.ambient()
    return "ulysses" if placement is None else placement.sequence_parallel


@contextlib.contextmanager
def activate(
    mesh: Mesh, rules: Rules = DEFAULT_RULES, *, sequence_parallel: str = "ulysses"
) -> Iterator[Mesh]:
    """Within the block, `jdiff.sharding.constrain(x, names)` pins `x` to `named_sharding(names, mesh, rules,
    shape=x.shape)` through `jax.lax.with_sharding_constraint`; the previous behaviour is restored on exit.

    The placement is ambient for this thread only (a ContextVar): concurrent threads trace independently.
    """

    def constrain_fn(x: jax.Array, names: tuple[LogicalName, ...]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, named_sharding(names, mesh, rules, shape=x.shape))

    with sh.use(sh.Ambient(mesh, rules, sequence_parallel, constrain_fn)):
        yield mesh
