"""CLIP text encoder: parity with transformers' `CLIPTextModel` through the real loader, real-size shapes and
key coverage from safetensors headers, and config / input errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jdiff.errors import ConversionError, InputError
from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.clip.plan import SPEC
from jdiff.weights import loading
from jdiff.weights.config import from_dict
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import meta_state_shapes, rel_err, write_sparse_safetensors

VOCAB = 1000
# Legacy eos_token_id: pooling takes the argmax of the ids, so the end-of-text id must be the largest one
# (as 49407 is in CLIP's vocabulary); no id equals 2.
LEGACY_EOS, LEGACY_END = 2, VOCAB - 1
# Non-legacy: pooling takes the first position equal to eos_token_id; word ids above it make sure an argmax
# of the ids would pick another position.
NEW_EOS = 500

# FLUX.1's text_encoder/config.json (CLIP ViT-L/14 text tower).
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def _tiny(**kw) -> transformers.CLIPTextConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        pad_token_id=1,
    )
    return transformers.CLIPTextConfig(**{**base, **kw})


def _token_ids(end: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Prompts of different lengths: bos, words, the end-of-text id `end`, then padding as the CLIP tokenizers
    do it (row 0 pads with `end` itself, as FLUX's CLIP tokenizer does: pooling must take the first one)."""
    ids = rng.integers(3, VOCAB - 1, size=(3, length))
    ids[ids == end] = 3
    ids[:, 0] = 0
    for row, (stop, pad) in enumerate([(length // 3, end), (length - 1, 1), (length // 2, 1)]):
        ids[row, stop] = end
        ids[row, stop + 1 :] = pad
    return ids


@pytest.mark.parametrize(
    "hidden_act, eos, heads, layers, length",
    [
        ("quick_gelu", LEGACY_EOS, 4, 2, 77),
        ("quick_gelu", NEW_EOS, 2, 3, 16),
        ("gelu", LEGACY_EOS, 2, 2, 20),
        ("gelu", NEW_EOS, 4, 4, 77),
    ],
)
def test_parity_with_transformers(tmp_path, hidden_act, eos, heads, layers, length):
    config = _tiny(
        hidden_act=hidden_act, eos_token_id=eos, num_attention_heads=heads, num_hidden_layers=layers
    )
    ref = transformers.CLIPTextModel(config).eval()
    with torch.no_grad():
        for p in ref.parameters():  # move norms and zero biases away from their initial values
            p.add_(0.1 * torch.randn_like(p))
    # The keys as FLUX.1 ships them (`text_model.` prefix, see jdiff/models/clip/plan.py): transformers 5
    # writes a freshly built CLIPTextModel without it.
    cfg, model = parity.load(ref, SPEC, tmp_path, prefix="text_model.")
    assert cfg.eos_token_id == eos and cfg.hidden_act == hidden_act
    ids = _token_ids(eos if eos != LEGACY_EOS else LEGACY_END, length, np.random.default_rng(layers))
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids))
    hidden, pooled = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids, jnp.int32))
    parity.assert_close(hidden, want.last_hidden_state, what="hidden states")
    parity.assert_close(pooled, want.pooler_output, what="pooled")


def test_bfloat16_follows_the_weights(tmp_path):
    ref = transformers.CLIPTextModel(_tiny(eos_token_id=NEW_EOS)).eval()
    _, model = parity.load(ref, SPEC, tmp_path, dtype=jnp.bfloat16, prefix="text_model.")
    ids = _token_ids(NEW_EOS, 16, np.random.default_rng(0))
    hidden, pooled = model(jnp.asarray(ids, jnp.int32))
    assert hidden.dtype == pooled.dtype == jnp.bfloat16
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids))
    assert rel_err(hidden.astype(jnp.float32), want.last_hidden_state.numpy()) < 2e-2
    assert rel_err(pooled.astype(jnp.float32), want.pooler_output.numpy()) < 2e-2


def _clip_l_ref() -> transformers.CLIPTextModel:
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_L))


def _write_clip_l(folder, extra: dict | None = None, drop: tuple[str, ...] = ()) -> None:
    """FLUX.1's text_encoder folder at real size, header only: config.json and a sparse safetensors file."""
    tensors = {f"text_model.{k}": v for k, v in meta_state_shapes(_clip_l_ref).items()}
    tensors.update(extra or {})
    for k in drop:
        del tensors[k]
    write_sparse_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps(CLIP_L))


