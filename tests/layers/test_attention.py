"""The attention layer's backends against each other (XLA is the reference; splash runs interpreted on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.layers.attention import dot_product_attention
from tests.utils import rel_err


def _qkv(b, t, s, n, h, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (b, t, n, h)),
        jax.random.normal(keys[1], (b, s, n, h)),
        jax.random.normal(keys[2], (b, s, n, h)),
    )


def _reference(q, k, v, scale=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) * (q.shape[-1] ** -0.5 if scale is None else scale)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("t, s", [(128, 128), (200, 200), (130, 300)])  # unpadded, padded, cross-length
def test_splash_matches_reference(t, s):
    q, k, v = _qkv(2, t, s, 2, 64)
    got = dot_product_attention(q, k, v, implementation="splash")
    assert rel_err(got, _reference(q, k, v)) <= 1e-5


def test_xla_matches_reference_with_scale_and_mask():
    q, k, v = _qkv(1, 16, 24, 3, 8, seed=1)
    assert rel_err(dot_product_attention(q, k, v, scale=0.3), _reference(q, k, v, 0.3)) <= 1e-5
    mask = jnp.arange(24)[None, None, None, :] < 20
    want = _reference(q, k[:, :20], v[:, :20])
    assert rel_err(dot_product_attention(q, k, v, mask=mask), want) <= 1e-5


def test_backend_choice(monkeypatch):
    from jdiff.kernels import attention

    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
    assert attention.default_implementation(jnp.bfloat16, 128) == "cudnn"
    assert (
        attention.default_implementation(jnp.bfloat16, 512) == "xla"
    )  # FLUX VAE mid-block: one 512-wide head
    assert attention.default_implementation(jnp.bfloat16, 12) == "xla"  # not a multiple of 8
    assert attention.default_implementation(jnp.float32, 128) == "xla"  # cuDNN has no float32 kernel
    monkeypatch.setattr(attention.jax, "default_backend", lambda: "tpu")
    assert attention.default_implementation(jnp.bfloat16, 128) == "splash"
