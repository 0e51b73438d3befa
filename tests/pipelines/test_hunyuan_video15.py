"""HunyuanVideo-1.5 text-to-video vs diffusers' HunyuanVideo15Pipeline from the same latents; mp4; bad input."""

import gc
import json

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jdiff
from jdiff.errors import InputError
from jdiff.models.hunyuan_video15.tiling import VAETiling, decode_activation_bytes
from jdiff.pipelines import memory
from tests.fixtures_hunyuan_video15 import F, reference, saved, tiny_hunyuan_video15
from tests.utils import rel_err

H, W = 32, 48  # 8 x 12 latents
GLYPH = 'a red "OPEN" sign'
PLAIN = "a blue circle"
SMALL = dict(height=H, width=W, num_frames=5, num_inference_steps=2)
TILED = dict(height=H, width=W, num_frames=F, num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def case():
    pipe = tiny_hunyuan_video15()
    return pipe, jdiff.DiffGenerator.from_pretrained(saved(pipe), dtype="float32")


def _latents(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, (F - 1) // 4 + 1, H // 4, W // 4, generator=torch.Generator().manual_seed(1))


def test_parity_cfg_glyph_and_negative_prompt(case):
    """CFG (the guider's 6.0) with a quoted (byT5) span and a negative prompt, non-square, 3 latent frames;
    the negative prompt alone moves the result far more than the tolerance."""
    pipe, gen = case
    latents = _latents()
    want, want_frames = reference(
        pipe, GLYPH, latents, negative_prompt="blue", num_inference_steps=3, height=H, width=W
    )
    got = gen.generate(
        GLYPH, negative_prompt="blue", latents=latents.numpy(), output_type="np", height=H, width=W,
        num_frames=F, num_inference_steps=3,
    )  # fmt: skip
    assert gen.pipeline.preset["guidance_scale"] == 6.0  # from guider/guider_config.json
    assert rel_err(got.latents, want) <= 1e-4
    assert np.abs(got.frames - want_frames).max() <= 1e-4
    assert ((want_frames > 0.01) & (want_frames < 0.99)).mean() > 0.5  # unclamped: a real comparison
    assert got.frames.shape == (1, F, H, W, 3)
    default_negative = gen.generate(
        GLYPH, latents=latents.numpy(), output_type="latent", height=H, width=W, num_frames=F,
        num_inference_steps=3,
    )  # fmt: skip
    assert rel_err(default_negative.latents, want) > 1e-3


def test_parity_batch_without_cfg(case):
    """Two prompts (one quoting text, one not: byT5 features masked for it), guidance 1 (no CFG), each
    video equal to diffusers' decoded alone."""
    from diffusers import ClassifierFreeGuidance

    pipe, gen = case
    latents = _latents(2)
    guider = pipe.guider
    pipe.guider = ClassifierFreeGuidance(guidance_scale=1.0)
    try:
        want, want_frames = reference(pipe, [GLYPH, PLAIN], latents, num_inference_steps=2, height=H, width=W)
    finally:
        pipe.guider = guider
    got = gen.generate(
        [GLYPH, PLAIN], latents=latents.numpy(), guidance_scale=1.0, output_type="np", height=H, width=W,
        num_frames=F, num_inference_steps=2,
    )  # fmt: skip
    assert rel_err(got.latents, want) <= 1e-4
    assert np.abs(got.frames - want_frames).max() <= 1e-4
    assert rel_err(want[0], want[1]) > 1e-2  # the prompts differ in the result


def test_no_recompile(case):
    _, gen = case
    gen.generate(GLYPH, seed=1, output_type="latent", **SMALL)
    before = dict(gen.pipeline.trace_counts)
    # Another length, no quoted text, another scale: the same programs (lengths are bucketed).
    gen.generate("a dog running", seed=2, guidance_scale=4.0, output_type="latent", **SMALL)
    assert dict(gen.pipeline.trace_counts) == before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=8), "num_frames 8 must be 4k\\+1"),
        (dict(height=30), "height 30 is not divisible by 4"),
        (dict(max_sequence_length=64), "fixed 1000 prompt tokens"),
        (dict(image=np.zeros((32, 48, 3), np.uint8)), "text-to-video only"),
        (dict(latents=np.zeros((1, 4, 3, 2, 3))), "latents have shape"),
    ],
)
def test_bad_input(case, kwargs, match):
    with pytest.raises(InputError, match=match):
        case[1].generate(GLYPH, **{**SMALL, **kwargs})


