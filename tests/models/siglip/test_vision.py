"""SigLIP vision tower: parity with transformers through the real loader (both key layouts), preprocessing
against SiglipImageProcessor, real-size (so400m-patch14-384) key coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from jdiff.errors import InputError
from jdiff.models.siglip.config import SiglipVisionConfig
from jdiff.models.siglip.plan import SPEC
from jdiff.models.siglip.vision import preprocess_images
from tests import parity


def _torch(cfg):
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**parity.kwargs(cfg)))


@pytest.mark.parametrize("prefix", ["", "vision_model."])  # transformers 5 / released (transformers 4) keys
def test_parity(tmp_path, prefix):
    cfg = SiglipVisionConfig.tiny()
    ref = parity.randomized(_torch(cfg), 0.1, norms_near_one=True)
    _, model = parity.load(ref, SPEC, tmp_path, prefix=prefix)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(pixels)).last_hidden_state
    got = jax.jit(lambda m, x: m(x))(model, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    assert got.shape == (2, 16, 24)
    parity.assert_close(got, want)
    with pytest.raises(InputError, match="preprocess_images"):
        model(jnp.zeros((1, 27, 28, 3)))


def test_preprocess_matches_transformers():
    from transformers import SiglipImageProcessorPil

    rng = np.random.default_rng(1)
    rgba = PIL.Image.fromarray(rng.integers(0, 256, (30, 47, 4), dtype=np.uint8), "RGBA")
    rgb = PIL.Image.fromarray(rng.integers(0, 256, (41, 23, 3), dtype=np.uint8))
    proc = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    want = proc.preprocess([rgba, rgb], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocess_images([rgba, rgb], size=28), want, atol=1e-6)


def test_real_size_keys(tmp_path):
    cfg = SiglipVisionConfig.so400m_patch14_384()
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: _torch(cfg).to(torch.bfloat16), prefix="vision_model."),
        tmp_path,
        component="image_encoder",
        filename="model.safetensors",
        missing="vision_model.encoder.layers.26.mlp.fc2.bias",
        unexpected=("vision_model.encoder.layers.0.self_attn.qkv.weight", (3456, 1152)),
    )
    assert shapes["vision_model.embeddings.position_embedding.embedding"] == (729, 1152)
    assert shapes["vision_model.encoder.layers.mlp.fc1.kernel"] == (27, 1152, 4304)
    with pytest.raises(InputError, match="hidden_act"):
        SiglipVisionConfig.tiny(hidden_act="relu")
