"""`dot_product_attention(key_mask=...)`: a [B, S] key padding mask, locally and sequence-parallel."""

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.layers import dot_product_attention
from jdiff.parallel import rules
from jdiff.parallel.mesh import make_mesh
from tests.utils import rel_err


def test_key_mask_local_and_context_parallel():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 12, 3, 8)), jnp.float32) for _ in range(3))
    key_mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]))
    want = dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
    # Row 1 ignores its padded keys: the same as attending over its first 7 keys only.
    alone = dot_product_attention(q[1:], k[1:, :7], v[1:, :7])
    assert rel_err(want[1:], alone) <= 1e-6
    assert rel_err(dot_product_attention(q, k, v, key_mask=key_mask), want) <= 1e-6
    with rules.activate(make_mesh("context=4,data=2"), sequence_parallel="ring"):
        got = jax.jit(lambda *a: dot_product_attention(*a, key_mask=key_mask, context_parallel=True))(q, k, v)
    assert rel_err(got, want) <= 1e-5
