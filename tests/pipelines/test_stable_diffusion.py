"""Stable Diffusion 1.5 / 2.x and SDXL pipelines vs diffusers' from the same latents (CFG with negative
prompts, guidance rescale, SDXL size/crop conditioning), bad input, the CLI, and a header-only dry run over the
real SDXL base layout."""

import json
import shutil

import numpy as np
import pytest
import torch

import jdiff
from jdiff.cli import main
from jdiff.errors import InputError
from tests.fixtures_sd import tiny_sd_pipeline, tiny_sdxl_pipeline
from tests.utils import meta_state_shapes, rel_err, write_sparse_safetensors

H, W = 24, 40  # the tiny VAE halves once: sizes must divide by 2
STEPS = 3
PROMPTS = ["a red circle", "a blue square on a red background"]


def _make(kind: str):
    if kind == "sdxl":
        return tiny_sdxl_pipeline()
    return tiny_sd_pipeline(v_prediction=kind == "sd2")


@pytest.fixture(scope="module", params=["sd15", "sd2", "sdxl"])
def sd(request, tmp_path_factory):
    """(kind, diffusers pipeline, its saved directory, jdiff generator)."""
    pipe = _make(request.param)
    path = tmp_path_factory.mktemp(request.param)
    pipe.save_pretrained(path)
    return request.param, pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def _latents(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(seed))


def _reference(pipe, prompts, lat, **kw):
    """diffusers' images and final latents (captured at the last step) for `output_type="np"`."""
    final = {}

    def keep(_, i, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    images = pipe(prompts, latents=lat, output_type="np", callback_on_step_end=keep, **kw).images
    return images, final["latents"].numpy()


def _check(result, images, latents):
    # float32 runs agree to ~1e-6; a swapped CFG half or a missing guidance rescale moves the latents by > 1e-3
    # at guidance 7.5 (tests/fixtures_sd.py makes the text matter).
    assert rel_err(result.latents, latents) <= 1e-4
    assert np.abs(result.images - images).max() <= 5e-3
    assert (
        (images > 0.01) & (images < 0.99)
    ).mean() > 0.5  # away from the clamp: the comparison means something


def test_parity_with_diffusers(sd):
    """CFG with a negative prompt per prompt; SD 2.x-like (v-prediction, trailing) adds guidance_rescale; SDXL
    adds original-size and crop conditioning."""
    kind, pipe, _, gen = sd
    kw = dict(height=H, width=W, num_inference_steps=STEPS, guidance_scale=7.5)
    if kind == "sd2":
        kw["guidance_rescale"] = 0.7
    if kind == "sdxl":
        kw.update(original_size=(64, 48), crops_coords_top_left=(4, 8), target_size=(32, 40))
    lat = _latents(2)
    images, latents = _reference(pipe, PROMPTS, lat, negative_prompt=["ugly", "blue"], **kw)
    got = gen.generate(PROMPTS, negative_prompt=["ugly", "blue"], latents=lat.numpy(), output_type="np", **kw)
    assert got.images.shape == (2, H, W, 3) and got.latents.shape == (2, 4, H // 2, W // 2)
    _check(got, images, latents)


def test_default_negative_and_outputs_per_prompt(sd):
    """No negative prompt: SD encodes "", SDXL zeroes the negative embeddings (force_zeros_for_empty_prompt);
    a string negative prompt is shared by every prompt."""
    kind, pipe, _, gen = sd
    if kind == "sd2":
        pytest.skip("SD 2.x encodes its negatives as SD 1.5 does")
    kw = dict(height=H, width=W, num_inference_steps=STEPS, guidance_scale=3.0)
    lat = _latents(2, seed=2)
    images, latents = _reference(pipe, "a red circle", lat, num_images_per_prompt=2, **kw)
    got = gen.generate("a red circle", num_outputs_per_prompt=2, latents=lat.numpy(), output_type="np", **kw)
    _check(got, images, latents)
    if kind == "sd15":
        images, latents = _reference(pipe, ["a red circle"], lat[:1], negative_prompt=["blue"], **kw)
        got = gen.generate(
            "a red circle", negative_prompt="blue", latents=lat[:1].numpy(), output_type="np", **kw
        )
        _check(got, images, latents)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(height=25), "height 25 is not divisible by 2"),
        (dict(true_cfg_scale=2.0), "takes no true_cfg_scale"),
        (dict(original_size=(64, 64)), "takes no original_size"),
        (dict(step_cache="first_block"), r"takes no step_cache \(a step cache, for transformer"),
        (dict(guidance_rescale=-1), "guidance_rescale must be a finite number >= 0"),
        (dict(negative_prompt=["a", "b", "c"]), "3 negative prompts for 1 prompts"),
        (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), r"expects \(1, 4, 12, 20\)"),
    ],
)
def test_bad_input(sd, kw, match):
    kind, _, _, gen = sd
    if kind != "sd15":
        pytest.skip("one family member is enough")
    with pytest.raises(InputError, match=match):
        gen.generate("a red circle", **{"height": H, "width": W, "num_inference_steps": 1, **kw})


