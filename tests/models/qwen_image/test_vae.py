"""AutoencoderKLQwenImage: parity with diffusers through the real loader (images as one-frame videos), real-size
key coverage, config keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage as TorchVAE
from flax import nnx

from jdiff.errors import InputError
from jdiff.models.qwen_image.vae import QwenImageVAEConfig
from jdiff.models.qwen_image.vae_plan import SPEC
from jdiff.weights.config import from_dict
from tests import parity

# Compiles dominate; optimisation level 0 makes them 3-4x faster for the same arithmetic (see the Wan VAE test).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(model, method):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, x: getattr(nnx.merge(graphdef, st), method)(x), compiler_options=FAST_COMPILE)
    return lambda x: fn(state, x)


def test_parity_with_diffusers(tmp_path):
    ref = TorchVAE(**parity.kwargs(QwenImageVAEConfig.tiny())).eval()
    with (
        torch.no_grad()
    ):  # gammas near 1, everything else away from its init; a small last conv (no clamping)
        for name, p in ref.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("gamma") else 0.1 * torch.randn_like(p))
        ref.decoder.conv_out.weight.mul_(0.2)
    cfg, model = parity.load(ref, SPEC, tmp_path)
    assert cfg.latents_std == (1.5, 0.5, 2.0, 1.0) and cfg.spatial_factor == 8

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 1, 16, 24, 3)).astype(np.float32)  # [B, T, H, W, C], non-square
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).latent_dist
    mean, logvar = _jit(model, "encode")(jnp.asarray(x))
    parity.assert_close(np.moveaxis(np.asarray(mean), -1, 1), dist.mean, what="mean")
    parity.assert_close(np.moveaxis(np.asarray(logvar), -1, 1), dist.logvar, what="logvar")

    z = rng.standard_normal((2, 1, 2, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(np.moveaxis(z, -1, 1).copy())).sample
    got = _jit(model, "decode")(jnp.asarray(z))
    assert got.shape == (2, 1, 16, 24, 3)
    parity.assert_close(np.moveaxis(np.asarray(got), -1, 1), want)


def test_real_size_keys(tmp_path):
    real = parity.kwargs(QwenImageVAEConfig.qwen_image())
    assert from_dict(QwenImageVAEConfig, {"_class_name": "AutoencoderKLQwenImage", **real}) == (
        QwenImageVAEConfig.qwen_image()
    )
    shapes = parity.check_coverage(
        SPEC,
        QwenImageVAEConfig.qwen_image(),
        parity.real_layout(lambda: TorchVAE(**real)),
        tmp_path,
        component="vae",
        missing="decoder.up_blocks.3.resnets.2.conv2.weight",
        unexpected=("encoder.conv_in.lora_A.weight", (4, 3)),
    )
    assert shapes["encoder.conv_in.kernel"] == (3, 3, 3, 3, 96)
    assert 126e6 < parity.n_params(shapes) < 128e6  # the Wan2.1 VAE's 127M parameters


def test_bad_config():
    with pytest.raises(InputError, match="latents_std"):
        from_dict(QwenImageVAEConfig, {"z_dim": 16, "latents_std": [1.0] * 4})
