"""Wan pipelines vs diffusers' WanPipeline / WanImageToVideoPipeline from the same latents; mp4; bad input."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import jdiff
from jdiff.cli import main
from jdiff.errors import InputError
from tests.fixtures_wan import saved, tiny_wan
from tests.utils import rel_err

F = 9
PROMPT = "a cat running in the snow"


def _case(kind: str, scheduler: str = "unipc"):
    pipe = tiny_wan(kind, scheduler=scheduler)
    return pipe, jdiff.DiffGenerator.from_pretrained(saved(pipe), dtype="float32")


@pytest.mark.parametrize(
    "kind, scheduler",
    [
        ("t2v", "unipc"),
        ("t2v", "euler"),
        ("a14b", "unipc"),
        ("ti2v", "unipc"),
        ("ti2v-i2v", "unipc"),
        ("i2v", "unipc"),
    ],
)
def test_parity_with_diffusers(kind, scheduler):
    pipe, gen = _case(kind, scheduler)
    h, w = 32, 64 if kind.startswith("ti2v") else 48
    z, sp = pipe.vae.config.z_dim, pipe.vae.config.scale_factor_spatial
    latents = torch.randn(
        1, z, (F - 1) // 4 + 1, h // sp, w // sp, generator=torch.Generator().manual_seed(1)
    )
    # diffusers' Wan attention splits image tokens from text assuming 512 text tokens: I2V needs the full length.
    kw = dict(
        height=h,
        width=w,
        num_frames=F,
        num_inference_steps=4,
        guidance_scale=4.0,
        negative_prompt="blue",
        max_sequence_length=512 if kind == "i2v" else 16,
    )
    if kind == "a14b":
        kw["guidance_scale_2"] = 2.0
    if kind in ("i2v", "ti2v-i2v"):
        kw["image"] = Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8))
    ref = pipe(prompt=PROMPT, latents=latents, output_type="np", **kw).frames
    ref_latents = pipe(prompt=PROMPT, latents=latents, output_type="latent", **kw).frames.numpy()
    got = gen.generate(PROMPT, latents=latents.numpy(), output_type="np", **kw)
    assert rel_err(got.latents, ref_latents) <= 1e-3
    assert np.abs(got.frames - ref).max() <= 5e-3
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5  # most values unclamped: the comparison means something
    assert got.frames.shape == (1, F, h, w, 3)


@pytest.fixture(scope="module")
def t2v():
    return _case("t2v")[1]


SMALL = dict(height=32, width=48, num_frames=5, num_inference_steps=2, max_sequence_length=16)


def test_mp4_and_no_recompile(t2v, tmp_path):
    r = t2v.generate(PROMPT, seed=1, output_path=tmp_path / "a.mp4", **SMALL)
    before = dict(t2v.pipeline.trace_counts)
    t2v.generate("a dog in the snow", seed=2, guidance_scale=6.0, output_path=tmp_path / "b.mp4", **SMALL)
    assert dict(t2v.pipeline.trace_counts) == before
    video = iio.imread(r.paths[0])
    assert video.shape == (5, 32, 48, 3)
    assert len(r.frames) == 1 and len(r.frames[0]) == 5 and r.frames[0][0].size == (48, 32)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=8), "num_frames 8 must be 4k\\+1"),
        (dict(height=40), "height 40 is not divisible by 16"),
        (dict(guidance_scale_2=3.0), "guidance_scale_2 needs a two-expert model"),
        (dict(image=np.zeros((32, 48, 3), np.uint8)), "text-to-video only"),
        (dict(output_path="x.png"), "suffix '.png'"),
        (dict(latents=np.zeros((1, 16, 3, 2, 3))), "latents have shape"),
    ],
)
def test_bad_input(t2v, kwargs, match):
    with pytest.raises(InputError, match=match):
        t2v.generate(PROMPT, **{**SMALL, **kwargs})


def test_wrong_scheduler_class(tmp_path):
    import json
    import shutil

    path = saved(tiny_wan("t2v"))
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "KDPM2DiscreteScheduler"]
    (path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(
        InputError, match="scheduler .KDPM2DiscreteScheduler. is not supported; jdiff samples with one of"
    ):
        jdiff.DiffGenerator.from_pretrained(path)
    shutil.rmtree(path)


def test_cli_video(t2v, tmp_path, capsys):
    model = t2v.model_path
    out = tmp_path / "v.mp4"
    args = [
        "generate",
        "--model",
        str(model),
        "--prompt",
        PROMPT,
        "--height",
        "32",
        "--width",
        "48",
        "--steps",
        "2",
    ]
    assert main([*args, "--num-frames", "5", "--output", str(out)]) == 0
    assert iio.imread(out).shape == (5, 32, 48, 3)
    assert main([*args, "--num-frames", "6"]) == 2
    assert "num_frames 6 must be 4k+1" in capsys.readouterr().err


def test_i2v_compiles_once():
    _, gen = _case("i2v")
    kw = dict(
        height=32,
        width=48,
        num_frames=5,
        num_inference_steps=2,
        max_sequence_length=512,
        output_type="latent",
    )
    image = np.zeros((32, 48, 3), np.uint8)
    gen.generate(PROMPT, image=image, seed=1, **kw)
    before = dict(gen.pipeline.trace_counts)
    gen.generate("a dog", image=image + 40, seed=2, **kw)
    assert dict(gen.pipeline.trace_counts) == before and before["encode_image"] == 1
