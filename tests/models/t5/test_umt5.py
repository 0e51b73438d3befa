"""UMT5 encoder: parity with transformers' UMT5EncoderModel through save_pretrained + the jdiff loader, and the
real-size (Wan's UMT5-XXL) plan checked against header-only weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jdiff.errors import ConversionError, InputError
from jdiff.models.t5.config import T5Config, UMT5Config
from jdiff.models.t5.encoder import UMT5EncoderModel
from jdiff.models.t5.umt5_plan import SPEC
from jdiff.weights.config import from_dict
from jdiff.weights.loading import check, load_component, param_shapes
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import rel_err, write_sparse_safetensors

TINY = parity.kwargs(UMT5Config.tiny())
# text_encoder/config.json of the Wan2.1 / Wan2.2 diffusers checkpoints (UMT5-XXL encoder).
XXL = parity.kwargs(UMT5Config.xxl())
BIAS = "encoder.block.layer.0.SelfAttention.relative_attention_bias.embedding"


def _reference(tmp_path, **overrides):
    ref = transformers.UMT5EncoderModel(transformers.UMT5Config(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for p in ref.parameters():  # move norms away from ones, and the per-layer bias tables apart
            p.add_(0.05 * torch.randn_like(p))
    return ref


def _padded_inputs(length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    # Row 0 full, row 1 right-padded with pad id 0 (Wan's tokenizer pads to max_sequence_length).
    ids = np.random.default_rng(0).integers(1, vocab, (2, length))
    mask = np.ones((2, length), np.int64)
    mask[1, length // 2 + 1 :] = 0
    ids[mask == 0] = 0
    return ids, mask


def _reference_out(ref, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return out.last_hidden_state.float().numpy()


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
@pytest.mark.parametrize("length", [7, 40])  # 40 > max_distance: log buckets and the clamped last bucket
def test_parity(tmp_path, feed_forward_proj, length):
    ref = _reference(tmp_path, feed_forward_proj=feed_forward_proj)
    cfg, model = parity.load(ref, SPEC, tmp_path)
    assert isinstance(cfg, UMT5Config) and isinstance(model, UMT5EncoderModel)
    # One table per layer, loaded from each block's own key.
    tables = np.asarray(model.encoder.block.layer[0].SelfAttention.relative_attention_bias.embedding[...])
    for i in range(TINY["num_layers"]):
        want = ref.encoder.block[i].layer[0].SelfAttention.relative_attention_bias.weight.detach().numpy()
        np.testing.assert_array_equal(tables[i], want)
    ids, mask = _padded_inputs(length, cfg.vocab_size)
    got = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    assert got.dtype == jnp.float32
    assert rel_err(got, _reference_out(ref, ids, mask)) <= 1e-5


def test_no_mask_is_all_ones(tmp_path):
    ref = _reference(tmp_path)
    _, model = parity.load(ref, SPEC, tmp_path)
    ids, _ = _padded_inputs(9, 1000)
    got = model(jnp.asarray(ids), None)
    assert rel_err(got, _reference_out(ref, ids, np.ones_like(ids))) <= 1e-5


def test_bfloat16_follows_the_weights(tmp_path):
    ref = _reference(tmp_path)
    # transformers keeps wo in float32 for float16 (its `_keep_in_fp32_modules`), not for bfloat16.
    _, fp16 = parity.load(ref, SPEC, tmp_path, dtype=jnp.float16)
    assert fp16.encoder.block.layer[1].DenseReluDense.wo.kernel[...].dtype == jnp.float32
    _, model = load_component(SPEC, tmp_path, dtype=jnp.bfloat16)
    assert model.encoder.block.layer[1].DenseReluDense.wo.kernel[...].dtype == jnp.bfloat16
    ids, mask = _padded_inputs(40, 1000)
    got = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    assert got.dtype == jnp.bfloat16
    assert rel_err(got.astype(jnp.float32), _reference_out(ref, ids, mask)) <= 3e-2


def _xxl_weights(tmp_path, drop=(), extra=None) -> None:
    # save_pretrained writes a tied weight once, under its source name (`shared.weight`).
    tied = set(transformers.UMT5EncoderModel._tied_weights_keys)
    assert tied == {"encoder.embed_tokens.weight"}
    build = lambda: transformers.UMT5EncoderModel(transformers.UMT5Config(**XXL))
    tensors = parity.real_layout(build, skip=(*tied, *drop))
    tensors.update(extra or {})
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)


def test_xxl_shapes_and_key_coverage(tmp_path):
    # Keys that transformers writes but recomputes (dense_act_fn, is_gated_act), or that we do not model,
    # are ignored.
    written = {
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "dtype": "bfloat16",
        "num_decoder_layers": 24,
    }
    cfg = from_dict(UMT5Config, {**XXL, **written})
    _, state = SPEC.abstract(cfg)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))  # nothing allocated
    shapes = param_shapes(state)
    assert shapes["shared.embedding"] == (256384, 4096)
    assert shapes["encoder.block.layer.1.DenseReluDense.wo.kernel"] == (24, 10240, 4096)
    assert shapes[BIAS] == (24, 32, 64)
    assert "encoder.relative_attention_bias.embedding" not in shapes
    _xxl_weights(tmp_path)
    assignments = check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")
    assert len(assignments) == len(shapes) == 12
    bias = next(a for a in assignments if a.target == BIAS)
    assert bias.sources[23] == ("encoder.block.23.layer.0.SelfAttention.relative_attention_bias.weight",)


def test_xxl_tied_duplicate_is_ignored(tmp_path):
    cfg = from_dict(UMT5Config, XXL)
    _xxl_weights(tmp_path, extra={"encoder.embed_tokens.weight": ((256384, 4096), "BF16")})
    check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")


def test_xxl_missing_and_unexpected_keys(tmp_path):
    cfg = from_dict(UMT5Config, XXL)
    missing = "encoder.block.17.layer.0.SelfAttention.relative_attention_bias.weight"
    _xxl_weights(tmp_path, drop=(missing,), extra={"lm_head.weight": ((256384, 4096), "BF16")})
    with pytest.raises(ConversionError) as e:
        check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")
    msg = str(e.value)
    assert msg.startswith("text_encoder:")
    assert f"missing source key {missing!r} for target {BIAS!r}" in msg
    assert "unexpected source key 'lm_head.weight'" in msg
    assert len(e.value.problems) == 2


def test_defaults_follow_transformers():
    ours, theirs = UMT5Config(), transformers.UMT5Config()
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert (ours.dense_act_fn, ours.is_gated_act) == (theirs.dense_act_fn, theirs.is_gated_act)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            {"feed_forward_proj": "gated-gelu-new"},
            "UMT5 config: feed_forward_proj 'gated-gelu-new' should be",
        ),
        ({"feed_forward_proj": "swiglu"}, "UMT5 config: activation 'swiglu'"),
        ({"d_kv": 0}, "UMT5 config: d_kv=0 must be positive"),
        ({"relative_attention_max_distance": 2}, "relative_attention_max_distance=2 must exceed"),
        ({"is_decoder": True}, "decoder"),
    ],
)
def test_bad_config(override, match):
    with pytest.raises(InputError, match=match):
        from_dict(UMT5Config, {**XXL, **override})


def test_needs_umt5_config():
    with pytest.raises(TypeError, match="needs a UMT5Config, got T5Config"):
        UMT5EncoderModel(T5Config(**TINY), rngs=None)
