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
    if not (with_images or gen.pipeline.is_distilled):
        pytest.skip("the base model's text path is covered with reference images (CPU time)")
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


def test_real_size_klein_4b_dry_run(klein, tmp_path, capsys):
    """`jdiff convert --dry-run` over FLUX.2-klein-4B's real layout (headers only), then with a key removed."""
    if not klein[2].pipeline.is_distilled:
        pytest.skip("one klein variant suffices")
    import transformers
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    from jdiff.cli import main
    from jdiff.models.flux2.config import Flux2Config
    from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config
    from jdiff.models.qwen3.config import Qwen3Config
    from tests.fixtures_zimage_flux2 import real_size_dir
    from tests.parity import kwargs
    from tests.utils import write_sparse_safetensors

    _, path, _ = klein
    dit, qwen = kwargs(Flux2Config.klein_4b()), kwargs(Qwen3Config.qwen3_4b())
    vae = {k: v for k, v in kwargs(AutoencoderKLFlux2Config.flux2()).items() if k not in ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast")}  # fmt: skip
    real = real_size_dir(
        path,
        tmp_path / "klein-4b",
        {
            "transformer": (lambda: Flux2Transformer2DModel(**dit), dit, "diffusion_pytorch_model"),
            "text_encoder": (lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**qwen)), qwen, "model"),
            "vae": (lambda: AutoencoderKLFlux2(**vae), vae, "diffusion_pytorch_model"),
        },
    )  # fmt: skip
    assert main(["convert", str(real), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Flux2Transformer2DModel" in out and "Qwen3ForCausalLM" in out and "problem" not in out

    from jdiff.weights.safetensors import open_weights

    f = real / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = open_weights(real / "transformer")
    layout = {k: (weights.info(k).shape, "BF16") for k in weights.keys()}
    del layout["single_transformer_blocks.19.attn.to_qkv_mlp_proj.weight"]
    f.unlink()
    write_sparse_safetensors(f, layout)
    assert main(["convert", str(real), str(tmp_path / "out"), "--dry-run"]) == 2
    assert (
        "missing source key 'single_transformer_blocks.19.attn.to_qkv_mlp_proj.weight'"
        in capsys.readouterr().out
    )
    assert not (tmp_path / "out").exists()


def test_cli_repeated_image(klein, tmp_path, capsys):
    """`jdiff generate --image A --image B`: two references; the output takes the first one's size."""
    if not klein[2].pipeline.is_distilled:
        pytest.skip("one klein variant suffices")
    from jdiff.cli import main

    _, path, _ = klein
    files = []
    for i, image in enumerate(_images()):
        files += ["--image", str(tmp_path / f"ref{i}.png")]
        image.save(tmp_path / f"ref{i}.png")
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--model",
        str(path),
        "--prompt",
        "a red circle",
        "--steps",
        "2",
        *files,
        "--output",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert Image.open(out).size == (80, 64)  # the first reference, 80x64, already a multiple of 4


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    from tests.fixtures_zimage_flux2 import tiny_flux2_pipeline

    pipe = tiny_flux2_pipeline()
    path = tmp_path_factory.mktemp("flux2-dev")
    pipe.save_pretrained(path)
    return pipe, path, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


@pytest.mark.parametrize("with_images", [True])
def test_dev_parity_with_diffusers(dev, with_images):
    """FLUX.2-dev-like: Mistral-3 layers 10/20/30 after the system turn (256 tokens: the byte-level system
    message alone is ~170), the guidance embedding."""
    pipe, _, gen = dev
    prompts = ["a red circle", "a blue square on a red background"]
    lat = torch.randn(2, 16, H // 4, W // 4, generator=torch.Generator().manual_seed(2))
    kw = dict(
        KW, max_sequence_length=256, latents=lat, guidance_scale=3.0, image=_images() if with_images else None
    )
    ref = pipe(prompt=list(prompts), output_type="np", **kw).images
    ref_lat = pipe(prompt=list(prompts), output_type="latent", **kw).images
    kw["latents"] = lat.numpy()
    got = gen.generate(prompts, output_type="np", **kw)
    assert rel_err(got.latents, ref_lat.numpy()) <= 1e-3
    assert np.abs(got.images - ref).max() <= 5e-3
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5


def test_convert_round_trip(klein, tmp_path):
    """`jdiff convert` (float32) then generation from the checkpoint: the same images as from the directory."""
    if not klein[2].pipeline.is_distilled:
        pytest.skip("one klein variant suffices")
    from jdiff.convert.run import convert

    _, path, gen = klein
    dst = convert(path, tmp_path / "ckpt", dtype="float32")
    kw = dict(KW, num_inference_steps=2, output_type="np", seed=3, image=_images()[:1])
    got = jdiff.DiffGenerator.from_pretrained(dst, dtype="float32").generate("a red circle", **kw)
    np.testing.assert_array_equal(got.images, gen.generate("a red circle", **kw).images)
