"""Qwen-Image pipelines vs diffusers' QwenImagePipeline / QwenImageEditPipeline / QwenImageEditPlusPipeline from
the same latents (tiny random models, float32, non-square, true CFG), and their input rules."""

import json
from unittest import mock

import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module
import numpy as np
import pytest
import torch
from PIL import Image

import jdiff
from jdiff.errors import InputError
from jdiff.pipelines.qwen_image import calculate_dimensions
from jdiff.pipelines.qwen_image_text import TEXT_BUCKET
from tests.fixtures_qwen_image import saved, tiny_qwen_image_pipeline
from tests.utils import rel_err

H, W = 32, 48  # the tiny VAE divides by 8, the 2x2 patches by 2
STEPS = 3
C = 4  # latent channels
# The tiny directories see conditioning images at these areas (the real 384^2 / 1024^2 would make slow tests):
# diffusers' constants are patched to the same values.
VAE_AREA, CONDITION_AREA = 48 * 48, 40 * 40


def _latents(batch: int, h: int = H, w: int = W, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, (h // 16) * (w // 16), 4 * C, generator=torch.Generator().manual_seed(seed))


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _check(result, ref_images, ref_latents):
    # Measured: ~2e-7 relative on the latents, ~1.5e-6 on pixels. The bounds sit well below what a wrong
    # template cut or a missing CFG rescale moves (1e-3 and more on these tiny models).
    assert rel_err(result.latents, ref_latents) <= 1e-4
    assert np.abs(result.images - ref_images).max() <= 5e-4
    assert ((ref_images > 0.01) & (ref_images < 0.99)).mean() > 0.5  # most pixels away from the clamp


def _both(pipe, gen, lat, **kw):
    """diffusers' images and final latents, and jdiff's result, for the same call."""
    final = {}

    def keep_latents(_pipe, _i, _t, tensors):  # each step's latents: the last call's are the final ones
        final["latents"] = tensors["latents"].numpy()
        return {}

    ref = pipe(latents=lat, output_type="np", callback_on_step_end=keep_latents, **kw).images
    ref_lat = final["latents"]
    kw = {k: v for k, v in kw.items() if k not in ("num_images_per_prompt",)}
    got = gen.generate(kw.pop("prompt"), latents=lat.numpy(), output_type="np", **kw)
    return got, ref, ref_lat


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    pipe = tiny_qwen_image_pipeline("t2i")
    path = saved(pipe, tmp_path_factory.mktemp("qwen-image"))
    return pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def _edit_dir(kind, tmp_path_factory, **options):
    pipe = tiny_qwen_image_pipeline(kind, **options)
    path = saved(pipe, tmp_path_factory.mktemp(kind))
    (path / "jdiff_preset.json").write_text(
        json.dumps({"vae_image_area": VAE_AREA, "condition_image_area": CONDITION_AREA})
    )
    return pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def test_text_to_image_true_cfg_batch(t2i):
    """Two prompts of different lengths and their negatives: one padded batch of four, masked."""
    pipe, _, gen = t2i
    prompts = ["a red circle", "a blue square on the red background"]
    kw = dict(prompt=prompts, negative_prompt=["blue", "a circle"], true_cfg_scale=4.0, height=H, width=W)
    got, ref, ref_lat = _both(pipe, gen, _latents(2), num_inference_steps=STEPS, **kw)
    _check(got, ref, ref_lat)
    assert got.images.shape == (2, H, W, 3)
    # Other prompts of other token counts in the same bucket (`TEXT_BUCKET`), other latents and scale: the
    # compiled programs serve them.
    traces = dict(gen.pipeline.trace_counts)
    kw.update(prompt=["a blue circle on red", "a square on the background"], true_cfg_scale=5.0)
    gen.generate(
        kw.pop("prompt"),
        latents=_latents(2, seed=7).numpy(),
        num_inference_steps=STEPS,
        output_type="np",
        **kw,
    )
    assert dict(gen.pipeline.trace_counts) == traces


def test_text_to_image_without_cfg(t2i):
    pipe, _, gen = t2i
    kw = dict(prompt="a red circle", height=W, width=H)  # portrait
    got, ref, ref_lat = _both(pipe, gen, _latents(1, W, H, seed=2), num_inference_steps=STEPS, **kw)
    _check(got, ref, ref_lat)
    assert any("true_cfg_scale" in w for w in gen.pipeline.parse("a red", true_cfg_scale=5.0).warnings)


def _embeds_close(gen, pipe, texts, images, **kw):
    """jdiff's prompt embeddings and key mask equal diffusers' `encode_prompt` (template, drop_idx, padding)."""
    with torch.no_grad():
        want, want_mask = pipe.encode_prompt(prompt=texts, max_sequence_length=512, **kw)
    p = gen.pipeline
    got, got_mask = p.text.encode(p._params["text_encoder"], texts, images, 512)
    # jdiff pads the tokens to a multiple of TEXT_BUCKET, masked; diffusers to the longest prompt.
    t = want.shape[1]
    assert got.shape == (want.shape[0], -(-t // TEXT_BUCKET) * TEXT_BUCKET, want.shape[2])
    assert rel_err(np.asarray(got[:, :t]), want.numpy()) <= 1e-5
    assert not np.asarray(got[:, t:]).any()
    want_mask = np.ones(want.shape[:2], bool) if want_mask is None else want_mask.numpy().astype(bool)
    full = np.zeros(got.shape[:2], bool)
    full[:, :t] = want_mask
    np.testing.assert_array_equal(np.ones_like(full) if got_mask is None else got_mask, full)


def test_prompt_embeds(t2i):
    pipe, _, gen = t2i
    _embeds_close(gen, pipe, ["a red circle", "a blue square on the red background"], [])
    _embeds_close(gen, pipe, ["a red circle"], [])


def test_edit(tmp_path_factory):
    """Qwen-Image-Edit-2511's layout (zero_cond_t): the image tokens modulated at t = 0."""
    pipe, _, gen = _edit_dir("edit", tmp_path_factory, zero_cond_t=True)
    image = _image(40, 56, seed=0)
    orig = edit_module.calculate_dimensions
    with mock.patch.object(edit_module, "calculate_dimensions", lambda area, r: orig(VAE_AREA, r)):
        w, h = calculate_dimensions(VAE_AREA, 56 / 40)
        kw = dict(prompt="a red circle", image=image, negative_prompt="blue", true_cfg_scale=2.5)
        got, ref, ref_lat = _both(pipe, gen, _latents(1, h, w, seed=3), num_inference_steps=STEPS, **kw)
    _check(got, ref, ref_lat)
    assert got.images.shape == (1, h, w, 3)  # the size follows the image, as diffusers picks it
    _embeds_close(gen, pipe, ["a red circle"], [image], image=image)
    with pytest.raises(InputError, match="edits an image"):
        gen.generate("a red circle")


def test_edit_plus_two_images_of_different_sizes(tmp_path_factory):
    pipe, _, gen = _edit_dir("edit_plus", tmp_path_factory)
    images = [_image(40, 56, seed=0), _image(64, 30, seed=1)]
    with (
        mock.patch.object(plus_module, "CONDITION_IMAGE_SIZE", CONDITION_AREA),
        mock.patch.object(plus_module, "VAE_IMAGE_SIZE", VAE_AREA),
    ):
        kw = dict(
            prompt="a red circle", image=images, negative_prompt="blue", true_cfg_scale=3.0, height=H, width=W
        )
        got, ref, ref_lat = _both(pipe, gen, _latents(1, seed=4), num_inference_steps=STEPS, **kw)
    _check(got, ref, ref_lat)
    _embeds_close(gen, pipe, ["a red circle"], images, image=images)
    with pytest.raises(InputError, match="at most 3 images"):
        gen.generate("x", image=images * 2, output_type="latent")


def test_input_rules(t2i, tmp_path_factory):
    _, _, gen = t2i
    with pytest.raises(InputError, match="no input image"):
        gen.generate("a red circle", image=_image(32, 32, 0))
    with pytest.raises(InputError, match="divisible by 16"):
        gen.generate("a red circle", height=40, width=48)
    with pytest.raises(InputError, match="max_sequence_length"):
        gen.generate("a red circle", max_sequence_length=2048)


def test_offload_takes_the_text_encoder_too(t2i):
    """Under offload the Qwen2.5-VL encoder is in host memory like every other component (it used to be held
    outside `_params`, resident), and the images equal the resident run's."""
    import jax

    from jdiff.pipelines.offload import HOST

    _, path, gen = t2i
    kw = dict(negative_prompt="blue", true_cfg_scale=4.0, height=H, width=W, num_inference_steps=2, seed=1)
    want = gen.generate("a red circle", output_type="np", **kw)
    off = jdiff.DiffGenerator.from_pretrained(path, dtype="float32", offload="model")
    params = off.pipeline._params
    assert {x.sharding.memory_kind for x in jax.tree.leaves(params.host("text_encoder"))} == {HOST}
    got = off.generate("a red circle", output_type="np", **kw)
    np.testing.assert_array_equal(got.images, want.images)
