"""The fused QK RMS-norm + RoPE kernel (Pallas, interpret mode on CPU) against the unfused XLA composition."""

from types import SimpleNamespace
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.kernels import norm_rope as nr
from jdiff.layers.rope import apply_rope, rope_cos_sin
from tests.utils import rel_err


def _tables(length: int):
    ids = np.stack([np.zeros(length), np.arange(length) // 7, np.arange(length) % 7], axis=1)
    return tuple(jnp.asarray(t) for t in rope_cos_sin(ids, (2, 4, 2), 10000.0))


def _inputs(key, shape, across):
    kx, ks = jax.random.split(key)
    x = 3 * jax.random.normal(kx, shape)
    scale = 1 + 0.3 * jax.random.normal(ks, (shape[2] * shape[3],) if across else (shape[3],))
    return x, scale


@pytest.mark.parametrize("across", [False, True])
def test_reference_is_norm_then_rope(across):
    x, scale = _inputs(jax.random.key(0), (2, 9, 3, 8), across)
    cos, sin = _tables(9)
    xn = np.asarray(x, np.float64)
    axes = (-2, -1) if across else (-1,)
    y = (
        xn
        / np.sqrt((xn**2).mean(axes, keepdims=True) + 1e-6)
        * np.asarray(scale).reshape(xn.shape[len(axes) * -1 :])
    )
    want = apply_rope(jnp.asarray(y, jnp.float32), cos, sin)
    got = nr.rms_norm_rope(x, scale, cos, sin, eps=1e-6, across_heads=across, implementation="xla")
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("length", [32, 37, 70])  # one block, a partial block, several blocks + a partial one
def test_pallas_matches_xla(across, length):
    x, scale = _inputs(jax.random.key(length), (2, length, 3, 8), across)
    cos, sin = _tables(length)
    kw = dict(eps=1e-6, across_heads=across)
    want = nr.rms_norm_rope(x, scale, cos, sin, implementation="xla", **kw)
    got = nr.rms_norm_rope(x, scale, cos, sin, implementation="pallas", **kw)
    assert got.shape == x.shape
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("text", [32, 5])  # aligned: both streams write one buffer; unaligned: concatenated
def test_joint_streams_with_their_own_weights(text):
    (xt, st), (xi, si) = (_inputs(jax.random.key(i), (2, n, 3, 8), False) for i, n in ((1, text), (2, 40)))
    cos, sin = _tables(text + 40)
    parts = [(xt, st, 1e-6), (xi, si, 1e-5)]
    want = jnp.concatenate(
        [
            nr.rms_norm_rope(xt, st, cos[:text], sin[:text], eps=1e-6, implementation="xla"),
            nr.rms_norm_rope(xi, si, cos[text:], sin[text:], eps=1e-5, implementation="xla"),
        ],
        axis=1,
    )
    for impl in ("xla", "pallas"):
        got = nr.joint_rms_norm_rope(parts, cos, sin, implementation=impl)
        assert got.shape == (2, text + 40, 3, 8)
        assert rel_err(got, want) < 1e-6, impl


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("length", [32, 37])
def test_bias_is_added_before_the_norm(across, length):
    """A projection's bias folded into the pass: the same as adding it to x first, both implementations."""
    x, scale = _inputs(jax.random.key(length + 1), (2, length, 3, 8), across)
    bias = 0.5 * jax.random.normal(jax.random.key(9), (3 * 8,))
    cos, sin = _tables(length)
    kw = dict(eps=1e-6, across_heads=across)
    want = nr.rms_norm_rope(x + bias.reshape(3, 8), scale, cos, sin, implementation="xla", **kw)
    assert rel_err(nr.rms_norm_rope(x, scale, cos, sin, implementation="xla", **kw), want) > 1e-2
    for impl in ("xla", "pallas"):
        got = nr.rms_norm_rope(x, scale, cos, sin, bias=bias, implementation=impl, **kw)
        assert rel_err(got, want) < 1e-6, impl


@pytest.mark.parametrize("text", [32, 5])
def test_joint_streams_with_their_own_biases(text):
    (xt, st), (xi, si) = (_inputs(jax.random.key(i), (2, n, 3, 8), False) for i, n in ((4, text), (5, 40)))
    bt, bi = (jax.random.normal(jax.random.key(i), (24,)) for i in (6, 7))
    cos, sin = _tables(text + 40)
    want = nr.joint_rms_norm_rope(
        [(xt + bt.reshape(3, 8), st, 1e-6), (xi + bi.reshape(3, 8), si, 1e-6)], cos, sin, implementation="xla"
    )
    for impl in ("xla", "pallas"):
        got = nr.joint_rms_norm_rope([(xt, st, 1e-6, bt), (xi, si, 1e-6, bi)], cos, sin, implementation=impl)
        assert rel_err(got, want) < 1e-6, impl


def test_choice_and_errors():
    x, scale = _inputs(jax.random.key(3), (1, 4, 2, 8), False)
    cos, sin = _tables(4)
    assert nr._default_implementation(x) == "xla"  # the tests run on CPU
    gpu = SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
    with mock.patch.object(jax, "devices", lambda: [gpu]):
        assert nr._default_implementation(x) == "pallas"
        # Triton's blocks need power-of-two sizes: a head dim of 12 failed to lower on an H200 (a tiny Wan).
        assert nr._default_implementation(jax.numpy.zeros((1, 4, 2, 12))) == "xla"
    with pytest.raises(ValueError, match="implementation"):
        nr.rms_norm_rope(x, scale, cos, sin, eps=1e-6, implementation="triton")
    with pytest.raises(ValueError, match="joint length 4"):
        nr.rms_norm_rope(x, scale, cos[:3], sin[:3], eps=1e-6)
