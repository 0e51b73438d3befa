"""Qwen3 text encoder: hidden-state parity with transformers' Qwen3Model / Qwen3ForCausalLM through
save_pretrained + the jdiff loader (GQA, head_dim apart from hidden_size // heads, left and right padding),
config layouts, and the real-size (Qwen3-4B, Qwen3-8B) key coverage from headers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jdiff.errors import InputError
from jdiff.models.qwen3.config import Qwen3Config
from jdiff.models.qwen3.plan import SPEC
from jdiff.models.qwen3.text_encoder import encode
from jdiff.weights.config import from_dict
from tests import parity


def _reference(cls, cfg):
    ref = cls(transformers.Qwen3Config(**parity.kwargs(cfg)))
    return parity.randomized(ref)


def _inputs(length: int, vocab: int, side: str):
    ids = np.random.default_rng(1).integers(1, vocab, (2, length))
    mask = np.ones((2, length), np.int64)
    pad = length // 3
    if side == "right":
        mask[1, length - pad :] = 0
    else:
        mask[1, :pad] = 0
    return ids, mask


def _want(ref, ids, mask):
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
        )
    return [h.float().numpy() for h in out.hidden_states]


_run = jax.jit(lambda m, i, a, layers: m(i, a, hidden_layers=layers), static_argnums=3)


@pytest.mark.parametrize(
    ("cls", "side"), [(transformers.Qwen3Model, "left"), (transformers.Qwen3ForCausalLM, "right")]
)
def test_parity_all_hidden_states(tmp_path, cls, side):
    cfg = Qwen3Config.tiny(attention_bias=cls is transformers.Qwen3Model)
    ref = _reference(cls, cfg)
    _, model = parity.load(ref, SPEC, tmp_path)
    ids, mask = _inputs(11, cfg.vocab_size, side)
    want = _want(ref, ids, mask)
    got = _run(model, jnp.asarray(ids), jnp.asarray(mask), None)
    assert got.shape == (cfg.num_hidden_layers + 1, 2, 11, cfg.hidden_size) and got.dtype == jnp.float32
    # Left-padded queries with no real key before them are padding, unspecified in the reference too.
    keep = mask.astype(bool) if side == "left" else np.ones_like(mask, bool)
    for i, w in enumerate(want):
        parity.assert_close(np.asarray(got[i])[keep], w[keep], what=f"hidden_states[{i}]")


def test_selected_layers_skip_the_rest(tmp_path):
    cfg = Qwen3Config.tiny(num_hidden_layers=4)
    ref = _reference(transformers.Qwen3Model, cfg)
    _, model = parity.load(ref, SPEC, tmp_path)
    ids, mask = _inputs(9, cfg.vocab_size, "right")
    want = _want(ref, ids, mask)
    for layers in [(-2,), (3, 1, 0, -1)]:
        got = encode(model, ids, mask, hidden_layers=layers)
        assert got.shape[0] == len(layers)
        for j, i in enumerate(layers):
            parity.assert_close(got[j], want[i], what=f"hidden_states[{i}]")
    with pytest.raises(InputError, match="out of range"):
        model(jnp.asarray(ids), jnp.asarray(mask), hidden_layers=(5,))


def test_rope_parameters_layout_and_bf16(tmp_path):
    # transformers 5 writes rope_parameters instead of rope_theta: both read the same.
    cfg = from_dict(Qwen3Config, {**parity.kwargs(Qwen3Config.tiny()), "rope_theta": None,
                                  "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}})  # fmt: skip
    assert cfg.rope_theta == 500.0 and cfg == Qwen3Config.tiny(rope_theta=500.0)
    ref = _reference(transformers.Qwen3ForCausalLM, cfg)
    _, model = parity.load(ref, SPEC, tmp_path, dtype=jnp.bfloat16)
    assert model.model.layers.self_attn.q_norm.scale[...].dtype == jnp.bfloat16
    ids, mask = _inputs(9, cfg.vocab_size, "right")
    got = _run(model, jnp.asarray(ids), jnp.asarray(mask), (-1,))
    assert got.dtype == jnp.bfloat16
    parity.assert_close(got[0], _want(ref, ids, mask)[-1], tol=3e-2)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"num_key_value_heads": 2}, "not a multiple of num_key_value_heads"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn'"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ],
)
def test_bad_config(override, match):
    with pytest.raises(InputError, match=match):
        Qwen3Config.tiny(**override)


@pytest.mark.parametrize(
    ("name", "causal_lm"), [("qwen3_4b", False), ("qwen3_8b", True)]
)  # Z-Image, klein 9B
def test_real_size_key_coverage(tmp_path, name, causal_lm):
    cfg = getattr(Qwen3Config, name)()
    ref_cfg = transformers.Qwen3Config(**parity.kwargs(cfg))
    cls = transformers.Qwen3ForCausalLM if causal_lm else transformers.Qwen3Model
    prefix = "model." if causal_lm else ""
    tensors = parity.real_layout(lambda: cls(ref_cfg))
    shapes = parity.check_coverage(
        SPEC, cfg, tensors, tmp_path, component="text_encoder", filename="model.safetensors",
        missing=f"{prefix}layers.17.self_attn.k_norm.weight", unexpected=(f"{prefix}layers.36.mlp.up_proj.weight", (8, 8)),
    )  # fmt: skip
    assert shapes["model.layers.self_attn.q_proj.kernel"] == (36, cfg.hidden_size, 32 * 128)
    assert shapes["model.layers.self_attn.k_proj.kernel"] == (36, cfg.hidden_size, 8 * 128)
    assert abs(parity.n_params(shapes) - {"qwen3_4b": 4.02e9, "qwen3_8b": 7.57e9}[name]) < 0.05e9
