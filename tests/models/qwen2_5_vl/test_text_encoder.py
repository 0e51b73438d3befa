"""Qwen2.5-VL text encoder: hidden-state parity with transformers' Qwen2_5_VLForConditionalGeneration through
save_pretrained + the jdiff loader, text only and with images of two different sizes (window and full
attention, the 2x2 merger, image-pad replacement, plain and multimodal RoPE positions), with padding; both
config layouts; real-size (Qwen2.5-VL-7B, Qwen-Image's text encoder) key coverage in both key layouts."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from jdiff.errors import InputError
from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from jdiff.models.qwen2_5_vl.image_processor import Qwen2VLImageProcessorConfig, preprocess
from jdiff.models.qwen2_5_vl.plan import SPEC
from jdiff.models.qwen2_5_vl.text_encoder import (
    encode,
    expand_image_tokens,
    image_grid,
    prepare_images,
    rope_index,
)
from jdiff.weights.config import from_dict, read_json
from jdiff.weights.loading import check
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import write_sparse_safetensors

VISION_KEYS = ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
               "spatial_merge_size", "temporal_patch_size", "tokens_per_second", "window_size", "out_hidden_size")  # fmt: skip
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "rms_norm_eps")  # fmt: skip


def _ref_config(cfg: Qwen2_5_VLConfig, flat: bool = False) -> transformers.Qwen2_5_VLConfig:
    v = cfg.vision_config
    vision = {k: getattr(v, k) for k in VISION_KEYS}
    vision["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
    text = {k: getattr(cfg, k) for k in TEXT_KEYS}
    tokens = dict(image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                  vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id)  # fmt: skip
    if flat:  # the published layout
        rope = dict(
            rope_theta=cfg.rope_theta,
            rope_scaling={"type": "mrope", "mrope_section": list(cfg.mrope_section)},
        )
        return transformers.Qwen2_5_VLConfig(**text, **rope, vision_config=vision, **tokens)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta,
                               "mrope_section": list(cfg.mrope_section)}  # fmt: skip
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)


PROCESSOR = Qwen2VLImageProcessorConfig(patch_size=4, merge_size=2, min_pixels=8 * 8, max_pixels=64 * 64)


def _images():
    rng = np.random.default_rng(3)
    # Two non-square sizes: 40x24 -> 6x10 patches (3x5 merged), 24x56 -> 14x6 patches (7x3 merged).
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(40, 24), (24, 56)]]


def _prompt(cfg, rows, grid, pad_side="right"):
    """Token rows: text, then per image <vision_start> + t*h*w/4 pads + <vision_end>, then text; padded."""
    rng = np.random.default_rng(4)
    images = iter(grid.tolist())
    seqs = []
    for n_images, n_text in rows:
        seq = list(rng.integers(1, 900, 3))
        for _ in range(n_images):
            t, h, w = next(images)
            seq += (
                [cfg.vision_start_token_id]
                + [cfg.image_token_id] * (t * h * w // 4)
                + [cfg.vision_end_token_id]
            )
        seqs.append(seq + list(rng.integers(1, 900, n_text)))
    length = max(map(len, seqs))
    ids = np.zeros((len(seqs), length), np.int64)
    mask = np.zeros_like(ids)
    for b, seq in enumerate(seqs):
        sl = slice(0, len(seq)) if pad_side == "right" else slice(length - len(seq), length)
        ids[b, sl], mask[b, sl] = seq, 1
    return ids, mask


def _reference_hidden(ref, ids, mask, pixel_values=None, grid=None, mrope=False):
    kw = {}
    if pixel_values is not None:
        kw = dict(pixel_values=torch.from_numpy(pixel_values), image_grid_thw=torch.from_numpy(grid))
    if mrope:
        kw["mm_token_type_ids"] = torch.from_numpy((ids == ref.config.image_token_id).astype(np.int64))
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True,
                  **kw)  # fmt: skip
    return [h.numpy() for h in out.hidden_states]


@jax.jit
def _encode_all(model, ids, mask, pixel_values, layout, positions):
    return model(ids, mask, pixel_values=pixel_values, layout=layout, position_ids=positions)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cfg = Qwen2_5_VLConfig.tiny()
    ref = parity.randomized(transformers.Qwen2_5_VLForConditionalGeneration(_ref_config(cfg)))
    return cfg, ref, parity.load(ref, SPEC, tmp_path_factory.mktemp("qwen2_5_vl"))[1]


def _compare(got, want, mask, side):
    keep = mask.astype(bool) if side == "left" else np.ones_like(mask, bool)
    assert got.shape[0] == len(want)
    for i, w in enumerate(want):
        parity.assert_close(np.asarray(got[i])[keep], w[keep], what=f"hidden_states[{i}]")


@pytest.mark.parametrize("side", ["right", "left"])
def test_text_only(loaded, side):
    cfg, ref, model = loaded
    ids, mask = _prompt(cfg, [(0, 9), (0, 4)], np.zeros((0, 3), np.int64), side)
    got = _encode_all(model, jnp.asarray(ids), jnp.asarray(mask), None, None, None)
    _compare(got, _reference_hidden(ref, ids, mask), mask, side)


def test_vision_tower(loaded):
    cfg, ref, model = loaded
    pixel_values, grid = preprocess(_images(), PROCESSOR)
    assert grid.tolist() == [[1, 6, 10], [1, 14, 6]]
    layout = prepare_images(np.full((1, 36), cfg.image_token_id), grid, cfg)
    got = jax.jit(lambda m, p, lay: m.image_features(p, lay))(model, jnp.asarray(pixel_values), layout)
    with torch.no_grad():
        want = ref.model.get_image_features(
            torch.from_numpy(pixel_values), torch.from_numpy(grid)
        ).pooler_output
    parity.assert_close(got, torch.cat(want))


@pytest.mark.parametrize(("rows", "side", "mrope"), [
    ([(1, 4), (1, 9)], "right", False),   # one image per prompt, batched (the Edit pipeline)
    ([(1, 4), (1, 9)], "left", True),
    ([(2, 5)], "right", False),           # two images in one prompt (Edit-Plus)
])  # fmt: skip
def test_with_images(loaded, rows, side, mrope):
    cfg, ref, model = loaded
    pixel_values, grid = preprocess(_images(), PROCESSOR)
    ids, mask = _prompt(cfg, rows, grid, side)
    got = encode(model, cfg, ids, mask, images=_images(), processor=PROCESSOR, multimodal_positions=mrope,
                 hidden_layers=None)  # fmt: skip
    _compare(got, _reference_hidden(ref, ids, mask, pixel_values, grid, mrope), mask, side)


def test_expand_image_tokens(loaded):
    cfg = loaded[0]
    grid = image_grid(_images(), PROCESSOR)
    np.testing.assert_array_equal(grid, preprocess(_images(), PROCESSOR)[1])
    texts = ["a <|vision_start|><|image_pad|><|vision_end|> b", "<|image_pad|>c"]
    assert expand_image_tokens(texts, grid, cfg) == [
        "a <|vision_start|>" + "<|image_pad|>" * 15 + "<|vision_end|> b", "<|image_pad|>" * 21 + "c"]  # fmt: skip
    with pytest.raises(InputError, match=re.escape("hold 1 <|image_pad|> tokens for 2 images")):
        expand_image_tokens(texts[:1], grid, cfg)


def test_rope_index_matches_transformers(loaded):
    cfg, ref, _ = loaded
    _, grid = preprocess(_images(), PROCESSOR)
    ids, mask = _prompt(cfg, [(2, 5)], grid, "left")  # two images in one prompt
    want, _ = ref.model.get_rope_index(torch.from_numpy(ids), torch.from_numpy((ids == cfg.image_token_id) * 1),
                                       image_grid_thw=torch.from_numpy(grid), attention_mask=torch.from_numpy(mask))  # fmt: skip
    np.testing.assert_array_equal(rope_index(ids, mask, grid, cfg), want.numpy())


def test_bad_image_inputs(loaded):
    cfg, _, model = loaded
    _, grid = preprocess(_images(), PROCESSOR)
    ids, _ = _prompt(cfg, [(1, 4), (1, 9)], grid)
    with pytest.raises(InputError, match="36 features"):
        prepare_images(ids[:1], grid, cfg)
    with pytest.raises(InputError, match="multiples of spatial_merge_size"):
        prepare_images(ids, np.array([[1, 5, 10]]), cfg)
    with pytest.raises(InputError, match="together"):
        model(jnp.asarray(ids), pixel_values=jnp.zeros((4, 96)))


def test_bf16_smoke(loaded, tmp_path):
    cfg, ref, _ = loaded
    ref.save_pretrained(tmp_path)
    from jdiff.weights.loading import load_component

    _, model = load_component(SPEC, tmp_path, dtype=jnp.bfloat16)
    pixel_values, grid = preprocess(_images(), PROCESSOR)
    ids, mask = _prompt(cfg, [(2, 5)], grid)
    run = jax.jit(lambda m, i, a, p, lay: m(i, a, pixel_values=p, layout=lay, hidden_layers=(-1,)))
    got = run(
        model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixel_values), prepare_images(ids, grid, cfg)
    )
    assert got.dtype == jnp.bfloat16 and model.model.visual.blocks.attn.qkv.kernel[...].dtype == jnp.bfloat16
    parity.assert_close(got[0], _reference_hidden(ref, ids, mask, pixel_values, grid)[-1], tol=5e-2)


def test_config_layouts(tmp_path):
    cfg = Qwen2_5_VLConfig.tiny()
    # transformers 5 writes text_config nested (with rope_parameters), whichever layout it was built from.
    for flat in (False, True):
        _ref_config(cfg, flat=flat).save_pretrained(tmp_path)
        raw = read_json(tmp_path / "config.json")
        assert "text_config" in raw and "vocab_size" not in raw
        assert from_dict(Qwen2_5_VLConfig, raw) == cfg
    # The published layout as written (Qwen2.5-VL-7B-Instruct / Qwen-Image text_encoder/config.json).
    published = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "hidden_size": 3584,
                 "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
                 "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 152064,
                 "max_position_embeddings": 128000, "use_sliding_window": False, "sliding_window": 32768,
                 "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                 "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                                   "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                                   "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                                   "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                                   "temporal_patch_size": 2, "model_type": "qwen2_5_vl"}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(published))
    assert (
        from_dict(Qwen2_5_VLConfig, read_json(tmp_path / "config.json")) == Qwen2_5_VLConfig.qwen_image_7b()
    )
    hash(Qwen2_5_VLConfig.qwen_image_7b())
    with pytest.raises(InputError, match="mrope_section"):
        Qwen2_5_VLConfig.tiny(rope_scaling={"type": "mrope", "mrope_section": [1, 1, 1]})
    vision = dataclasses.replace(cfg.vision_config, window_size=4)
    with pytest.raises(InputError, match="window_size 4 should be at least"):
        Qwen2_5_VLConfig.tiny(vision_config=vision)
    with pytest.raises(InputError, match="out_hidden_size"):
        Qwen2_5_VLConfig.tiny(hidden_size=144, mrope_section=(2, 3, 3))


def _published_key(key: str) -> str:
    if key.startswith("model.visual."):
        return key[len("model.") :]
    return key.replace("model.language_model.", "model.", 1)


@pytest.mark.parametrize("published", [False, True])
def test_real_size_key_coverage(tmp_path, published):
    cfg = Qwen2_5_VLConfig.qwen_image_7b()
    tensors = parity.real_layout(lambda: transformers.Qwen2_5_VLForConditionalGeneration(_ref_config(cfg)))
    assert "lm_head.weight" in tensors
    if not published:
        shapes = parity.check_coverage(
            SPEC, cfg, tensors, tmp_path, component="text_encoder", filename="model.safetensors",
            missing="model.visual.blocks.31.attn.qkv.bias",
            unexpected=("model.language_model.layers.28.self_attn.q_proj.bias", (3584,)),
        )  # fmt: skip
        assert shapes["model.visual.patch_embed.proj.kernel"] == (2, 14, 14, 3, 1280)
        assert shapes["model.language_model.layers.self_attn.k_proj.kernel"] == (28, 3584, 512)
        assert abs(parity.n_params(shapes) - 7.75e9) < 0.05e9
        return
    tensors = {_published_key(k): v for k, v in tensors.items()}
    assert "visual.merger.mlp.0.weight" in tensors and "model.layers.0.mlp.up_proj.weight" in tensors
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    assignments = {a.target: a for a in check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")}
    assert assignments["model.visual.merger.mlp.0.kernel"].sources == (("visual.merger.mlp.0.weight",),)
    assert assignments["model.language_model.norm.scale"].sources == (("model.norm.weight",),)


def test_real_size_base_model_layout(tmp_path):
    # transformers' Qwen2_5_VLModel (no LM head) saves `language_model.*` and `visual.*`.
    cfg = Qwen2_5_VLConfig.qwen_image_7b()
    tensors = parity.real_layout(lambda: transformers.Qwen2_5_VLModel(_ref_config(cfg)))
    assert "language_model.norm.weight" in tensors and "visual.patch_embed.proj.weight" in tensors
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    assignments = {a.target: a for a in check(SPEC, cfg, open_weights(tmp_path), component="text_encoder")}
    assert assignments["model.language_model.norm.scale"].sources == (("language_model.norm.weight",),)
