"""HunyuanVideo-1.5's glyph encoder (byT5, a T5 encoder): parity at a byT5-shaped toy size through the real
loader, and the released layout's key coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from jdiff.models.t5.config import T5Config
from jdiff.models.t5.plan import SPEC
from tests import parity

BYT5 = parity.kwargs(T5Config.byt5_glyph())


def test_byt5_shaped_parity(tmp_path):
    """Attention narrower than the model width (byT5: 6 x 64 < 1472), odd heads, gated GELU, padding."""
    cfg = T5Config.tiny(
        d_model=23, num_heads=3, d_kv=8, d_ff=29, vocab_size=300, feed_forward_proj="gated-gelu"
    )
    ref = parity.randomized(transformers.T5EncoderModel(transformers.T5Config(**parity.kwargs(cfg))), 0.2)
    _, model = parity.load(ref, SPEC, tmp_path)
    ids = np.random.default_rng(0).integers(1, 300, (2, 11))
    mask = (np.arange(11)[None] < np.array([[11], [5]])).astype(np.int64)
    ids[mask == 0] = 0
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    got = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    parity.assert_close(got, want)


def test_real_size_keys(tmp_path):
    shapes = parity.check_coverage(
        SPEC,
        T5Config.byt5_glyph(),
        parity.real_layout(
            lambda: transformers.T5EncoderModel(transformers.T5Config(**BYT5)).to(torch.bfloat16)
        ),
        tmp_path,
        component="text_encoder_2",
        filename="model.safetensors",
        missing="encoder.block.11.layer.1.DenseReluDense.wo.weight",
        unexpected=("encoder.block.0.layer.0.SelfAttention.q.bias", (384,)),
    )
    assert shapes["shared.embedding"] == (1510, 1472)
    assert shapes["encoder.block.layer.0.SelfAttention.q.kernel"] == (12, 1472, 384)
    assert 2.1e8 < parity.n_params(shapes) < 2.3e8  # byT5-small's encoder with the glyph tokens: 0.22B
