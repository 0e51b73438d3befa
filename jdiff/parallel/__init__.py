"""Parallelism: device meshes, logical-to-mesh sharding rules, and sequence-parallel attention.

Typical use (one process, all devices):

    mesh = make_mesh("data=2,context=4")
    shardings = param_shardings(nnx.state(nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0)))), mesh)
    ...  # load weights with jax.device_put(host_array, sharding) tensor by tensor
    with activate(mesh):  # jdiff.sharding.constrain now pins activations; trace jitted functions in here
        out = jax.jit(model_fn)(...)

Inside a model, attention over a context-sharded sequence goes through `context_attention` (or
`joint_context_attention` for FLUX-style text + image segments); `current()` gives the active mesh.
"""

from jdiff.parallel.attention import (
    context_attention,
    joint_context_attention,
    ring_attention,
    ulysses_attention,
)
from jdiff.parallel.mesh import AXES, format_mesh, make_mesh, parse_mesh
from jdiff.parallel.rules import (
    ACTIVATION_RULES,
    DEFAULT_RULES,
    PARAM_RULES,
    Rules,
    activate,
    current,
    logical_to_spec,
    named_sharding,
    param_shardings,
)

__all__ = [
    "ACTIVATION_RULES",
    "AXES",
    "DEFAULT_RULES",
    "PARAM_RULES",
    "Rules",
    "activate",
    "context_attention",
    "current",
    "format_mesh",
    "joint_context_attention",
    "logical_to_spec",
    "make_mesh",
    "named_sharding",
    "param_shardings",
    "parse_mesh",
    "ring_attention",
    "ulysses_attention",
]