def test_sdxl_bad_size_conditioning(sd):
    kind, _, _, gen = sd
    if kind != "sdxl":
        pytest.skip("SDXL only")
    with pytest.raises(InputError, match="original_size must be two integers >= 1"):
        gen.generate("a", original_size=(0, 64))
    with pytest.raises(InputError, match=r"crops_coords_top_left must be two integers >= 0"):
        gen.generate("a", crops_coords_top_left=(-1, 0))


def test_flow_scheduler_refused(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="needs a DDPM-family scheduler"):
        jdiff.DiffGenerator.from_pretrained(tmp_path)


def test_cli_bad_size(sd, tmp_path, capsys):
    kind, _, path, _ = sd
    if kind != "sd15":
        pytest.skip("one family member is enough")
    small = ["--height", str(H), "--width", str(W), "--steps", "1"]
    out = tmp_path / "out.png"
    assert (
        main(["generate", "--model", str(path), "--prompt", "a red circle", *small, "--output", str(out)])
        == 0
    )
    assert out.is_file()
    capsys.readouterr()
    rc = main(["generate", "--model", str(path), "--prompt", "x", *small, "--height", "31"])
    err = capsys.readouterr().err
    assert rc == 2 and "height 31 is not divisible by 2" in err and err.startswith("jdiff: error:")


def test_convert_round_trip(sd, tmp_path):
    """`jdiff convert` to float32, then the checkpoint generates exactly what the diffusers directory does."""
    from jdiff.convert.run import convert

    kind, _, path, gen = sd
    if kind != "sdxl":
        pytest.skip("SDXL covers every component class of the family")
    dst = convert(path, tmp_path / "ckpt", dtype="float32")
    kw = dict(height=H, width=W, num_inference_steps=STEPS, guidance_scale=7.5, output_type="np")
    lat = _latents(2).numpy()
    want = gen.generate(PROMPTS, negative_prompt="ugly", latents=lat, **kw)
    got = jdiff.DiffGenerator.from_pretrained(dst, dtype="float32").generate(
        PROMPTS, negative_prompt="ugly", latents=lat, **kw
    )
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.latents, want.latents)


