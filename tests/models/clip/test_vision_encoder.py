"""CLIP vision encoder: parity of the penultimate hidden state with transformers' `CLIPVisionModel` through the
real loader, real-size (Wan2.1 I2V's ViT-H/14) shapes and key coverage from safetensors headers, the image
preprocessing against transformers' `CLIPImageProcessorPil`, and config / input errors."""

import json

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from flax import nnx

from jdiff.errors import ConversionError, InputError
from jdiff.models.clip.vision_config import CLIPVisionConfig
from jdiff.models.clip.vision_encoder import preprocess_images
from jdiff.models.clip.vision_plan import SPEC
from jdiff.weights import loading
from jdiff.weights.config import from_dict
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import meta_state_shapes, rel_err, write_sparse_safetensors

# image_encoder/config.json of Wan2.1-I2V-14B-480P/720P-Diffusers (open-clip ViT-H/14).
VIT_H = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    num_channels=3,
    image_size=224,
    patch_size=14,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1024,
    model_type="clip_vision_model",
)
# image_processor/preprocessor_config.json of the same checkpoints.
WAN_PREPROCESSOR = dict(
    crop_size={"height": 224, "width": 224},
    do_center_crop=True,
    do_convert_rgb=True,
    do_normalize=True,
    do_rescale=True,
    do_resize=True,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_processor_type="CLIPImageProcessor",
    image_std=[0.26862954, 0.26130258, 0.27577711],
    resample=3,
    rescale_factor=0.00392156862745098,
    size={"shortest_edge": 224},
)
SHIPPED = "vision_model."  # the key prefix of Wan's image_encoder/model.safetensors
Q = "vision_model.encoder.layers.self_attn.q_proj.kernel"


def _tiny(**kw) -> transformers.CLIPVisionConfig:
    base = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_act="gelu",
    )
    return transformers.CLIPVisionConfig(**{**base, **kw})


def _reference(config) -> transformers.CLIPVisionModel:
    """A randomised tiny reference (loaded with `prefix=SHIPPED` for the layout Wan ships, see
    jdiff/models/clip/vision_plan.py)."""
    ref = transformers.CLIPVisionModel(config).eval()
    with torch.no_grad():
        for p in ref.parameters():  # move norms and zero biases away from their initial values
            p.add_(0.1 * torch.randn_like(p))
    return ref


def _penultimate(ref, pixels: np.ndarray) -> np.ndarray:
    """What WanImageToVideoPipeline.encode_image keeps; the reference takes channels-first pixels."""
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    return out.hidden_states[-2].numpy()


@pytest.mark.parametrize(
    "hidden_act, layers, heads, prefixed",
    [
        ("gelu", 3, 4, True),
        ("gelu", 2, 2, False),
        ("quick_gelu", 3, 4, False),
        ("gelu", 1, 4, True),  # one layer: hidden_states[-2] is the pre-norm's output
    ],
)
def test_parity_with_transformers(tmp_path, hidden_act, layers, heads, prefixed):
    config = _tiny(hidden_act=hidden_act, num_hidden_layers=layers, num_attention_heads=heads)
    ref = _reference(config)
    cfg, model = parity.load(ref, SPEC, tmp_path, prefix=SHIPPED if prefixed else "")
    assert (cfg.num_hidden_layers, cfg.hidden_act) == (layers, hidden_act)
    pixels = np.random.default_rng(layers).standard_normal((2, 32, 32, 3)).astype(np.float32)
    got = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(pixels))
    assert got.shape == (2, 1 + 16, 32) and got.dtype == jnp.float32
    parity.assert_close(got, _penultimate(ref, pixels))


def test_bfloat16_follows_the_weights(tmp_path):
    ref = _reference(_tiny())
    _, model = parity.load(ref, SPEC, tmp_path, dtype=jnp.bfloat16, prefix=SHIPPED)
    pixels = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    got = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(pixels))
    assert got.dtype == jnp.bfloat16
    assert rel_err(got.astype(jnp.float32), _penultimate(ref, pixels)) < 2e-2


def _vit_h_ref() -> transformers.CLIPVisionModel:
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VIT_H))


def _write_vit_h(folder, extra: dict | None = None, drop: tuple[str, ...] = ()) -> None:
    """Wan's image_encoder folder at real size, header only: config.json and a sparse safetensors file with
    the keys `save_pretrained` writes, under the `vision_model.` prefix Wan's checkpoint carries."""
    tensors = {f"vision_model.{k}": v for k, v in meta_state_shapes(_vit_h_ref).items()}
    tensors.update(extra or {})
    for k in drop:
        del tensors[k]
    write_sparse_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps(VIT_H))


def test_vit_h_shapes_and_key_coverage(tmp_path):
    _write_vit_h(tmp_path)
    cfg = SPEC.read_config(tmp_path)
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_patches, cfg.hidden_act) == (1280, 80, 256, "gelu")
    _, state = SPEC.abstract(cfg)
    shapes = loading.param_shapes(state)
    assert shapes["vision_model.embeddings.patch_embedding.kernel"] == (14, 14, 3, 1280)
    assert shapes["vision_model.embeddings.class_embedding"] == (1280,)
    assert shapes["vision_model.embeddings.position_embedding.embedding"] == (257, 1280)
    assert shapes[Q] == (32, 1280, 1280)  # every layer loaded, the last one included
    assert shapes["vision_model.encoder.layers.mlp.fc1.kernel"] == (32, 1280, 5120)
    assert not any("post_layernorm" in k for k in shapes)
    specs = {loading.path_str(p): v.get_metadata()["out_sharding"] for p, v in nnx.to_flat_state(state)}
    assert specs[Q] == ("layers", "embed", "heads")
    assert specs["vision_model.encoder.layers.mlp.fc2.kernel"] == ("layers", "mlp", "embed")

    assignments = loading.check(SPEC, cfg, open_weights(tmp_path), component="image_encoder")
    assert len(assignments) == len(shapes) == 21
    q = next(a for a in assignments if a.target == Q)
    assert q.sources[31] == ("vision_model.encoder.layers.31.self_attn.q_proj.weight",)


