"""AutoencoderKL: parity with diffusers through the real loader, real-size key coverage, config validation."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx

from jdiff.errors import InputError
from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.autoencoder_kl.plan import SPEC
from jdiff.weights.config import from_dict
from jdiff.weights.loading import load_component
from tests import parity

FLUX_VAE = {"_class_name": "AutoencoderKL", **parity.kwargs(AutoencoderKLConfig.flux())}


def _tiny(channels, **kw):
    return {
        "block_out_channels": list(channels),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "norm_num_groups": 4,
        **kw,
    }


# (config, image [B, C, H, W]); non-square images, both conv layouts, both mid-blocks, wider in/out.
VARIANTS = {
    "sd_2lvl": (_tiny((8, 16), layers_per_block=1, latent_channels=4), (2, 3, 16, 24)),
    "flux_3lvl": (
        _tiny(
            (8, 16, 16),
            layers_per_block=2,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        (1, 3, 24, 40),
    ),
    "no_attn_mixed": (
        _tiny(
            (8, 16),
            layers_per_block=1,
            latent_channels=4,
            in_channels=4,
            out_channels=2,
            act_fn="swish",
            use_post_quant_conv=False,
            mid_block_add_attention=False,
        ),
        (1, 4, 12, 8),
    ),
}


def _reference(config, tmp_path, *, clamp=False):
    ref = parity.randomized(TorchAutoencoderKL(**config), 0.1, norms_near_one=True)
    with torch.no_grad():
        if clamp:
            # Drive two log-variance channels past both clamp bounds.
            z = config["latent_channels"]
            head = ref.quant_conv if ref.quant_conv is not None else ref.encoder.conv_out
            head.bias[z] = 100.0
            head.bias[z + 1] = -100.0
    return ref


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parity_with_diffusers(name, tmp_path):
    config, shape = VARIANTS[name]
    ref = _reference(config, tmp_path, clamp=name == "sd_2lvl")
    cfg, model = parity.load(ref, SPEC, tmp_path)
    assert cfg.block_out_channels == tuple(config["block_out_channels"])

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
        want_mean, want_logvar = dist.mean.numpy(), dist.logvar.numpy()
    mean, logvar = nnx.jit(lambda m, v: m.encode(v))(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
    parity.assert_close(np.asarray(mean).transpose(0, 3, 1, 2), want_mean, what="mean")
    parity.assert_close(np.asarray(logvar).transpose(0, 3, 1, 2), want_logvar, what="logvar")
    if name == "sd_2lvl":
        assert float(logvar.max()) == 20.0 and float(logvar.min()) == -30.0

    z = rng.standard_normal(want_mean.shape).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy()
    got = nnx.jit(lambda m, v: m.decode(v))(model, jnp.asarray(z.transpose(0, 2, 3, 1)))
    assert got.shape == (shape[0], shape[2], shape[3], config.get("out_channels", 3))
    parity.assert_close(np.asarray(got).transpose(0, 3, 1, 2), want, what="decode")


def test_activations_keep_dtype(tmp_path):
    _, model = parity.load(_reference(VARIANTS["sd_2lvl"][0], tmp_path), SPEC, tmp_path, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.bfloat16)
    mean, logvar = nnx.eval_shape(lambda m, v: m.encode(v), model, x)
    assert mean.dtype == logvar.dtype == jnp.bfloat16
    assert nnx.eval_shape(lambda m, v: m.decode(v), model, mean).dtype == jnp.bfloat16


def test_flux_real_size_shapes_and_keys(tmp_path):
    cfg = from_dict(AutoencoderKLConfig, FLUX_VAE)
    assert cfg.downsample_factor == 8 and cfg.shift_factor == 0.1159
    graphdef, state = SPEC.abstract(cfg)
    model = nnx.merge(graphdef, state)
    image = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    mean, logvar = nnx.eval_shape(lambda m, v: m.encode(v), model, image)
    assert mean.shape == logvar.shape == (1, 8, 12, 16)
    out = nnx.eval_shape(lambda m, v: m.decode(v), model, mean)
    assert out.shape == (1, 64, 96, 3)

    config = {k: v for k, v in FLUX_VAE.items() if not k.startswith("_")}
    parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchAutoencoderKL(**config)),
        tmp_path,
        component="vae",
        missing="decoder.up_blocks.3.resnets.2.conv2.weight",
        unexpected=("encoder.mid_block.attentions.0.query.weight", (512, 512)),
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"down_block_types": ["AttnDownEncoderBlock2D"]}, "down_block_types"),
        ({"up_block_types": ["UpBlock2D"]}, "up_block_types"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"norm_num_groups": 5}, "norm_num_groups"),
        ({"block_out_channels": [8, 16]}, "one of each per level"),
        ({"latents_mean": [0.0, 1.0]}, "latents_mean"),
    ],
)
def test_bad_config(change, match, tmp_path):
    with pytest.raises(InputError, match=match):
        from_dict(AutoencoderKLConfig, {**_tiny((8,)), **change})
    # The loader reads config.json through the same validation, before touching any weight.
    (tmp_path / "config.json").write_text(json.dumps({**_tiny((8,)), **change}))
    with pytest.raises(InputError, match=match):
        load_component(SPEC, tmp_path)


def test_config_from_dict():
    cfg = from_dict(AutoencoderKLConfig, {**FLUX_VAE, "unknown_key": 1})
    # Hashable (lists became tuples), since the module keeps its config as static graph data.
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    assert cfg.block_out_channels == (128, 256, 512, 512) and cfg.use_quant_conv is False
    sd = from_dict(AutoencoderKLConfig, {**FLUX_VAE, "shift_factor": None, "latents_mean": [0.0] * 16})
    assert sd.shift_factor is None and sd.latents_mean == (0.0,) * 16
