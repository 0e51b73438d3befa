"""Whole Z-Image pipeline vs diffusers' ZImagePipeline from the same latents (non-square, CFG on and off)."""

import numpy as np
import pytest
import torch

import jdiff
from tests.fixtures_zimage_flux2 import tiny_z_image_pipeline
from tests.utils import rel_err

H, W = 24, 40  # tiny VAE: sizes divide by 2 x 2; 6 x 10 = 60 image tokens, padded to 64
KW = dict(height=H, width=W, num_inference_steps=3, max_sequence_length=64)


@pytest.fixture(scope="module")
def z_image(tmp_path_factory):
    pipe = tiny_z_image_pipeline()
    path = tmp_path_factory.mktemp("z-image")
    pipe.save_pretrained(path)
    return pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def _latents(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(seed))


def _check(got, ref_images, ref_latents):
    assert rel_err(got.latents, ref_latents) <= 1e-3
    assert np.abs(got.images - ref_images).max() <= 5e-3
    assert ((ref_images > 0.01) & (ref_images < 0.99)).mean() > 0.5


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_parity_with_diffusers(z_image, guidance):
    pipe, _, gen = z_image
    prompts = ["a red circle", "a blue square on a red background, twice as long a prompt"]
    lat = _latents(2)
    negatives = ["blue", "a green square"] if guidance else None
    kw = dict(latents=lat, guidance_scale=guidance, **KW)

    def ref(output_type):
        # diffusers' ZImagePipeline rewrites the prompt lists it is given in place (chat template): copies.
        neg = None if negatives is None else list(negatives)
        return pipe(list(prompts), negative_prompt=neg, output_type=output_type, **kw).images

    ref, ref_lat = ref("np"), ref("latent")
    kw["negative_prompt"] = negatives
    kw["latents"] = lat.numpy()
    got = gen.generate(prompts, output_type="np", **kw)
    _check(got, ref, ref_lat.numpy())
    assert got.images.shape == (2, H, W, 3)


def test_preset_and_refusals(z_image):
    _, _, gen = z_image
    pipe = gen.pipeline
    assert pipe.preset["num_inference_steps"] == 9 and pipe.preset["guidance_scale"] == 0.0
    with pytest.raises(jdiff.InputError, match="no conditioning image"):
        gen.generate("a red circle", image=np.zeros((8, 8, 3)), **KW)
