"""The shared decoder's pieces that the family parity tests do not isolate: the attention mask (causal,
padding on either side, sliding window, no empty rows), hidden-state index parsing, the rotary tables against
transformers' Qwen2.5-VL mrope, and the plan engine's source aliases that the multimodal layouts need."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLConfig as TorchConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

from jdiff.errors import ConversionError, InputError
from jdiff.models.llm.decoder import (
    causal_padding_mask,
    concat_hidden_states,
    hidden_state_indices,
    rope_tables,
)
from jdiff.weights.plan import Plan, resolve


def test_mask_right_left_and_window():
    pad = jnp.asarray([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    m = np.asarray(causal_padding_mask(pad, 5))[:, 0]
    # Right padding: real keys only, causal; padded queries still see the real keys before them.
    np.testing.assert_array_equal(m[0, 4], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(m[0, 1], [1, 1, 0, 0, 0])
    # Left padding: real queries see real keys; a padded query with no real key attends to itself.
    np.testing.assert_array_equal(m[1, 3], [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(m[1, 0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(m[1, 1], [0, 1, 0, 0, 0])
    w = np.asarray(causal_padding_mask(None, 5, sliding_window=2))[0, 0]
    np.testing.assert_array_equal(w[4], [0, 0, 0, 1, 1])
    assert m.any(-1).all() and w.any(-1).all()


def test_hidden_state_indices():
    assert hidden_state_indices(None, 3) == (0, 1, 2, 3)
    assert hidden_state_indices((-1, -2, 0), 3) == (3, 2, 0)
    for bad in [(4,), (-5,), (True,), (1.0,), ()]:
        with pytest.raises(InputError):
            hidden_state_indices(bad, 3)


def test_concat_hidden_states_is_flux2_layout():
    h = np.random.default_rng(0).normal(size=(3, 2, 5, 4)).astype(np.float32)  # [J, B, L, D]
    # FLUX.2: torch.stack(layers, dim=1).permute(0, 2, 1, 3).reshape(B, L, J * D)
    want = torch.from_numpy(h).permute(1, 0, 2, 3).permute(0, 2, 1, 3).reshape(2, 5, 12).numpy()
    np.testing.assert_array_equal(np.asarray(concat_hidden_states(jnp.asarray(h))), want)


def test_mrope_tables_match_transformers():
    cfg = TorchConfig(text_config=dict(hidden_size=64, num_attention_heads=2, rope_parameters={
        "rope_type": "default", "rope_theta": 1000.0, "mrope_section": [4, 6, 6]}))  # fmt: skip
    ref = Qwen2_5_VLRotaryEmbedding(cfg.text_config)
    pos = np.random.default_rng(1).integers(0, 300, (3, 2, 7))
    want_cos, want_sin = ref(torch.zeros(1, dtype=torch.float32), torch.from_numpy(pos))
    cos, sin = rope_tables(jnp.asarray(pos), 32, 1000.0, (4, 6, 6))
    np.testing.assert_allclose(np.asarray(cos), want_cos.numpy(), atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), want_sin.numpy(), atol=2e-6)


def test_source_aliases():
    plan = Plan(source_aliases=((r"visual\.(.*)", r"model.visual.\1"),
                                (r"model\.(?!language_model\.|visual\.)(.*)", r"model.language_model.\1")))  # fmt: skip
    targets = {"model.visual.w.kernel": (2, 3), "model.language_model.norm.scale": (3,)}
    old = {"visual.w.weight": (3, 2), "model.norm.weight": (3,)}
    new = {"model.visual.w.weight": (3, 2), "model.language_model.norm.weight": (3,)}
    for sources in (old, new):
        got = {a.target: a.sources[0][0] for a in resolve(plan, targets, sources, component="c")}
        assert set(got.values()) == set(sources)
    with pytest.raises(ConversionError, match="unexpected source key 'model.stray.weight'"):
        resolve(plan, targets, {**old, "model.stray.weight": (1,)}, component="c")