def test_vit_h_unprefixed_and_position_ids(tmp_path):
    # What transformers 5 writes for a CLIPVisionModel it built itself, plus the buffer older versions saved.
    tensors = meta_state_shapes(_vit_h_ref)
    tensors["embeddings.position_ids"] = ((1, 257), "I64")
    write_sparse_safetensors(tmp_path / "model.safetensors", tensors)
    cfg = from_dict(CLIPVisionConfig, VIT_H)
    assignments = loading.check(SPEC, cfg, open_weights(tmp_path), component="image_encoder")
    q = next(a for a in assignments if a.target == Q)
    assert q.sources[31] == ("encoder.layers.31.self_attn.q_proj.weight",)


def test_vit_h_missing_and_unexpected_keys(tmp_path):
    missing = "vision_model.encoder.layers.31.mlp.fc2.weight"
    extra = {"visual_projection.weight": ((1024, 1280), "F32")}
    _write_vit_h(tmp_path, extra=extra, drop=(missing,))
    with pytest.raises(ConversionError) as e:
        loading.check(SPEC, SPEC.read_config(tmp_path), open_weights(tmp_path), component="image_encoder")
    msg = str(e.value)
    assert msg.startswith("image_encoder: 2 weight problem(s)")
    assert f"missing source key {missing!r} for target 'vision_model.encoder.layers.mlp.fc2.kernel'" in msg
    assert "unexpected source key 'visual_projection.weight'" in msg


def test_layer_count_mismatch(tmp_path):
    # A 33-layer checkpoint under a 32-layer config: the extra layer is not silently dropped.
    extra = {
        f"vision_model.encoder.layers.32.{k[len('vision_model.encoder.layers.0.') :]}": v
        for k, v in {
            f"vision_model.{k}": v for k, v in meta_state_shapes(_vit_h_ref).items() if ".layers.0." in k
        }.items()
    }
    _write_vit_h(tmp_path, extra=extra)
    with pytest.raises(ConversionError, match=r"unexpected source key 'vision_model\.encoder\.layers\.32\."):
        loading.check(SPEC, SPEC.read_config(tmp_path), open_weights(tmp_path), component="image_encoder")


@pytest.mark.parametrize(
    "override, match",
    [
        (
            {"hidden_act": "relu"},
            r"hidden_act 'relu' is not supported; expected one of \['quick_gelu', 'gelu'\]",
        ),
        ({"num_attention_heads": 7}, "does not split into 7 attention heads"),
        ({"patch_size": 0}, "patch_size should be a positive integer, got 0"),
        ({"image_size": [224, 224]}, r"image_size should be a positive integer, got \(224, 224\)"),
        ({"patch_size": 256}, "patch_size 256 is larger than image_size 224"),
    ],
)
def test_bad_config(override, match):
    with pytest.raises(InputError, match=match):
        from_dict(CLIPVisionConfig, {**VIT_H, **override})


def test_wrong_image_shape():
    cfg = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    model = SPEC.module_cls(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(
        InputError, match=r"expected pixel values \[batch, 32, 32, 3\].*got shape \(1, 3, 32, 32\)"
    ):
        model(np.zeros((1, 3, 32, 32), np.float32))


def _images(rng: np.random.Generator) -> list:
    # Landscape, portrait, odd sizes, an RGBA image with transparency and a grey one, as PIL or arrays.
    rgba = rng.integers(0, 256, (230, 301, 4), np.uint8)
    return [
        PIL.Image.fromarray(rng.integers(0, 256, (300, 451, 3), np.uint8)),
        rng.integers(0, 256, (517, 333, 3), np.uint8),
        PIL.Image.fromarray(rgba, "RGBA"),
        PIL.Image.fromarray(rng.integers(0, 256, (224, 224), np.uint8), "L"),
        PIL.Image.fromarray(rng.integers(0, 256, (120, 150, 3), np.uint8)),  # upscaled
    ]


def test_preprocess_matches_clip_image_processor(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(WAN_PREPROCESSOR))
    processor = transformers.CLIPImageProcessorPil.from_pretrained(tmp_path)
    for image in _images(np.random.default_rng(0)):
        want = processor(images=image, return_tensors="np")["pixel_values"]  # [1, 3, I, I]
        got = preprocess_images(image)
        assert got.shape == (1, 224, 224, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
    batch = preprocess_images(_images(np.random.default_rng(0))[:2])
    assert batch.shape == (2, 224, 224, 3)


def test_preprocess_bad_input():
    with pytest.raises(InputError, match="expected a PIL image or a uint8 array"):
        preprocess_images(np.zeros((224, 224, 3), np.float32))
    with pytest.raises(InputError, match="crop_size 300 exceeds the resized image"):
        preprocess_images(np.zeros((224, 224, 3), np.uint8), crop_size=300)


def test_preset_is_the_released_config():
    assert from_dict(CLIPVisionConfig, VIT_H) == CLIPVisionConfig.vit_h_14()
