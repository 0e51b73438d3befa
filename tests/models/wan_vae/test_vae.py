"""AutoencoderKLWan: parity with diffusers through the real loader (Wan2.1 and Wan2.2 layouts), frame chunking,
real-size shapes and key coverage, config validation."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan as TorchAutoencoderKLWan
from flax import nnx

from jdiff.errors import InputError
from jdiff.models.wan_vae.config import WanVAEConfig
from jdiff.models.wan_vae.plan import SPEC
from jdiff.weights.config import from_dict
from jdiff.weights.loading import load_component
from tests import parity

# `Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae/config.json` (latent statistics left to diffusers' defaults, which
# are the Wan2.1 ones).
WAN21_VAE = {
    "_class_name": "AutoencoderKLWan",
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}
# `Wan-AI/Wan2.2-TI2V-5B-Diffusers/vae/config.json`, as diffusers' `scripts/convert_wan_to_diffusers.py`
# (`vae22_diffusers_config`) writes it; dim_mult, num_res_blocks and temperal_downsample are the defaults.
WAN22_VAE = {
    **WAN21_VAE,
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
    "clip_output": False,  # not a diffusers 0.42 key: ignored there and here
}

_TINY_STATS = {"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}
# (config, (batch, height, width), encoded frame counts, decoded latent frame counts). Each frame count
# compiles twice (the first chunk, the scan body), so the counts are split across the variants: 1, 5 and 9
# video frames (no scan, one and two scanned chunks); 1, 2 and 3 latent frames likewise.
VARIANTS = {
    # Wan2.1 layout with the real temporal pattern.
    "wan21": (
        {
            "base_dim": 8,
            "z_dim": 4,
            "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1,
            "attn_scales": [],
            "temperal_downsample": [False, True, True],
            **_TINY_STATS,
        },
        (1, 16, 24),
        (1, 9),
        (1, 3),
    ),
    # Wan2.2 layout: patchify, residual blocks with AvgDown3D / DupUp3D shortcuts, its own decoder width.
    "wan22": (
        {
            "base_dim": 8,
            "decoder_base_dim": 12,
            "z_dim": 4,
            "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True, True],
            "is_residual": True,
            "patch_size": 2,
            "in_channels": 12,
            "out_channels": 12,
            "scale_factor_spatial": 16,
            **_TINY_STATS,
        },
        (2, 32, 48),
        (5,),
        (2,),
    ),
}

# XLA compiles dominate this file; at backend optimisation level 0 they take 3-4x less time on CPU for the
# same arithmetic (results move by ~1e-7 relative). The Wan2.2 variant keeps the default level, so the
# production compile is covered too.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(model, method: str, *, fast: bool):
    graphdef, state = nnx.split(model)
    fn = jax.jit(
        lambda st, x: getattr(nnx.merge(graphdef, st), method)(x),
        compiler_options=FAST_COMPILE if fast else None,
    )
    return lambda x: fn(state, x)


def _reference(config, tmp_path):
    ref = TorchAutoencoderKLWan(**config).eval()
    with torch.no_grad():
        # Away from the default inits (unit RMS-norm gammas, zero biases): a swapped or untransposed tensor
        # must show. Gammas stay near 1 so attention logits stay O(1). The decoder's last conv is small so that
        # diffusers' [-1, 1] clamp leaves most values alone (clamped values would hide errors), except for
        # its first output channel, pushed past 1 so that the clamp is exercised too.
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(std=0.1)
        ref.decoder.conv_out.weight.mul_(0.2)
        ref.decoder.conv_out.bias[0] = 1.0
    return ref


def _to_torch(x):  # [B, T, H, W, C] -> [B, C, T, H, W]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _from_jax(x):  # [B, T, H, W, C] -> [B, C, T, H, W]
    return np.moveaxis(np.asarray(x), -1, 1)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parity_with_diffusers(name, tmp_path):
    config, (b, h, w), frame_counts, latent_counts = VARIANTS[name]
    ref = _reference(config, tmp_path)
    cfg, model = parity.load(ref, SPEC, tmp_path)
    assert cfg.is_residual == config.get("is_residual", False)
    encode = _jit(model, "encode", fast=name == "wan21")
    decode = _jit(model, "decode", fast=name == "wan21")
    rng = np.random.default_rng(0)

    for frames in frame_counts:
        x = rng.uniform(-1, 1, (b, frames, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            dist = ref.encode(_to_torch(x)).latent_dist
        mean, logvar = encode(jnp.asarray(x))
        assert mean.shape == (b, 1 + (frames - 1) // 4, h // cfg.spatial_factor, w // cfg.spatial_factor, 4)
        parity.assert_close(_from_jax(mean), dist.mean, what="mean")
        parity.assert_close(_from_jax(logvar), dist.logvar, what="logvar")

    for t in latent_counts:
        z = rng.standard_normal((b, t, h // cfg.spatial_factor, w // cfg.spatial_factor, 4)).astype(
            np.float32
        )
        with torch.no_grad():
            want = ref.decode(_to_torch(z)).sample.numpy()
        # Some values clamped (the clamp is tested), but less than the one pushed channel of three.
        assert 0.01 < np.mean(np.abs(want) >= 1.0) < 1 / 3
        got = decode(jnp.asarray(z))
        assert got.shape == (b, 1 + 4 * (t - 1), h, w, 3)
        parity.assert_close(_from_jax(got), want, what="decode")


def _walk(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in it (scan bodies, pjit calls, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk(inner)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_frames_are_processed_in_chunks(name):
    """No convolution ever sees more than one chunk (plus its 2 cached frames): the time axis is scanned.

    Traced only (no compile): decoding 9 latent frames and encoding 17 video frames must each be one
    `scan` over 8 / 4 chunks, and the longest input of any conv that mixes time, in or out of the scan, is
    2 cached + 4 frames (an unchunked decoder would convolve 2 + 33 frames).
    """
    cfg = from_dict(WanVAEConfig, VARIANTS[name][0])
    graphdef, state = SPEC.abstract(cfg)
    f = cfg.spatial_factor
    cases = (
        ("decode", (1, 9, 2, 3, cfg.z_dim), 8, (1, 1, 2, 3, cfg.z_dim)),
        (
            "encode",
            (1, 17, 2 * f, 3 * f, 3),
            4,
            (1, 4, 2 * f // cfg.patch, 3 * f // cfg.patch, cfg.in_channels),
        ),
    )
    for method, shape, chunks, chunk_shape in cases:
        fn = lambda st, x, method=method: getattr(nnx.merge(graphdef, st), method)(x)
        jaxpr = jax.make_jaxpr(fn)(state, jax.ShapeDtypeStruct(shape, jnp.float32)).jaxpr
        eqns = list(_walk(jaxpr))
        scans = [e for e in eqns if e.primitive.name == "scan"]
        assert [e.params["length"] for e in scans] == [chunks]
        # The scanned-over operand (after the carry) is the stack of input chunks.
        xs = scans[0].invars[scans[0].params["num_consts"] + scans[0].params["num_carry"] :]
        assert [tuple(v.aval.shape) for v in xs] == [(chunks, *chunk_shape)]
        # Frames seen by the convs that mix time (temporal kernel > 1; the 1x1x1 quant convs are per frame).
        seen = [
            e.invars[0].aval.shape[1]
            for e in eqns
            if e.primitive.name == "conv_general_dilated" and e.invars[1].aval.ndim == 5
            if e.invars[1].aval.shape[0] > 1
        ]
        assert seen and max(seen) <= 2 + 4


def test_activations_keep_dtype(tmp_path):
    _, model = parity.load(_reference(VARIANTS["wan22"][0], tmp_path), SPEC, tmp_path, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 5, 32, 32, 3), jnp.bfloat16)
    mean, logvar = nnx.eval_shape(lambda m, v: m.encode(v), model, x)
    assert mean.dtype == logvar.dtype == jnp.bfloat16 and mean.shape == (1, 2, 2, 2, 4)
    out = nnx.eval_shape(lambda m, v: m.decode(v), model, mean)
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 5, 32, 32, 3)


@pytest.mark.parametrize(
    ("config", "spatial", "z", "missing", "unexpected"),
    [
        (WAN21_VAE, 8, 16, "decoder.up_blocks.1.upsamplers.0.time_conv.weight", "decoder.head.0.gamma"),
        (WAN22_VAE, 16, 48, "encoder.down_blocks.1.downsampler.time_conv.bias", "decoder.upsamples.0.gamma"),
    ],
    ids=["wan21", "wan22"],
)
def test_real_size_shapes_and_keys(config, spatial, z, missing, unexpected, tmp_path):
    cfg = from_dict(WanVAEConfig, config)
    assert cfg.spatial_factor == cfg.scale_factor_spatial == spatial and cfg.temporal_factor == 4
    assert cfg.video_in_channels == cfg.video_out_channels == 3
    graphdef, state = SPEC.abstract(cfg)
    model = nnx.merge(graphdef, state)
    video = jax.ShapeDtypeStruct((1, 5, 2 * spatial, 3 * spatial, 3), jnp.bfloat16)
    mean, logvar = nnx.eval_shape(lambda m, v: m.encode(v), model, video)
    assert mean.shape == logvar.shape == (1, 2, 2, 3, z)
    out = nnx.eval_shape(lambda m, v: m.decode(v), model, mean)
    assert out.shape == (1, 5, 2 * spatial, 3 * spatial, 3)

    torch_config = {k: v for k, v in config.items() if not k.startswith("_") and k != "clip_output"}
    parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchAutoencoderKLWan(**torch_config)),
        tmp_path,
        component="vae",
        missing=missing,
        unexpected=(unexpected, (z, 1, 1, 1)),
    )


_TINY21 = VARIANTS["wan21"][0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"temperal_downsample": [False, True]}, "one per downsampling level"),
        ({"temperal_downsample": [True, True, True]}, "expected exactly 2"),
        ({"patch_size": 2}, "in_channels=3 is not a multiple of patch_size"),
        ({"scale_factor_spatial": 16}, "scale_factor_spatial=16 does not match"),
        ({"latents_mean": [0.0] * 16}, "latents_mean has 16 entries"),
        ({"num_res_blocks": 0}, "num_res_blocks must be >= 1"),
        ({"attn_scales": [0.5]}, "attn_scales"),
        ({"is_residual": True, "base_dim": 6, "dim_mult": [1, 3, 3, 3]}, "does not divide"),
    ],
)
def test_bad_config(change, match, tmp_path):
    with pytest.raises(InputError, match=match):
        from_dict(WanVAEConfig, {**_TINY21, **change})
    # The loader reads config.json through the same validation, before touching any weight.
    (tmp_path / "config.json").write_text(json.dumps({**_TINY21, **change}))
    with pytest.raises(InputError, match=match):
        load_component(SPEC, tmp_path)


def test_bad_inputs():
    model = nnx.merge(*SPEC.abstract(from_dict(WanVAEConfig, VARIANTS["wan22"][0])))
    with pytest.raises(InputError, match="expected a video"):
        nnx.eval_shape(lambda m, v: m.encode(v), model, jax.ShapeDtypeStruct((1, 5, 32, 32, 12), jnp.float32))
    with pytest.raises(InputError, match="multiples of 16"):
        nnx.eval_shape(lambda m, v: m.encode(v), model, jax.ShapeDtypeStruct((1, 5, 32, 40, 3), jnp.float32))
    with pytest.raises(InputError, match="expected latents"):
        nnx.eval_shape(lambda m, v: m.decode(v), model, jax.ShapeDtypeStruct((1, 2, 2, 2, 48), jnp.float32))


def test_config_from_dict():
    cfg = from_dict(WanVAEConfig, {**WAN22_VAE, "unknown_key": 1})
    # Hashable (lists became tuples), since the module keeps its config as static graph data.
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    assert cfg.decoder_dim == 256 and cfg.patch == 2 and len(cfg.latents_mean) == 48
    wan21 = from_dict(WanVAEConfig, WAN21_VAE)
    assert wan21.decoder_dim == 96 and wan21.patch == 1 and wan21.latents_std[-1] == 1.9160


def test_presets_are_the_released_configs():
    assert from_dict(WanVAEConfig, WAN21_VAE) == WanVAEConfig.wan21()
    assert from_dict(WanVAEConfig, WAN22_VAE) == WanVAEConfig.wan22()
