"""AutoencoderKLHunyuanVideo15: parity with diffusers through the real loader, real-size key coverage, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15 as TorchVAE

from jdiff.errors import InputError
from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
from jdiff.models.hunyuan_video15.vae_plan import SPEC
from jdiff.weights.config import from_dict
from tests import parity

REAL = parity.kwargs(HunyuanVideo15VAEConfig.hunyuan_video15())

# 8x spatial, 4x temporal: the encoder's first resampler and the decoder's last are spatial-only, the others
# temporal, so both kinds of each run (with the first-chunk and the later-chunk paths of the temporal ones).
TINY = {"block_out_channels": (8, 16, 16, 16), "spatial_compression_ratio": 8}


def _reference(cfg):
    ref = parity.randomized(TorchVAE(**parity.kwargs(cfg)), 0.1)
    with torch.no_grad():  # RMS-norm gains near one, so a wrong norm shows
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p += 1.0
    return ref


def test_parity(tmp_path):
    """Frame chunks (encode: 1 + 4 frames; decode: 1 + 1 + 1 latent frames, two of them scanned) against
    diffusers' whole-video forward."""
    h, w = 16, 24
    cfg = HunyuanVideo15VAEConfig.tiny(**TINY)
    ref = _reference(cfg)
    _, vae = parity.load(ref, SPEC, tmp_path)
    rng = np.random.default_rng(0)

    # A batch of 2 against diffusers one video at a time: its mid-block attention mask breaks on batches.
    video = rng.uniform(-1, 1, (2, 3, 5, h, w)).astype(np.float32)  # 5 frames -> 2 latent frames
    with torch.no_grad():
        dists = [ref.encode(torch.from_numpy(v[None])).latent_dist for v in video]
    mean, logvar = jax.jit(vae.encode)(jnp.asarray(video.transpose(0, 2, 3, 4, 1)))
    s = cfg.spatial_compression_ratio
    assert mean.shape == (2, 2, h // s, w // s, cfg.latent_channels)
    for name, got in (("mean", mean), ("logvar", logvar)):
        want = np.concatenate([getattr(d, name).numpy() for d in dists]).transpose(0, 2, 3, 4, 1)
        parity.assert_close(got, want, what=name)

    z = rng.standard_normal((1, cfg.latent_channels, 3, 3, 2)).astype(np.float32)  # 3 latent frames, 3x2
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy().transpose(0, 2, 3, 4, 1)
    got = jax.jit(vae.decode)(jnp.asarray(z.transpose(0, 2, 3, 4, 1)))
    assert got.shape == (1, 9, 3 * s, 2 * s, 3)
    parity.assert_close(got, want, what="decode")

    # Causal: an image (I2V's first frame alone) encodes to the first latent frame of any video it starts.
    mean_1, _ = jax.jit(vae.encode)(jnp.asarray(video[:, :, :1].transpose(0, 2, 3, 4, 1)))
    parity.assert_close(mean_1, mean[:, :1], what="first-frame mean")


def test_real_size_shapes_and_keys(tmp_path):
    cfg = from_dict(HunyuanVideo15VAEConfig, {"_class_name": "AutoencoderKLHunyuanVideo15", **REAL})
    assert cfg == HunyuanVideo15VAEConfig.hunyuan_video15()
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchVAE(**REAL).to(torch.bfloat16)),
        tmp_path,
        component="vae",
        missing="decoder.up_blocks.1.upsamplers.0.conv.conv.weight",
        unexpected=("encoder.mid_block.attentions.0.norm_k.weight", (1024,)),
    )
    assert shapes["decoder.up_blocks.0.upsamplers.0.conv.conv.kernel"] == (3, 3, 3, 1024, 8192)
    assert shapes["encoder.down_blocks.3.downsamplers.0.conv.conv.kernel"] == (3, 3, 3, 1024, 128)
    assert shapes["encoder.mid_block.attentions.0.norm.gamma"] == (1024, 1, 1, 1)


def test_bad_config_and_inputs():
    with pytest.raises(InputError, match="power of two"):
        HunyuanVideo15VAEConfig.tiny(spatial_compression_ratio=6)
    with pytest.raises(InputError, match="levels"):
        HunyuanVideo15VAEConfig.tiny(spatial_compression_ratio=8)
    with pytest.raises(InputError, match="resampler"):
        HunyuanVideo15VAEConfig.tiny(block_out_channels=(8, 12, 16))
    from flax import nnx

    from jdiff.models.hunyuan_video15.vae import AutoencoderKLHunyuanVideo15

    vae = nnx.eval_shape(
        lambda: AutoencoderKLHunyuanVideo15(HunyuanVideo15VAEConfig.tiny(), rngs=nnx.Rngs(0))
    )
    with pytest.raises(InputError, match="1 \\+ a multiple of 4"):
        vae.encode(jnp.zeros((1, 4, 8, 8, 3)))
    with pytest.raises(InputError, match="multiples of 4"):
        vae.encode(jnp.zeros((1, 5, 8, 6, 3)))
    with pytest.raises(InputError, match="latents"):
        vae.decode(jnp.zeros((1, 2, 2, 2, 3)))


def test_bfloat16_decode_close_to_float32(tmp_path):
    from jdiff.weights.loading import load_component

    cfg = HunyuanVideo15VAEConfig.tiny()
    ref = _reference(cfg)
    ref.save_pretrained(tmp_path)
    _, vae = load_component(SPEC, tmp_path, dtype=jnp.bfloat16)
    z = np.random.default_rng(1).standard_normal((1, cfg.latent_channels, 2, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy().transpose(0, 2, 3, 4, 1)
    got = jax.jit(vae.decode)(jnp.asarray(z.transpose(0, 2, 3, 4, 1), jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    parity.assert_close(got.astype(jnp.float32), want, tol=3e-2)


def test_real_size_shapes():
    """The released VAE traced abstractly: a 480p clip of 5 frames to 2 latent frames and back."""
    from flax import nnx

    from jdiff.models.hunyuan_video15.vae import AutoencoderKLHunyuanVideo15

    vae = nnx.eval_shape(
        lambda: AutoencoderKLHunyuanVideo15(HunyuanVideo15VAEConfig.hunyuan_video15(), rngs=nnx.Rngs(0))
    )
    mean, _ = jax.eval_shape(
        lambda m, x: m.encode(x), vae, jax.ShapeDtypeStruct((1, 5, 480, 848, 3), jnp.bfloat16)
    )
    assert mean.shape == (1, 2, 30, 53, 32)
    assert jax.eval_shape(lambda m, z: m.decode(z), vae, mean).shape == (1, 5, 480, 848, 3)
