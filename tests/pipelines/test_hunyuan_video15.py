"""HunyuanVideo-1.5 text-to-video vs diffusers' HunyuanVideo15Pipeline from the same latents; mp4; bad input."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import jdiff
from jdiff.errors import InputError
from tests.fixtures_hunyuan_video15 import F, reference, saved, tiny_hunyuan_video15
from tests.utils import rel_err

H, W = 32, 48  # 8 x 12 latents
GLYPH = 'a red "OPEN" sign'
PLAIN = "a blue circle"
SMALL = dict(height=H, width=W, num_frames=5, num_inference_steps=2)


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
