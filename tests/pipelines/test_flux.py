"""Whole FLUX pipeline vs diffusers' FluxPipeline from the same latents, recompilation, and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import jdiff
from jdiff.errors import ConversionError, InputError
from tests.fixtures import tiny_flux_pipeline
from tests.utils import rel_err

H, W = 32, 48  # the tiny VAE has 2 levels: sizes must divide by 2 x 2 = 4
STEPS = 4
KW = dict(height=H, width=W, num_inference_steps=STEPS, max_sequence_length=24)


@pytest.fixture(scope="module", params=["dev", "schnell"])
def flux(request, tmp_path_factory):
    """(diffusers pipeline, its saved directory, jdiff generator) for a dev-like or schnell-like tiny FLUX."""
    pipe = tiny_flux_pipeline(guidance_embeds=request.param == "dev")
    path = tmp_path_factory.mktemp(f"flux-{request.param}")
    pipe.save_pretrained(path)
    return pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def _latents(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, (H // 4) * (W // 4), 16, generator=torch.Generator().manual_seed(seed))


def _check(result, ref_images, ref_latents):
    assert rel_err(result.latents, ref_latents) <= 1e-3
    assert np.abs(result.images - ref_images).max() <= 5e-3
    # Most pixels are away from the clamp, so the image comparison means something.
    assert ((ref_images > 0.01) & (ref_images < 0.99)).mean() > 0.5


def test_parity_with_diffusers(flux):
    pipe, _, gen = flux
    prompts = ["a red circle", "a blue square on a red background"]
    lat = _latents(2)
    ref = pipe(prompts, latents=lat, guidance_scale=4.0, output_type="np", **KW).images
    ref_lat = pipe(prompts, latents=lat, guidance_scale=4.0, output_type="latent", **KW).images
    got = gen.generate(prompts, latents=lat.numpy(), guidance_scale=4.0, output_type="np", **KW)
    _check(got, ref, ref_lat.numpy())
    assert got.images.shape == (2, H, W, 3) and got.images.dtype == np.float32
    assert set(got.timings) == {"text_encoding", "denoising", "decoding", "total"}


def test_true_cfg_and_outputs_per_prompt(flux):
    pipe, _, gen = flux
    lat = _latents(2, seed=3)
    kw = dict(negative_prompt="blue", true_cfg_scale=2.5, latents=lat, **KW)
    ref = pipe("a red circle", num_images_per_prompt=2, output_type="np", **kw).images
    ref_lat = pipe("a red circle", num_images_per_prompt=2, output_type="latent", **kw).images
    kw["latents"] = lat.numpy()
    got = gen.generate("a red circle", num_outputs_per_prompt=2, output_type="np", **kw)
    _check(got, ref, ref_lat.numpy())


def test_no_recompile_for_new_prompt_seed_or_guidance(flux):
    _, _, gen = flux
    gen.generate("a red circle", seed=1, output_type="np", **KW)
    before = dict(gen.pipeline.trace_counts)
    a = gen.generate(
        "a white triangle on a green background", seed=2, guidance_scale=7.0, output_type="np", **KW
    )
    b = gen.generate("a white triangle on a green background", seed=3, output_type="np", **KW)
    assert dict(gen.pipeline.trace_counts) == before
    assert not np.allclose(a.images, b.images)  # the seed reached the noise
    again = gen.generate("a white triangle on a green background", seed=3, output_type="np", **KW)
    np.testing.assert_array_equal(again.images, b.images)


def test_each_stage_compiles_once_and_the_decoder_is_prepared_ahead(flux):
    """The first request at a new size compiles the encoder, the denoising loop and the decoder once each (the
    decoder in the worker thread, for exactly the program the call then runs); the next compiles nothing."""
    import jax

    _, _, gen = flux
    compiles, active = [], [False]

    def listener(event: str, duration: float, **_) -> None:
        if active[0] and event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    kw = {**KW, "height": 40, "max_sequence_length": 20}  # shapes no other test compiles
    active[0] = True
    try:
        gen.generate("a red circle", seed=1, output_type="np", **kw)
        first = len(compiles)
        gen.generate("a blue square", seed=2, output_type="np", **kw)
    finally:
        active[0] = False
    assert first == 3 and len(compiles) == 3
    assert len(gen.pipeline._decoders) >= 1


def test_seed_per_output_is_batch_independent(flux):
    _, _, gen = flux
    alone = gen.generate("a red circle", seed=11, output_type="np", **KW).images
    batched = gen.generate(["a blue square", "a red circle"], seed=[5, 11], output_type="np", **KW).images
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)
    pair = gen.generate("a red circle", seed=10, num_outputs_per_prompt=2, output_type="np", **KW).images
    np.testing.assert_allclose(pair[1], alone[0], atol=1e-5)  # an int seed s gives s, s + 1, ...


def test_outputs_and_saving(flux, tmp_path):
    _, _, gen = flux
    r = gen.generate("a red circle", output_type="pil", output_path=tmp_path / "out.webp", **KW)
    assert isinstance(r.images[0], Image.Image) and r.images[0].size == (W, H)
    assert r.paths == [str(tmp_path / "out.webp")]
    assert Image.open(r.paths[0]).size == (W, H)
    r = gen.generate(["a", "b"], output_type="np", output_path=tmp_path / "x.png", **KW)
    assert [p.split("/")[-1] for p in r.paths] == ["x-0.png", "x-1.png"]
    latent = gen.generate("a", output_type="latent", **KW)
    assert latent.images is None and latent.latents.shape == (1, (H // 4) * (W // 4), 16)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=30), "height 30 is not divisible by 4"),
        (dict(width=0), "width must be a positive integer"),
        (dict(num_inference_steps=-2), "num_inference_steps must be a positive integer"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
        (dict(output_type="tensor"), "output_type must be one of"),
        (dict(latents=np.zeros((1, 3, 16))), r"latents have shape \(1, 3, 16\)"),
        (dict(output_path="out.gif"), "suffix '.gif'"),
        (dict(num_frames=9), "num_frames"),
        (dict(max_sequence_length=600), "512"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(negative_prompt=["a", "b", "c"], true_cfg_scale=2.0), "3 negative prompts for 1 prompts"),
        (dict(seed=[1, 2]), "2 seeds for 1 outputs"),
        (dict(seed=-1), r"seeds must be in \[0, 2\*\*63\)"),
    ],
)
def test_bad_generate_arguments(flux, kwargs, match):
    _, _, gen = flux
    with pytest.raises(InputError, match=match):
        gen.generate("a red circle", **{**KW, **kwargs})
    with pytest.raises(InputError, match="prompt must be"):
        gen.generate(["ok", 3], **KW)


def test_bad_model_directories(flux, tmp_path):
    _, path, _ = flux
    with pytest.raises(InputError, match="has no model_index.json"):
        jdiff.DiffGenerator.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="dtype must be one of"):
        jdiff.DiffGenerator.from_pretrained(path, dtype="float8")

    broken = tmp_path / "missing"
    shutil.copytree(path, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InputError, match=r"component folder .*vae is missing"):
        jdiff.DiffGenerator.from_pretrained(broken)

    truncated = tmp_path / "truncated"
    shutil.copytree(path, truncated)
    f = truncated / "transformer" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        jdiff.DiffGenerator.from_pretrained(truncated)

    extra = tmp_path / "extra"
    shutil.copytree(path, extra)
    from safetensors.numpy import load_file, save_file

    f = extra / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(f)
    tensors["decoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, f)
    with pytest.raises(ConversionError, match="unexpected source key 'decoder.extra.weight'"):
        jdiff.DiffGenerator.from_pretrained(extra)

    euler = tmp_path / "wrong-scheduler"
    shutil.copytree(path, euler)
    index = json.loads((euler / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "KDPM2DiscreteScheduler"]
    (euler / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(
        InputError, match="scheduler .KDPM2DiscreteScheduler. is not supported; jdiff samples with one of"
    ):
        jdiff.DiffGenerator.from_pretrained(euler)

    unknown = tmp_path / "unknown"
    shutil.copytree(path, unknown)
    index = json.loads((unknown / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusion3Pipeline"
    (unknown / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="StableDiffusion3Pipeline, which jdiff does not support"):
        jdiff.DiffGenerator.from_pretrained(unknown)