def test_guider_scale_is_the_default(tmp_path):
    """A step-distilled directory's guider (1.0) sets the default guidance; jdiff_preset.json wins over it."""
    pipe = tiny_hunyuan_video15(guidance_scale=1.0)
    path = saved(pipe, tmp_path / "m")
    assert jdiff.DiffGenerator.from_pretrained(path).pipeline.preset["guidance_scale"] == 1.0
    (path / "jdiff_preset.json").write_text(json.dumps({"guidance_scale": 3.0}))
    assert jdiff.DiffGenerator.from_pretrained(path).pipeline.preset["guidance_scale"] == 3.0


def test_cli_writes_the_asked_video(case, tmp_path):
    from jdiff.cli import main

    out = tmp_path / "v.mp4"
    args = [
        "generate",
        "--model",
        str(case[1].model_path),
        "--prompt",
        GLYPH,
        "--height",
        "32",
        "--width",
        "48",
    ]
    assert main([*args, "--steps", "2", "--num-frames", "5", "--output", str(out)]) == 0
    video = iio.imread(out)
    assert video.shape == (5, H, W, 3) and video.std() > 1  # the asked frames and size, not blank


# ---- VAE tiling: the `vae_tiling` setting, memory planning's automatic choice under a faked device limit ----


@pytest.fixture
def pipeline(case):
    pipeline = case[1].pipeline
    yield pipeline
    pipeline.vae_tiling = None


def test_automatic_choice(pipeline, monkeypatch):
    request = pipeline.parse("a red circle", **TILED)
    monkeypatch.delenv(memory.ENV, raising=False)
    assert pipeline.decode_tiling(request) is None  # CPU, no limit: planning is off
    monkeypatch.setenv(memory.ENV, "1TB")
    assert pipeline.decode_tiling(request) is None  # fits
    need = decode_activation_bytes(pipeline.vae_config, 1, 3, H // 4, W // 4, 4)
    assert need > 3 * F * H * W * 4  # at least the float32 video
    gc.collect()
    monkeypatch.setenv(memory.ENV, str(max(memory.resident().values()) + need // 2))
    assert pipeline.decode_tiling(request) == VAETiling()  # does not fit: diffusers' default tiles
    stage = pipeline.decode_stage(request)
    assert stage.kwargs == {"tiling": VAETiling()} and stage.key == (VAETiling(),)
    # An explicit setting wins over the planner.
    pipeline.vae_tiling = False
    assert pipeline.decode_tiling(request) is None
    pipeline.vae_tiling = VAETiling(64, 64)
    assert pipeline.decode_tiling(request) == VAETiling(64, 64)
    monkeypatch.setenv(memory.ENV, "1TB")
    pipeline.vae_tiling = True
    assert pipeline.decode_tiling(request) == VAETiling()


def test_tiled_decode_stage_matches_diffusers(case, pipeline):
    """The decode stage with `vae_tiling` set: diffusers' `enable_tiling()` decode and post-processing of the
    same latents (one row of latent tiles 6 wide every 3 columns, the last 3 wide: 2 tile shapes)."""
    pipe, _ = case
    tiling = VAETiling(64, 24, 16, 6, 0.5)
    pipeline.vae_tiling = tiling
    request = pipeline.parse("a red circle", **TILED)
    latents = np.random.default_rng(0).standard_normal((1, 1, H // 4, W // 4, 4)).astype(np.float32)
    stage = pipeline.decode_stage(request)
    got = stage.fn(*stage.args, jnp.asarray(latents), **stage.kwargs)
    pipe.vae.enable_tiling(**vars(tiling))
    try:
        with torch.no_grad():
            z = torch.from_numpy(latents.transpose(0, 4, 1, 2, 3)) / pipe.vae.config.scaling_factor
            video = pipe.vae.decode(z).sample.permute(0, 2, 3, 4, 1)
    finally:
        pipe.vae.disable_tiling()
    want = (video * 0.5 + 0.5).clamp(0, 1).numpy()
    assert got.shape == want.shape == (1, 1, H, W, 3)
    assert np.abs(np.asarray(got) - want).max() <= 1e-5
    assert ((want > 0.01) & (want < 0.99)).mean() > 0.5  # unclamped: a real comparison