def test_convert_leaves_out_the_safety_checker(sd, tmp_path, capsys):
    """SD 1.5 as released lists a `safety_checker` (and its `feature_extractor`): jdiff does not run it, so
    the dry run passes and notes it, and convert writes `[null, null]` for it and no folder."""
    from jdiff.convert.run import convert

    kind, _, path, _ = sd
    if kind != "sd15":
        pytest.skip("SD 1.5 ships the safety checker")
    src = tmp_path / "sd15"
    shutil.copytree(path, src)
    index = json.loads((src / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (src / "model_index.json").write_text(json.dumps(index))
    (src / "safety_checker").mkdir()
    (src / "safety_checker" / "config.json").write_text("{}")
    assert main(["convert", str(src), str(tmp_path / "unused"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "safety_checker   StableDiffusionSafetyChecker: left out (jdiff does not run it)" in out, out
    dst = convert(src, tmp_path / "ckpt", dtype="float32")
    assert json.loads((dst / "model_index.json").read_text())["safety_checker"] == [None, None]
    assert not (dst / "safety_checker").exists() and (dst / "unet").is_dir()
    gen = jdiff.DiffGenerator.from_pretrained(dst, dtype="float32")
    assert type(gen.pipeline).__name__ == "StableDiffusionPipeline"


def test_real_size_sdxl_dry_run(sd, tmp_path, capsys):
    """SDXL base 1.0 at real sizes (header-only files): every key mapped; a removed key is named, exit 2."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
    from jdiff.models.clip.config import CLIPTextConfig as ClipPreset
    from jdiff.models.unet.config import UNet2DConditionConfig
    from tests.parity import kwargs

    kind, _, tiny, _ = sd
    if kind != "sdxl":
        pytest.skip("SDXL only")
    real = tmp_path / "sdxl-base"
    for name in ("scheduler", "tokenizer", "tokenizer_2"):
        shutil.copytree(tiny / name, real / name)
    shutil.copy2(tiny / "model_index.json", real / "model_index.json")
    unet, vae = kwargs(UNet2DConditionConfig.sdxl()), kwargs(AutoencoderKLConfig.sdxl())
    clip_l, big_g = kwargs(ClipPreset.large()), kwargs(ClipPreset.bigg())
    builders = {
        "unet": (lambda: UNet2DConditionModel(**unet), "diffusion_pytorch_model", unet),
        "vae": (lambda: AutoencoderKL(**vae), "diffusion_pytorch_model", vae),
        "text_encoder": (lambda: CLIPTextModel(CLIPTextConfig(**clip_l)), "model", clip_l),
        "text_encoder_2": (lambda: CLIPTextModelWithProjection(CLIPTextConfig(**big_g)), "model", big_g),
    }
    for name, (build, stem, cfg) in builders.items():
        (real / name).mkdir()
        shapes = meta_state_shapes(lambda b=build: b().to(torch.float16))
        if name == "text_encoder":  # the released file carries transformers 4's `text_model.` prefix
            shapes = {f"text_model.{k}": v for k, v in shapes.items()}
        write_sparse_safetensors(real / name / f"{stem}.safetensors", shapes)
        (real / name / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(real), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "unet             UNet2DConditionModel: 1680 tensors" in out and "all mapped" in out, out

    shapes = meta_state_shapes(lambda: UNet2DConditionModel(**unet).to(torch.float16))
    removed = "up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2.weight"
    del shapes[removed]
    (real / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    write_sparse_safetensors(real / "unet" / "diffusion_pytorch_model.safetensors", shapes)
    assert main(["convert", str(real), str(tmp_path / "out"), "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert f"missing source key {removed!r}" in out, out
    assert not (tmp_path / "out").exists()


# Solvers swapped in as diffusers swaps them (`X.from_config(pipe.scheduler.config, **overrides)`): SD 1.5's own
# PNDM, DPM-Solver++ 2M with Karras sigmas, and Heun (two UNet calls a step).
SWAPS = [
    ("PNDMScheduler", {"skip_prk_steps": True}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("HeunDiscreteScheduler", {}),
]


@pytest.mark.parametrize(("name", "overrides"), SWAPS, ids=[s[0] for s in SWAPS])
def test_solvers_with_diffusers(sd, name, overrides):
    import diffusers

    kind, pipe, path, _ = sd
    if kind != "sd15":
        pytest.skip("one family member is enough")
    original = pipe.scheduler
    # From the saved file, as jdiff reads it: an in-memory `from_config(pipe.scheduler.config)` would drop the
    # keys the first class left at its defaults (diffusers' `_use_default_values`, e.g. Euler's "linspace"
    # timestep_spacing, so PNDM would fall back to "leading"); the file keeps them.
    cls = getattr(diffusers, name)
    pipe.scheduler = cls.from_config(cls.load_config(path / "scheduler"), **overrides)
    kw = dict(height=H, width=W, num_inference_steps=STEPS, guidance_scale=7.5)
    lat = _latents(1, seed=5)
    try:
        images, latents = _reference(pipe, ["a red circle"], lat, negative_prompt=["blue"], **kw)
    finally:
        pipe.scheduler = original
    gen = jdiff.DiffGenerator.from_pretrained(
        path, dtype="float32", scheduler=name, scheduler_config=overrides
    )
    got = gen.generate("a red circle", negative_prompt="blue", latents=lat.numpy(), output_type="np", **kw)
    _check(got, images, latents)


def test_stochastic_solver_is_deterministic_per_seed(sd):
    kind, _, path, _ = sd
    if kind != "sd15":
        pytest.skip("one family member is enough")
    gen = jdiff.DiffGenerator.from_pretrained(
        path, dtype="float32", scheduler="EulerAncestralDiscreteScheduler"
    )
    kw = dict(height=H, width=W, num_inference_steps=2, output_type="latent")
    a = gen.generate(["a red circle", "a blue square"], seed=[3, 4], **kw).latents
    b = gen.generate(["a blue square"], seed=4, **kw).latents
    # The same seed alone or batched: the same noise (float differences of another batch size aside).
    np.testing.assert_allclose(a[1], b[0], rtol=1e-3, atol=1e-3)
    c = gen.generate(["a red circle", "a blue square"], seed=[3, 5], **kw).latents
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.allclose(a[1], c[1])
