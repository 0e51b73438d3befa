"""Sequence-parallel attention on 8 fake CPU devices: ulysses and ring against plain attention, with padding,
key masks, joint segments, and the documented output layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.errors import InputError
from jdiff.layers import dot_product_attention
from jdiff.parallel import (
    context_attention,
    joint_context_attention,
    make_mesh,
    ring_attention,
    ulysses_attention,
)
from tests.utils import rel_err

MESHES = {
    "context=8": (None, None),
    "data=2,context=4": ("data", None),
    "data=2,context=2,tensor=2": ("data", "tensor"),
}


def _qkv(b, t, s, n, h, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, n, h))
    k, v = rng.normal(size=(2, b, s, n, h))
    return (jnp.asarray(x, jnp.float32) for x in (q, k, v))


def _spec(x) -> tuple:
    """The output's PartitionSpec padded to rank 4 (jax drops trailing Nones)."""
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (4 - len(spec))


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
@pytest.mark.parametrize("length", [16, 13])
@pytest.mark.parametrize("mesh_spec", list(MESHES))
def test_matches_plain_attention(mesh_spec, length, mode):
    mesh = make_mesh(mesh_spec)
    q, k, v = _qkv(2, length, length, 8, 4)
    expected = dot_product_attention(q, k, v)
    got = jax.jit(lambda q, k, v: context_attention(q, k, v, mesh=mesh, mode=mode))(q, k, v)
    assert rel_err(got, expected) <= 1e-5
    if length % dict(mesh.shape)["context"] == 0:
        batch, heads = MESHES[mesh_spec]
        assert _spec(got) == (batch, "context", heads, None)


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_direct_calls_and_key_mask(mode):
    mesh = make_mesh("data=2,context=4")
    q, k, v = _qkv(2, 8, 12, 4, 8, seed=1)
    mask = np.random.default_rng(2).random((2, 12)) < 0.6
    mask[:, 0] = True  # every query keeps at least one key
    expected = dot_product_attention(q, k, v, mask=jnp.asarray(mask)[:, None, None, :], scale=0.3)
    fn = ulysses_attention if mode == "ulysses" else ring_attention
    got = jax.jit(lambda q, k, v, m: fn(q, k, v, mesh=mesh, mask=m, scale=0.3))(q, k, v, mask)
    assert rel_err(got, expected) <= 1e-5
    assert _spec(got) == ("data", "context", None, None)
    # Lengths that do not divide: the direct calls refuse, context_attention pads (T=7, S=10 on context=4).
    q, k, v = q[:, :7], k[:, :10], v[:, :10]
    with pytest.raises(InputError, match="not divisible by the context axis size 4.*context_attention"):
        fn(q, k, v, mesh=mesh)
    expected = dot_product_attention(q, k, v, mask=jnp.asarray(mask[:, :10])[:, None, None, :])
    got = jax.jit(lambda q, k, v, m: context_attention(q, k, v, mesh=mesh, mode=mode, mask=m))(
        q, k, v, mask[:, :10]
    )
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_joint_segments(mode):
    """Text (5 tokens) and image (12 tokens) segments split over context on their own == one joint attention."""
    mesh = make_mesh("data=2,context=4")
    tq, tk, tv = _qkv(2, 5, 5, 4, 8, seed=3)
    iq, ik, iv = _qkv(2, 12, 12, 4, 8, seed=4)
    cat = lambda a, b: jnp.concatenate([a, b], axis=1)
    expected = dot_product_attention(cat(tq, iq), cat(tk, ik), cat(tv, iv))

    def run(tq, tk, tv, iq, ik, iv):
        return joint_context_attention([tq, iq], [tk, ik], [tv, iv], mesh=mesh, mode=mode)

    txt, img = jax.jit(run)(tq, tk, tv, iq, ik, iv)
    assert txt.shape == (2, 5, 4, 8) and img.shape == (2, 12, 4, 8)
    assert rel_err(cat(txt, img), expected) <= 1e-5
    assert _spec(img) == ("data", "context", None, None)


def test_heads_that_do_not_divide():
    mesh = make_mesh("data=2,context=4")
    q, k, v = _qkv(2, 8, 8, 6, 4)
    with pytest.raises(InputError, match=r"6 heads.*context=4.*mode='ring'"):
        ulysses_attention(q, k, v, mesh=mesh)
    with pytest.raises(InputError, match="mode='ring'"):
        context_attention(q, k, v, mesh=mesh, mode="ulysses")
    # Two heads over tensor=2 leave one per device: ulysses cannot split it over context=2.
    mesh = make_mesh("data=2,context=2,tensor=2")
    q2, k2, v2 = _qkv(2, 8, 8, 2, 4)
    with pytest.raises(InputError, match=r"1 heads \(of 2, over mesh axes tensor\)"):
        ulysses_attention(q2, k2, v2, mesh=mesh)
    # "auto" falls back to ring, which takes any head count.
    got = jax.jit(lambda q, k, v: context_attention(q, k, v, mesh=mesh, mode="auto"))(q2, k2, v2)
    assert rel_err(got, dot_product_attention(q2, k2, v2)) <= 1e-5
    with pytest.raises(InputError, match="'flash' is not one of"):
        context_attention(q, k, v, mesh=mesh, mode="flash")


def test_no_context_axis_is_plain_attention():
    mesh = make_mesh("data=2,fsdp=4")
    q, k, v = _qkv(2, 5, 7, 2, 4)
    mask = jnp.arange(7)[None, :] < jnp.asarray([[7], [4]])
    expected = dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    for fn in (context_attention, ulysses_attention, ring_attention):
        assert rel_err(fn(q, k, v, mesh=mesh, mask=mask), expected) <= 1e-5


@pytest.mark.parametrize("length", [16, 13])
@pytest.mark.parametrize("mesh_spec", list(MESHES))
def test_cross_attention_from_a_split_sequence(mesh_spec, length):
    """Queries split over `context`, short keys whole on every shard (a DiT's text cross-attention)."""
    from jdiff.parallel.attention import cross_context_attention

    mesh = make_mesh(mesh_spec)
    q, k, v = _qkv(2, length, 5, 8, 4, seed=3)
    expected = dot_product_attention(q, k, v, scale=0.4)
    got = jax.jit(lambda q, k, v: cross_context_attention(q, k, v, mesh=mesh, scale=0.4))(q, k, v)
    assert rel_err(got, expected) <= 1e-5
    if length % dict(mesh.shape)["context"] == 0:
        batch, heads = MESHES[mesh_spec]
        assert _spec(got) == (batch, "context", heads, None)


def test_cross_context_flag_routes_under_an_active_mesh():
    from jdiff.parallel import rules

    mesh = make_mesh("context=8")
    q, k, v = _qkv(1, 16, 5, 2, 4, seed=4)
    with rules.activate(mesh):
        got = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, cross_context=True))(q, k, v)
    assert rel_err(got, dot_product_attention(q, k, v)) <= 1e-5
    assert _spec(got) == (None, "context", None, None)
