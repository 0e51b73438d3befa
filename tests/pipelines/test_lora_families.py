"""LoRA on Z-Image, FLUX.2-klein and Qwen-Image vs diffusers' `load_lora_weights` + `set_adapters`: two
adapters at once over every third linear of the transformer (special conversion rules, stacked blocks and
the per-step modulation included), and the base model when a request chooses none."""

import numpy as np
import pytest
import torch

import jdiff
from tests import lora_files
from tests.fixtures_qwen_image import saved as qwen_saved
from tests.fixtures_qwen_image import tiny_qwen_image_pipeline
from tests.fixtures_sd import tiny_sdxl_pipeline
from tests.fixtures_zimage_flux2 import tiny_flux2_klein_pipeline, tiny_z_image_pipeline
from tests.utils import rel_err


def _z_image():
    kw = dict(height=24, width=40, max_sequence_length=64, guidance_scale=0.0)
    return tiny_z_image_pipeline(), kw, (1, 4, 12, 20)


def _klein():
    kw = dict(height=24, width=40, max_sequence_length=64, guidance_scale=3.0)
    return tiny_flux2_klein_pipeline(is_distilled=True), kw, (1, 16, 6, 10)


def _qwen_image():
    return tiny_qwen_image_pipeline("t2i"), dict(height=32, width=48), (1, 6, 16)


def _sdxl():
    return tiny_sdxl_pipeline(), dict(height=32, width=40, guidance_scale=7.5), (1, 4, 16, 20)


@pytest.mark.parametrize(
    "make", [_z_image, _klein, _qwen_image, _sdxl], ids=["z_image", "flux2_klein", "qwen_image", "sdxl"]
)
def test_two_adapters_match_diffusers(make, tmp_path):
    pipe, kw, latent_shape = make()
    kw = dict(kw, num_inference_steps=2)
    if make is _qwen_image:
        path = qwen_saved(pipe, tmp_path / "model")
    else:
        path = tmp_path / "model"
        pipe.save_pretrained(path)
    gen = jdiff.DiffGenerator.from_pretrained(path, dtype="float32")
    denoiser, prefix = (pipe.unet, "unet.") if make is _sdxl else (pipe.transformer, "transformer.")
    mods = lora_files.linears(denoiser)
    names = list(mods)[::3]
    files = {
        "a": lora_files.write(tmp_path / "a.safetensors", mods, names, prefix=prefix, std=0.2),
        "b": lora_files.write(
            tmp_path / "b.safetensors", mods, names[::2], prefix=prefix, rank=2, seed=1, std=0.2
        ),
    }
    lat = torch.randn(*latent_shape, generator=torch.Generator().manual_seed(1))
    prompt = "a red circle"

    def reference() -> np.ndarray:
        if make not in (_qwen_image, _sdxl):
            return pipe(prompt=prompt, latents=lat, output_type="latent", **kw).images.numpy()
        final = {}  # the last step's latents (Qwen-Image returns unpacked ones, SDXL scaled ones)

        def keep(_pipe, _i, _t, tensors):
            final["latents"] = tensors["latents"].numpy()
            return {}

        pipe(prompt=prompt, latents=lat, output_type="np", callback_on_step_end=keep, **kw)
        return final["latents"]

    base = reference()
    weights = {"a": 0.7, "b": 1.4}
    for name in weights:
        pipe.load_lora_weights(str(files[name]), adapter_name=name)
        gen.load_lora(files[name])
    pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
    want = reference()

    def ours(**extra) -> np.ndarray:
        return gen.generate(prompt, latents=lat.numpy(), output_type="latent", **kw, **extra).latents

    assert rel_err(ours(loras=weights), want) <= 1e-4
    assert rel_err(want, base) > 1e-2  # the adapters matter
    # No adapter chosen: the base model (scale 0 and unloading are checked on FLUX.1, tests/pipelines/test_lora.py).
    assert rel_err(ours(), base) <= 1e-4
