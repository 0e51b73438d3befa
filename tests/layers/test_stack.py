"""`jdiff.layers.stack`: how stacked weights reach the scan body."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff.layers import Linear
from jdiff.layers.stack import map_layers, scan, stacked


def _scan_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _scan_eqns(sub)


def test_map_layers_reads_the_stack_as_the_scans_xs():
    """The stacked weights go in as the scan's `xs` (sliced by its own counter, which XLA reads in place on a
    GPU), not as constants indexed by a traced layer number (which made XLA copy every layer's weights out:
    4.2 ms of a FLUX.1-dev step on an H100). Same outputs as a Python loop over the layers."""
    blocks = stacked(lambda rngs: Linear(8, 24, rngs=rngs), 5, nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8)), jnp.float32)
    graphdef, state = nnx.split(blocks)

    def run(state, x):
        return map_layers(nnx.merge(graphdef, state), lambda b: b(x))

    (eqn,) = _scan_eqns(jax.make_jaxpr(run)(state, x).jaxpr)
    consts = eqn.invars[: eqn.params["num_consts"] + eqn.params["num_carry"]]
    assert all(v.aval.shape[:1] != (5,) for v in consts)  # no stacked weight among the constants
    xs = eqn.invars[eqn.params["num_consts"] + eqn.params["num_carry"] :]
    assert {v.aval.shape for v in xs} >= {(5, 8, 24), (5, 24)}  # kernel and bias, sliced per iteration

    got = run(state, x)
    kernel, bias = blocks.kernel[...], blocks.bias[...]
    want = jnp.stack([x @ kernel[i] + bias[i] for i in range(5)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


class _Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.proj = Linear(8, 8, rngs=rngs)

    def __call__(self, x, shift):
        return jnp.tanh(self.proj(x)) + shift


@pytest.mark.parametrize("layers", [slice(1, None), slice(1, 4), slice(0, None)])
def test_a_range_of_layers_reads_weights_at_the_loops_counter(layers):
    """`scan(..., layers=)` (the step caches' first / rest blocks) reads the range's weights from the whole
    stack at a `while_loop`'s own counter, as `lax.scan` reads its `xs` (never a slice of the stack, never an
    index computed from another array), and equals a Python loop over those layers."""
    blocks = stacked(_Block, 5, nnx.Rngs(0))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
    shifts = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    graphdef, state = nnx.split(blocks)

    def run(state, x):
        return scan(nnx.merge(graphdef, state), x, per_layer=shifts, layers=layers)

    kernel, bias = blocks.proj.kernel[...], blocks.proj.bias[...]
    want = x
    for i in range(*layers.indices(5)):
        want = jnp.tanh(want @ kernel[i] + bias[i]) + shifts[i]
    np.testing.assert_allclose(run(state, x), want, rtol=1e-6, atol=1e-6)

    jaxpr = jax.make_jaxpr(run)(state, x).jaxpr
    if layers == slice(0, None):  # the whole stack: a scan over it as xs
        assert [e.primitive.name for e in jaxpr.eqns if e.primitive.name in ("scan", "while")] == ["scan"]
        return
    (loop,) = [e for e in jaxpr.eqns if e.primitive.name == "while"]
    body = loop.params["body_jaxpr"].jaxpr
    counter = body.invars[loop.params["body_nconsts"]]
    slices = [  # dynamic_index_in_dim is a nested jit of a dynamic_slice in some jax versions
        e
        for e in body.eqns
        if (e.primitive.name == "dynamic_slice" or e.params.get("name") == "dynamic_index_in_dim")
        and e.invars[0].aval.shape[0] == 5
    ]
    assert len(slices) == 3  # kernel, bias, shift
    assert all(e.invars[1] is counter for e in slices)
