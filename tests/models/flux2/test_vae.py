"""AutoencoderKLFlux2: parity with diffusers through the real loader (encode, decode, and the pipelines' packed
batch-normalised latents), real-size key coverage, config validation."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLFlux2 as TorchVAE
from diffusers import Flux2KleinPipeline

from jdiff.errors import InputError
from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config
from jdiff.models.flux2.vae_plan import SPEC
from jdiff.weights.config import from_dict
from tests import parity

# The jdiff config extends AutoencoderKL's, whose pipeline-only keys (scaling_factor, ...) this class lacks.
_KEYS = set(inspect.signature(TorchVAE.__init__).parameters)


def _kwargs(cfg) -> dict:
    return {k: v for k, v in parity.kwargs(cfg).items() if k in _KEYS}


@pytest.mark.parametrize(
    "overrides,shape",
    [
        ({}, (2, 3, 16, 24)),
        ({"decoder_block_out_channels": (12, 20), "use_post_quant_conv": False}, (1, 3, 24, 8)),
    ],
)
def test_parity(tmp_path, overrides, shape):
    cfg = AutoencoderKLFlux2Config.tiny(**overrides)
    ref = parity.randomized(TorchVAE(**_kwargs(cfg)), 0.1)
    with torch.no_grad():  # buffers: randomized() draws parameters only
        ref.bn.running_mean.normal_(0, 0.5)
        ref.bn.running_var.uniform_(0.5, 2.0)
    _, vae = parity.load(ref, SPEC, tmp_path)
    assert vae.bn.running_var[...].dtype == jnp.float32

    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    bn_mean = ref.bn.running_mean.view(1, -1, 1, 1)
    bn_std = torch.sqrt(ref.bn.running_var.view(1, -1, 1, 1) + ref.config.batch_norm_eps)
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(image)).latent_dist.mode()
        packed = (
            Flux2KleinPipeline._patchify_latents(mean) - bn_mean
        ) / bn_std  # diffusers' _encode_vae_image
        z = torch.from_numpy(rng.standard_normal(packed.shape).astype(np.float32))
        decoded = ref.decode(Flux2KleinPipeline._unpatchify_latents(z * bn_std + bn_mean)).sample

    nhwc = jnp.asarray(image.transpose(0, 2, 3, 1))
    got_mean, _ = jax.jit(vae.encode)(nhwc)
    parity.assert_close(got_mean, mean.numpy().transpose(0, 2, 3, 1), what="encoder mean")
    got_packed = jax.jit(vae.encode_packed)(nhwc)
    parity.assert_close(got_packed, packed.numpy().transpose(0, 2, 3, 1), what="packed latents")
    got = jax.jit(vae.decode_packed)(jnp.asarray(z.numpy().transpose(0, 2, 3, 1)))
    parity.assert_close(got, decoded.numpy().transpose(0, 2, 3, 1), what="decoded")


def test_real_size_keys(tmp_path):
    cfg = AutoencoderKLFlux2Config.flux2()
    kwargs = _kwargs(cfg)
    assert from_dict(AutoencoderKLFlux2Config, {"_class_name": "AutoencoderKLFlux2", **kwargs}) == cfg
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchVAE(**kwargs)),
        tmp_path,
        component="vae",
        missing="bn.running_var",
        unexpected=("decoder.extra.weight", (3,)),
    )
    assert shapes["bn.running_mean"] == (128,)
    assert shapes["quant_conv.kernel"] == (1, 1, 64, 64)


def test_bad_config():
    with pytest.raises(InputError, match="patch_size"):
        AutoencoderKLFlux2Config.tiny(patch_size=(1, 1))
    with pytest.raises(InputError, match="decoder_block_out_channels"):
        AutoencoderKLFlux2Config.tiny(decoder_block_out_channels=(8, 16, 32))
