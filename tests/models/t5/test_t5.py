"""T5 encoder: parity with transformers' T5EncoderModel through save_pretrained + the jdiff loader, and the
real-size (FLUX.1 T5-v1.1-XXL) plan checked against header-only weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5.modeling_t5 import T5Attention

from jdiff.errors import ConversionError, InputError
from jdiff.models.t5.config import T5Config
from jdiff.models.t5.encoder import relative_position_buckets
from jdiff.models.t5.plan import SPEC
from jdiff.weights.config import from_dict
from jdiff.weights.loading import check, load_component
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import rel_err, write_sparse_safetensors

TINY = parity.kwargs(T5Config.tiny())
# text_encoder_2/config.json of FLUX.1-dev / schnell.
XXL = parity.kwargs(T5Config.xxl())


def _reference(tmp_path, **overrides):
    ref = transformers.T5EncoderModel(transformers.T5Config(**{**TINY, **overrides})).eval()
    return ref


def _padded_inputs(length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    # Row 0 full, row 1 right-padded with pad id 0 (as the FLUX pipeline's tokenizer pads to max length).
    ids = np.random.default_rng(0).integers(1, vocab, (2, length))
    mask = np.ones((2, length), np.int64)
    mask[1, length // 2 + 1 :] = 0
    ids[mask == 0] = 0
    return ids, mask


def _reference_out(ref, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return out.last_hidden_state.float().numpy()


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu", "gated-silu"])
@pytest.mark.parametrize("length", [7, 40])  # 40 > max_distance: log buckets and the clamped last bucket
def test_parity(tmp_path, feed_forward_proj, length):
    ref = _reference(tmp_path, feed_forward_proj=feed_forward_proj)
    cfg, model = parity.load(ref, SPEC, tmp_path)
    assert cfg.is_gated_act == feed_forward_proj.startswith("gated")
    ids, mask = _padded_inputs(length, cfg.vocab_size)
    got = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    assert got.dtype == jnp.float32
    assert rel_err(got, _reference_out(ref, ids, mask)) <= 1e-5


def test_no_mask_is_all_ones(tmp_path):
    ref = _reference(tmp_path, feed_forward_proj="gated-gelu")
    _, model = parity.load(ref, SPEC, tmp_path)
    ids, _ = _padded_inputs(9, 1000)
    full = np.ones_like(ids)
    got = model(jnp.asarray(ids), None)
    assert rel_err(got, _reference_out(ref, ids, full)) <= 1e-5


def test_wo_float32_under_float16_only(tmp_path):
    ref = _reference(tmp_path, feed_forward_proj="gated-gelu")
    # transformers keeps wo in float32 for float16 (its `_keep_in_fp32_modules`), not for bfloat16.
    _, fp16 = parity.load(ref, SPEC, tmp_path, dtype=jnp.float16)
    assert fp16.encoder.block.layer[1].DenseReluDense.wo.kernel[...].dtype == jnp.float32
    assert fp16.encoder.block.layer[1].DenseReluDense.wi_0.kernel[...].dtype == jnp.float16
    _, model = load_component(SPEC, tmp_path, dtype=jnp.bfloat16)
    ff = model.encoder.block.layer[1].DenseReluDense
    assert ff.wo.kernel[...].dtype == jnp.bfloat16
    assert ff.wi_0.kernel[...].dtype == jnp.bfloat16
    assert model.shared.embedding[...].dtype == jnp.bfloat16
    ids, mask = _padded_inputs(40, 1000)
    got = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    assert got.dtype == jnp.bfloat16
    # transformers' own bfloat16 model is about 1e-2 off its float32 output here.
    assert rel_err(got.astype(jnp.float32), _reference_out(ref, ids, mask)) <= 3e-2


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 16), (6, 10), (64, 200)])
def test_buckets_match_transformers(num_buckets, max_distance):
    length = 600
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    want = T5Attention._relative_position_bucket(rel, True, num_buckets, max_distance).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length, num_buckets, max_distance), want)


def _xxl_weights(tmp_path, drop=(), extra=None) -> None:
    # save_pretrained writes a tied weight once, under its source name.
    tied = set(transformers.T5EncoderModel._tied_weights_keys)
    assert tied == {"encoder.embed_tokens.weight"}
    build = lambda: transformers.T5EncoderModel(transformers.T5Config(**XXL))
    tensors = parity.real_layout(build, skip=(*tied, *drop))
    tensors.update(extra or {})
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)


def test_xxl_shapes_and_key_coverage(tmp_path):
    # Keys that transformers writes but recomputes (dense_act_fn, is_gated_act), or that we do not model,
    # are ignored.
    written = {"dense_act_fn": "gelu_new", "is_gated_act": True, "dtype": "bfloat16"}
    cfg = from_dict(T5Config, {**XXL, **written})
    _, state = SPEC.abstract(cfg)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))  # nothing allocated
    ff = state["encoder"]["block"]["layer"][1]["DenseReluDense"]
    assert ff["wo"]["kernel"].shape == (24, 10240, 4096)
    assert state["encoder"]["relative_attention_bias"]["embedding"].shape == (32, 64)
    _xxl_weights(tmp_path)
    assignments = check(SPEC, cfg, open_weights(tmp_path), component="text_encoder_2")
    assert len(assignments) == len(jax.tree.leaves(state))


def test_xxl_tied_duplicate_is_ignored(tmp_path):
    cfg = from_dict(T5Config, XXL)
    _xxl_weights(tmp_path, extra={"encoder.embed_tokens.weight": ((32128, 4096), "BF16")})
    check(SPEC, cfg, open_weights(tmp_path), component="text_encoder_2")


def test_xxl_missing_and_unexpected_keys(tmp_path):
    cfg = from_dict(T5Config, XXL)
    missing = "encoder.block.17.layer.1.DenseReluDense.wi_1.weight"
    _xxl_weights(tmp_path, drop=(missing,), extra={"lm_head.weight": ((32128, 4096), "BF16")})
    with pytest.raises(ConversionError) as e:
        check(SPEC, cfg, open_weights(tmp_path), component="text_encoder_2")
    msg = str(e.value)
    assert msg.startswith("text_encoder_2:")
    assert f"missing source key {missing!r}" in msg
    assert "unexpected source key 'lm_head.weight'" in msg
    assert len(e.value.problems) == 2


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"feed_forward_proj": "gated-gelu-new"}, "should be 'ACT' or 'gated-ACT'"),
        ({"feed_forward_proj": "swiglu"}, "activation 'swiglu'"),
        ({"num_heads": 0}, "num_heads=0 must be positive"),
        ({"relative_attention_num_buckets": 2}, "relative_attention_num_buckets=2"),
        ({"is_decoder": True}, "decoder"),
    ],
)
def test_bad_config(override, match):
    with pytest.raises(InputError, match=match):
        from_dict(T5Config, {**TINY, **override})


def test_activation_parse_follows_transformers():
    for proj in ["relu", "gated-gelu", "gated-silu", "gelu", "gated-gelu_new"]:
        ours = from_dict(T5Config, {**TINY, "feed_forward_proj": proj})
        theirs = transformers.T5Config(**{**TINY, "feed_forward_proj": proj})
        assert (ours.dense_act_fn, ours.is_gated_act) == (theirs.dense_act_fn, theirs.is_gated_act)
