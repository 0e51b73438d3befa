"""Mistral-3 text encoder: hidden-state parity with the language model of transformers'
Mistral3ForConditionalGeneration through save_pretrained + the jdiff loader (GQA, head_dim apart from
hidden_size // heads, sliding window, right padding as FLUX.2-dev pads), and real-size (Mistral-Small-3.x 24B,
FLUX.2-dev's text encoder) key coverage in transformers 5's and the earlier layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jdiff.errors import InputError
from jdiff.models.mistral3.config import Mistral3Config
from jdiff.models.mistral3.plan import SPEC
from jdiff.models.mistral3.text_encoder import concat_hidden_states, encode
from jdiff.weights.config import from_dict
from jdiff.weights.loading import check
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import write_sparse_safetensors

TINY_VISION = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                   image_size=28, patch_size=14)  # fmt: skip
# Mistral-Small-3.1/3.2-24B's Pixtral tower (FLUX.2-dev's text_encoder/config.json vision_config).
REAL_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   head_dim=64, image_size=1540, patch_size=14, rope_theta=10000.0)  # fmt: skip


def _ref_config(cfg, vision):
    return transformers.Mistral3Config(**parity.kwargs(cfg, vision_config=vision))


_run = jax.jit(lambda m, i, a, layers: m(i, a, hidden_layers=layers), static_argnums=3)


@pytest.mark.parametrize("sliding_window", [6, None])
def test_parity(tmp_path, sliding_window):
    cfg = Mistral3Config.tiny(sliding_window=sliding_window)
    ref = parity.randomized(transformers.Mistral3ForConditionalGeneration(_ref_config(cfg, TINY_VISION)))
    _, model = parity.load(ref, SPEC, tmp_path)
    ids = np.random.default_rng(2).integers(1, 1000, (2, 13))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding, as FLUX.2-dev pads to max_length
    with torch.no_grad():
        want = ref(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
        )
    want = [h.numpy() for h in want.hidden_states]
    got = _run(model, jnp.asarray(ids), jnp.asarray(mask), None)
    for i, w in enumerate(want):
        parity.assert_close(got[i], w, what=f"hidden_states[{i}]")
    # FLUX.2-style: a subset (the last layer skipped), side by side per token.
    got = concat_hidden_states(encode(model, ids, mask, hidden_layers=(2, 1)))
    flux2 = (
        torch.stack([torch.from_numpy(want[k]) for k in (2, 1)], dim=1).permute(0, 2, 1, 3).reshape(2, 13, -1)
    )
    parity.assert_close(got, flux2)


def test_config_reads_nested_text_config():
    raw = {"text_config": {"model_type": "mistral", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                           "rope_parameters": {"rope_type": "default", "rope_theta": 1e9}},
           "vision_config": {"model_type": "pixtral"}, "image_token_index": 10}  # fmt: skip
    cfg = from_dict(Mistral3Config, raw)
    assert cfg.text_config.head_dim == 16 and cfg.text_config.rope_theta == 1e9
    assert cfg.vision_config is None
    hash(cfg)
    with pytest.raises(InputError, match="model_type 'llama'"):
        from_dict(Mistral3Config, {"text_config": {"model_type": "llama"}})


def _legacy(key: str) -> str:
    # transformers < 4.52 saved Mistral3ForConditionalGeneration with the language model's own prefix.
    for new, old in [("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("lm_head.", "language_model.lm_head.")]:  # fmt: skip
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def _real_layout(cfg):
    return parity.real_layout(
        lambda: transformers.Mistral3ForConditionalGeneration(_ref_config(cfg, REAL_VISION))
    )


def test_real_size_key_coverage(tmp_path):
    cfg = Mistral3Config.small_24b()
    tensors = _real_layout(cfg)
    assert any(k.startswith("model.vision_tower.") for k in tensors)  # ignored, not missing
    shapes = parity.check_coverage(
        SPEC, cfg, tensors, tmp_path, component="text_encoder", filename="model.safetensors",
        missing="model.language_model.layers.39.mlp.down_proj.weight",
        unexpected=("model.language_model.layers.40.input_layernorm.weight", (5120,)),
    )  # fmt: skip
    assert shapes["model.language_model.layers.self_attn.q_proj.kernel"] == (40, 5120, 4096)
    assert shapes["model.language_model.embed_tokens.embedding"] == (131072, 5120)
    assert abs(parity.n_params(shapes) - 22.90e9) < 0.01e9  # the 24B minus its LM head and vision tower


def test_real_size_legacy_layout(tmp_path):
    cfg = Mistral3Config.small_24b()
    tensors = {_legacy(k): v for k, v in _real_layout(cfg).items()}
    assert (
        "language_model.lm_head.weight" in tensors
        and "vision_tower.transformer.layers.0.ffn_norm.weight" in tensors
    )
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    assignments = check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")
    by_target = {a.target: a for a in assignments}
    assert by_target["model.language_model.layers.mlp.up_proj.kernel"].sources[3] == (
        "language_model.model.layers.3.mlp.up_proj.weight",
    )


def test_real_size_base_model_layout(tmp_path):
    # transformers' Mistral3Model (no LM head) saves `language_model.*`, `vision_tower.*`, `multi_modal_projector.*`.
    cfg = Mistral3Config.small_24b()
    tensors = parity.real_layout(lambda: transformers.Mistral3Model(_ref_config(cfg, REAL_VISION)))
    assert "language_model.norm.weight" in tensors
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    assignments = {a.target: a for a in check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")}
    assert assignments["model.language_model.norm.scale"].sources == (("language_model.norm.weight",),)


def test_bf16_smoke(tmp_path):
    cfg = Mistral3Config.tiny()
    ref = parity.randomized(transformers.Mistral3ForConditionalGeneration(_ref_config(cfg, TINY_VISION)))
    _, model = parity.load(ref, SPEC, tmp_path, dtype=jnp.bfloat16)
    assert model.model.language_model.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    ids = np.random.default_rng(5).integers(1, 1000, (1, 9))
    got = encode(model, ids, None, hidden_layers=(2,))
    assert got.dtype == jnp.bfloat16
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), output_hidden_states=True).hidden_states[2]
    parity.assert_close(got[0], want, tol=3e-2)
