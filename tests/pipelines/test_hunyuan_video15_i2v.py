"""HunyuanVideo-1.5 image-to-video vs diffusers' HunyuanVideo15ImageToVideoPipeline from the same latents; the
aspect buckets; bad input."""

import numpy as np
import pytest
import torch

import jdiff
from jdiff.errors import InputError
from tests.fixtures_hunyuan_video15 import F, reference, saved, tiny_hunyuan_video15
from tests.utils import rel_err

GLYPH = 'a red "OPEN" sign'
H, W = 32, 48


def _image(h: int = 50, w: int = 70, seed: int = 0):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("meanflow", [False, True])
def test_i2v_parity_in_the_image_bucket(meanflow):
    """A 50 x 70 image: diffusers picks the 52 x 72 bucket around target_size 64 and so must jdiff (no
    height / width given); CFG, a negative prompt; MeanFlow passes the next timestep as timestep_r."""
    pipe = tiny_hunyuan_video15("i2v", meanflow=meanflow)
    gen = jdiff.DiffGenerator.from_pretrained(saved(pipe), dtype="float32")
    h, w = 52, 72
    latents = torch.randn(1, 4, 3, h // 4, w // 4, generator=torch.Generator().manual_seed(1))
    kw = dict(negative_prompt="blue", num_inference_steps=3 if not meanflow else 2)
    want, want_frames = reference(pipe, GLYPH, latents, image=_image(), **kw)
    out = "latent" if meanflow else "np"
    got = gen.generate(GLYPH, image=_image(), latents=latents.numpy(), num_frames=F, output_type=out, **kw)
    assert rel_err(got.latents, want) <= 1e-4
    if meanflow:
        return
    assert np.abs(got.frames - want_frames).max() <= 1e-4
    assert got.frames.shape == (1, F, h, w, 3)
    before = dict(gen.pipeline.trace_counts)
    other = gen.generate(
        "a dog", image=_image(seed=1), latents=latents.numpy(), num_frames=F, output_type="latent", **kw
    )
    assert rel_err(other.latents, want) > 1e-2  # the image (and prompt) condition the video
    assert dict(gen.pipeline.trace_counts) == before and before["encode_image"] == 1  # no recompile

    small = dict(num_frames=5, num_inference_steps=2, output_type="latent")
    r = gen.generate(GLYPH, image=_image(), height=H, width=W, seed=1, **small)  # given: resized and cropped
    assert r.latents.shape == (1, 4, 2, H // 4, W // 4)
    with pytest.raises(InputError, match="give both height and width, or neither"):
        gen.generate(GLYPH, image=_image(), height=H, **small)
    with pytest.raises(InputError, match="image-to-video model: pass image="):
        gen.generate(GLYPH, **small)


@pytest.mark.parametrize("target", [64, 640, 960])
@pytest.mark.parametrize("size", [(50, 70), (70, 50), (64, 64), (480, 848), (1000, 300), (300, 2000)])
def test_buckets_match_diffusers(target, size):
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    from jdiff.pipelines.hunyuan_video15_image import bucket_size

    spatial = 4 if target == 64 else 16
    want = HunyuanVideo15ImageProcessor(vae_scale_factor=spatial).calculate_default_height_width(
        *size, target
    )
    assert bucket_size(*size, target, spatial) == tuple(want)


def test_dry_run_maps_every_component(tmp_path):
    """Header-only conversion check: weights mapped, tokenizers / scheduler / guider / SigLIP processor copied;
    negative control: an unknown component class is a problem."""
    import json

    from jdiff.convert.run import dry_run

    path = saved(tiny_hunyuan_video15("i2v"), tmp_path / "m")
    report = dry_run(path)
    assert not report.problems
    assert any(line.startswith("guider") and "copied as is" in line for line in report.lines)
    index = json.loads((path / "model_index.json").read_text())
    index["guider"] = ["diffusers", "AdaptiveProjectedGuider"]
    (path / "model_index.json").write_text(json.dumps(index))
    assert any("guider: a AdaptiveProjectedGuider" in p for p in dry_run(path).problems)
