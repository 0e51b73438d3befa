"""The local attention kernel's implementations agree, and a key-only mask reaches cuDNN in the full shape it
takes (a [B, 1, 1, S] text-padding mask made Qwen-Image with true CFG fail on GPUs before 2026-12-04); key
lengths (trailing padding) equal the mask they stand for."""

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.kernels.attention import cudnn_mask, local_attention


def test_key_only_mask_is_spelled_out_for_cudnn():
    mask = jnp.ones((2, 1, 1, 7), bool).at[1, :, :, :3].set(False)
    full = cudnn_mask(mask, 5)
    assert full.shape == (2, 1, 5, 7)
    np.testing.assert_array_equal(full, np.broadcast_to(mask, (2, 1, 5, 7)))
    already = jnp.ones((2, 3, 5, 7), bool)
    assert cudnn_mask(already, 5) is already
    assert cudnn_mask(mask, 1) is mask  # one query: nothing to spell out


def test_masked_attention_matches_the_mask_spelled_out():
    q, k, v = (jax.random.normal(key, (2, 5, 3, 8)) for key in jax.random.split(jax.random.key(0), 3))
    mask = jnp.ones((2, 1, 1, 5), bool).at[1, :, :, :2].set(False)
    got = local_attention(q, k, v, mask=mask, implementation="xla")
    want = local_attention(q, k, v, mask=cudnn_mask(mask, 5), implementation="xla")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The masked keys do not matter for the padded row.
    k2 = k.at[1, :2].set(100.0)
    np.testing.assert_allclose(
        local_attention(q, k2, v, mask=mask, implementation="xla")[1], got[1], atol=1e-5
    )


def test_key_lengths_equal_a_trailing_padding_mask():
    """`key_lengths` (cuDNN's padding mask, at flash speed) attends exactly the leading keys a mask keeps."""
    q, k, v = (jax.random.normal(key, (2, 4, 3, 8)) for key in jax.random.split(jax.random.key(1), 3))
    k, v = jnp.concatenate([k, k[:, :3]], 1), jnp.concatenate([v, v[:, :3]], 1)  # S = 7
    lengths = jnp.array([7, 4], jnp.int32)
    mask = (jnp.arange(7)[None, :] < lengths[:, None])[:, None, None, :]
    got = local_attention(q, k, v, key_lengths=lengths, implementation="xla")
    want = local_attention(q, k, v, mask=mask, implementation="xla")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[1], local_attention(q, k, v, implementation="xla")[1], atol=1e-3)
