"""CLIPTextModelWithProjection (SDXL's text_encoder_2) and hidden_states[i] access: parity with transformers
through the real loader; real-size (ViT-bigG text tower) key coverage from headers."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jdiff.errors import InputError
from jdiff.models.clip import plan, projection_plan
from jdiff.models.clip.config import CLIPTextConfig
from tests import parity

VOCAB = 1000


def _ids(eos: int, rng) -> np.ndarray:
    """bos, words, end-of-text, padding ("!" = 0 as SD 2.x / SDXL's second tokenizer pads, or eos)."""
    ids = rng.integers(3, VOCAB - 1, size=(2, 16))
    ids[:, 0] = 0
    ids[0, 5], ids[0, 6:] = eos, 0
    ids[1, 15] = eos
    return ids


def _encode(model, ids, index):
    return nnx.jit(lambda m, x: m.encode(x, index))(model, jnp.asarray(ids, jnp.int32))


@pytest.mark.parametrize(
    ("with_projection", "act", "eos", "layers", "index"),
    [(True, "gelu", 2, 3, -2), (True, "quick_gelu", 500, 2, 0), (False, "quick_gelu", 2, 3, -2), (False, "gelu", 2, 2, -1)],
)  # fmt: skip
def test_parity_with_transformers(tmp_path, with_projection, act, eos, layers, index):
    cfg = CLIPTextConfig.tiny(
        hidden_act=act, eos_token_id=eos, num_hidden_layers=layers, num_attention_heads=2, projection_dim=24
    )
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    ref = parity.randomized(
        cls(transformers.CLIPTextConfig(**parity.kwargs(cfg, bos_token_id=0, pad_token_id=1)))
    )
    spec = (projection_plan if with_projection else plan).SPEC
    _, model = parity.load(ref, spec, tmp_path)
    ids = _ids(VOCAB - 1 if eos == 2 else eos, np.random.default_rng(layers))
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    out = _encode(model, ids, index)
    parity.assert_close(out.last_hidden_state, want.last_hidden_state, what="last_hidden_state")
    parity.assert_close(out.hidden_state, want.hidden_states[index], what=f"hidden_states[{index}]")
    if with_projection:
        parity.assert_close(out.text_embeds, want.text_embeds, what="text_embeds")
        _, embeds = model(jnp.asarray(ids))
        parity.assert_close(embeds, want.text_embeds)
    else:
        parity.assert_close(out.pooled, want.pooler_output, what="pooled")
        assert out.text_embeds is None


def test_missing_hidden_state():
    model = plan.SPEC.module_cls(CLIPTextConfig.tiny(num_hidden_layers=2), rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match="hidden state -4 of 2 layers"):
        model.encode(jnp.zeros((1, 4), jnp.int32), -4)


def test_bigg_real_size_coverage(tmp_path):
    cfg = CLIPTextConfig.bigg()
    layout = parity.real_layout(
        lambda: transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**parity.kwargs(cfg)))
    )
    assert "text_model.embeddings.token_embedding.weight" in layout
    shapes = parity.check_coverage(
        projection_plan.SPEC, cfg, layout, tmp_path, component="text_encoder_2", filename="model.safetensors",
        missing="text_projection.weight", unexpected=("text_model.encoder.layers.32.mlp.fc1.weight", (5120, 1280)),
    )  # fmt: skip
    assert shapes["text_projection.kernel"] == (1280, 1280)
    assert shapes["text_model.encoder.layers.mlp.fc1.kernel"] == (32, 1280, 5120)
    assert 694e6 < parity.n_params(shapes) < 696e6


def test_openclip_h_real_size_coverage(tmp_path):
    # SD 2.x's text_encoder: a CLIPTextModel with exact GELU and 23 layers.
    cfg = CLIPTextConfig.openclip_h()
    layout = parity.real_layout(
        lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**parity.kwargs(cfg))),
        prefix="text_model.",
    )
    shapes = parity.check_coverage(
        plan.SPEC, cfg, layout, tmp_path, component="text_encoder", filename="model.safetensors",
        missing="text_model.final_layer_norm.bias", unexpected=("text_projection.weight", (512, 1024)),
    )  # fmt: skip
    assert shapes["text_model.encoder.layers.self_attn.q_proj.kernel"] == (23, 1024, 1024)