def test_clip_l_shapes_and_key_coverage(tmp_path):
    _write_clip_l(tmp_path)
    cfg = SPEC.read_config(tmp_path)
    assert (cfg.hidden_size, cfg.head_dim, cfg.hidden_act, cfg.eos_token_id) == (768, 64, "quick_gelu", 2)
    _, state = SPEC.abstract(cfg)
    shapes = loading.param_shapes(state)
    assert shapes["text_model.embeddings.token_embedding.embedding"] == (49408, 768)
    assert shapes["text_model.encoder.layers.self_attn.q_proj.kernel"] == (12, 768, 768)
    assert shapes["text_model.encoder.layers.mlp.fc1.kernel"] == (12, 768, 3072)
    specs = {loading.path_str(p): v.get_metadata()["out_sharding"] for p, v in nnx.to_flat_state(state)}
    assert specs["text_model.embeddings.token_embedding.embedding"] == ("vocab", "embed")
    assert specs["text_model.encoder.layers.self_attn.q_proj.kernel"] == ("layers", "embed", "heads")
    assert specs["text_model.encoder.layers.mlp.fc2.kernel"] == ("layers", "mlp", "embed")

    assignments = loading.check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")
    assert len(assignments) == len(shapes) == 20
    q = next(a for a in assignments if a.target == "text_model.encoder.layers.self_attn.q_proj.kernel")
    assert q.sources[11] == ("text_model.encoder.layers.11.self_attn.q_proj.weight",)


def test_clip_l_position_ids_buffer_is_ignored(tmp_path):
    # Checkpoints written by older transformers versions carry the position_ids buffer.
    _write_clip_l(tmp_path, extra={"text_model.embeddings.position_ids": ((1, 77), "I64")})
    loading.check(SPEC, SPEC.read_config(tmp_path), open_weights(tmp_path), component="text_encoder")


def test_clip_l_missing_and_unexpected_keys(tmp_path):
    missing = "text_model.encoder.layers.7.mlp.fc2.weight"
    _write_clip_l(tmp_path, extra={"text_model.text_projection.weight": ((768, 768), "F32")}, drop=(missing,))
    with pytest.raises(ConversionError) as e:
        loading.check(SPEC, SPEC.read_config(tmp_path), open_weights(tmp_path), component="text_encoder")
    msg = str(e.value)
    assert msg.startswith("text_encoder: 2 weight problem(s)")
    assert f"missing source key {missing!r} for target 'text_model.encoder.layers.mlp.fc2.kernel'" in msg
    assert "unexpected source key 'text_model.text_projection.weight'" in msg


def test_unprefixed_layout_loads(tmp_path):
    # What transformers 5 writes for a CLIPTextModel it built itself: every key lacks `text_model.`.
    tensors = meta_state_shapes(_clip_l_ref)
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    cfg = from_dict(CLIPTextConfig, CLIP_L)
    assignments = loading.check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")
    q = next(a for a in assignments if a.target == "text_model.encoder.layers.self_attn.q_proj.kernel")
    assert q.sources[11] == ("encoder.layers.11.self_attn.q_proj.weight",)
    # The error names the key as this file would save it: without `text_model.`.
    del tensors["final_layer_norm.weight"]
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ConversionError, match=r"missing source key 'final_layer_norm\.weight'"):
        loading.check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")


def test_parity_unprefixed_save(tmp_path):
    ref = transformers.CLIPTextModel(_tiny()).eval()
    _, model = parity.load(ref, SPEC, tmp_path)  # transformers 5 layout: no `text_model.` prefix
    ids = _token_ids(2, 16, np.random.default_rng(1))
    with torch.no_grad():
        want = ref(torch.from_numpy(ids).long())
    hidden, pooled = model(jnp.asarray(ids))
    parity.assert_close(hidden, want.last_hidden_state, what="hidden states")
    parity.assert_close(pooled, want.pooler_output, what="pooled")


@pytest.mark.parametrize(
    "override, match",
    [
        (
            {"hidden_act": "relu"},
            r"hidden_act 'relu' is not supported; expected one of \['quick_gelu', 'gelu'\]",
        ),
        ({"num_attention_heads": 5}, "does not split into 5 attention heads"),
        ({"eos_token_id": None}, "eos_token_id should be an integer"),
        ({"num_hidden_layers": 0}, "num_hidden_layers should be a positive integer"),
    ],
)
def test_bad_config(override, match):
    with pytest.raises(InputError, match=match):
        from_dict(CLIPTextConfig, {**CLIP_L, **override})


def test_too_long_prompt():
    cfg = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=4,
    )
    model = SPEC.module_cls(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match=r"length <= 4 \(max_position_embeddings\), got shape \(1, 5\)"):
        model(jnp.zeros((1, 5), jnp.int32))


def test_preset_is_the_released_config():
    assert from_dict(CLIPTextConfig, CLIP_L) == CLIPTextConfig.large()
