"""Whole FLUX.2-klein pipelines (distilled and base) vs diffusers' Flux2KleinPipeline from the same latents,
non-square, with and without reference images of other sizes."""

import numpy as np
import pytest
import torch
from PIL import Image

import jdiff
from tests.fixtures_zimage_flux2 import tiny_flux2_klein_pipeline
from tests.utils import rel_err

H, W = 24, 40  # tiny VAE: sizes divide by 2 x 2; 6 x 10 generated tokens
KW = dict(height=H, width=W, num_inference_steps=3, max_sequence_length=64)


@pytest.fixture(scope="module", params=["distilled", "base"])
def klein(request, tmp_path_factory):
    pipe = tiny_flux2_klein_pipeline(is_distilled=request.param == "distilled")
    path = tmp_path_factory.mktemp(f"klein-{request.param}")
    pipe.save_pretrained(path)
    return pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((64, 80), (90, 70))]


@pytest.mark.parametrize("with_images", [False, True])
def test_parity_with_diffusers(klein, with_images):
    pipe, _, gen = klein
    prompts = ["a red circle", "a blue square on a red background"]
    lat = torch.randn(2, 16, H // 4, W // 4, generator=torch.Generator().manual_seed(1))
    kw = dict(latents=lat, guidance_scale=3.0, image=_images() if with_images else None, **KW)
    ref = pipe(prompt=list(prompts), output_type="np", **kw).images
    ref_lat = pipe(prompt=list(prompts), output_type="latent", **kw).images
    kw["latents"] = lat.numpy()
    got = gen.generate(prompts, output_type="np", **kw)
    assert got.latents.shape == tuple(ref_lat.shape)
    assert rel_err(got.latents, ref_lat.numpy()) <= 1e-3
    assert np.abs(got.images - ref).max() <= 5e-3
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5
