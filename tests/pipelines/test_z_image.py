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


def test_real_size_dry_run(z_image, tmp_path, capsys):
    """`jdiff convert --dry-run` over Z-Image-Turbo's real layout (headers only: 6B DiT, Qwen3-4B), then with
    a key removed: named, nothing written."""
    import json

    import transformers
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    from jdiff.cli import main
    from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
    from jdiff.models.qwen3.config import Qwen3Config
    from jdiff.models.z_image.config import ZImageConfig
    from tests.fixtures_zimage_flux2 import real_size_dir
    from tests.parity import kwargs

    _, path, _ = z_image
    dit, qwen, vae = (
        kwargs(ZImageConfig.turbo()),
        kwargs(Qwen3Config.qwen3_4b()),
        kwargs(AutoencoderKLConfig.flux()),
    )
    real = real_size_dir(
        path,
        tmp_path / "z-image-turbo",
        {
            "transformer": (lambda: ZImageTransformer2DModel(**dit), dit, "diffusion_pytorch_model"),
            "text_encoder": (lambda: transformers.Qwen3Model(transformers.Qwen3Config(**qwen)), qwen, "model"),
            "vae": (lambda: AutoencoderKL(**vae), vae, "diffusion_pytorch_model"),
        },
    )  # fmt: skip
    assert json.loads((real / "model_index.json").read_text())["text_encoder"][1] == "Qwen3Model"
    assert main(["convert", str(real), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ZImageTransformer2DModel" in out and "problem" not in out
    (real / "text_encoder" / "model.safetensors").unlink()
    layout = {k: v for k, v in _qwen_layout(qwen).items() if k != "layers.35.mlp.down_proj.weight"}
    from tests.utils import write_sparse_safetensors

    write_sparse_safetensors(real / "text_encoder" / "model.safetensors", layout)
    assert main(["convert", str(real), str(tmp_path / "out"), "--dry-run"]) == 2
    assert "layers.35.mlp.down_proj.weight" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def _qwen_layout(qwen: dict) -> dict:
    import transformers

    from tests.utils import meta_state_shapes

    return meta_state_shapes(
        lambda: transformers.Qwen3Model(transformers.Qwen3Config(**qwen)).to(torch.bfloat16)
    )
