"""Where a pipeline's arrays live: a mesh, its rules and the sequence-parallel mode, in one object.

Pipelines hold a `Placement` or None (one device). Parameters are loaded straight into their shardings
(`param_shardings`), per-request inputs are put on the mesh by logical names, jitted stages are traced inside
`context()` (so `constrain` and context-parallel attention see the mesh), and results come back to the host
with `gather`, which also collects them from every process of a multi-host run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jdiff.parallel.rules import DEFAULT_RULES, Rules, activate, named_sharding, param_shardings
from jdiff.sharding import path_str


@dataclass(frozen=True)
class Placement:
    mesh: Mesh
    rules: Rules = field(default_factory=lambda: DEFAULT_RULES)
    sequence_parallel: str = "ulysses"

    def shardings(self, abstract_state: nnx.State) -> dict[str, jax.sharding.NamedSharding]:
        """Parameter path -> NamedSharding from the parameters' logical axis metadata."""
        tree = param_shardings(abstract_state, self.mesh, self.rules)
        return {path_str(p): s for p, s in nnx.to_flat_state(tree)}

    def put(self, x, names: tuple[str | None, ...] | None = None) -> jax.Array:
        """`x` on the mesh, laid out by logical `names` (None: replicated)."""
        if not isinstance(x, jax.Array) or (x.is_fully_addressable and len(x.sharding.device_set) == 1):
            x = np.asarray(x)  # host data: every process holds the same value and places its own shards
        names = names if names is not None else (None,) * x.ndim
        return jax.device_put(x, named_sharding(names, self.mesh, self.rules, shape=x.shape))

    def context(self):
        return activate(self.mesh, self.rules, sequence_parallel=self.sequence_parallel)


def context(placement: Placement | None):
    """`placement.context()`, or nothing on one device."""
    return contextlib.nullcontext() if placement is None else placement.context()


def put(placement: Placement | None, x, names=None):
    if placement is None:
        return x
    return placement.put(x, names)


def gather(x: jax.Array) -> np.ndarray:
    """The whole array on the host, from every process of a multi-host run."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
