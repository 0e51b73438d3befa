"""AutoencoderKLHunyuanVideo15 tiled decode / encode against diffusers' `enable_tiling()`.

The models through the real loader (float32, 2x spatial / 2x temporal so that each tile shape compiles
quickly), and the tiling algorithm alone (blend order, ragged tiles, kept rows) over more geometries, with a
cheap stand-in network on both sides: the 720p latent tile grid at one pixel per latent (the real decode's
blend and kept rows scaled by 1/16), and a 720p image encoded at the real size.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15 as TorchVAE

from jdiff.errors import InputError
from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
from jdiff.models.hunyuan_video15.tiling import VAETiling, tiled
from jdiff.models.hunyuan_video15.vae_plan import SPEC
from tests import parity

# Latent tiles 4 x 6 (pixels 8 x 12 at 2x), half overlapping: 6 x 9 latents give tiles starting at rows 0, 2, 4
# (4, 4, 2 high) and columns 0, 3, 6 (6, 6, 3 wide): both blends, ragged tiles on both edges, 2 x 2 shapes.
TILING = VAETiling(8, 12, 4, 6, 0.5)
TINY = dict(block_out_channels=(8, 8), spatial_compression_ratio=2, temporal_compression_ratio=2)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cfg = HunyuanVideo15VAEConfig.tiny(**TINY)
    ref = parity.randomized(TorchVAE(**parity.kwargs(cfg)), 0.1)
    _, vae = parity.load(ref, SPEC, tmp_path_factory.mktemp("vae"))
    ref.enable_tiling(**vars(TILING))
    return ref, vae


def test_tiled_decode_parity(case):
    """2 latent frames of 6 x 9 (the frame scan inside each tile's map)."""
    ref, vae = case
    z = np.random.default_rng(0).standard_normal((1, 4, 2, 6, 9)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy().transpose(0, 2, 3, 4, 1)
    got = jax.jit(vae.decode, static_argnames="tiling")(
        jnp.asarray(z.transpose(0, 2, 3, 4, 1)), tiling=TILING
    )
    assert got.shape == want.shape == (1, 3, 12, 18, 3)
    parity.assert_close(got, want, what="tiled decode")


def test_tiled_encode_parity(case):
    """An image (image-to-video's first frame) of 4 x 18 pixels: tiles 12 wide every 6 columns (the last 6
    wide), one row of them (tiles start every 4 rows; the 2-D grid is `test_tiled_encode_algorithm`'s)."""
    ref, vae = case
    image = np.random.default_rng(1).uniform(-1, 1, (1, 3, 1, 4, 18)).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(image)).latent_dist
    mean, logvar = jax.jit(vae.encode, static_argnames="tiling")(
        jnp.asarray(image.transpose(0, 2, 3, 4, 1)), tiling=TILING
    )
    assert mean.shape == (1, 1, 2, 9, 4)
    parity.assert_close(mean, dist.mean.numpy().transpose(0, 2, 3, 4, 1), what="tiled mean")
    parity.assert_close(logvar, dist.logvar.numpy().transpose(0, 2, 3, 4, 1), what="tiled logvar")


def test_small_input_is_not_tiled(case):
    """As diffusers: latents (pixels) no larger than a tile decode (encode) whole."""
    _, vae = case
    z = jax.ShapeDtypeStruct((1, 1, 4, 6, 4), jnp.float32)
    assert str(jax.make_jaxpr(lambda z: vae.decode(z, TILING))(z)) == str(jax.make_jaxpr(vae.decode)(z))
    x = jax.ShapeDtypeStruct((1, 1, 8, 12, 3), jnp.float32)
    assert str(jax.make_jaxpr(lambda x: vae.encode(x, TILING))(x)) == str(jax.make_jaxpr(vae.encode)(x))


# ---- the algorithm alone: a stand-in network whose output depends on where a pixel sits in its tile ------------


def _stand_in_torch(s: int):
    """[B, C, T, h, w] -> [B, C, T, h * s, w * s] (s < 1: averaged s-blocks), plus a ramp over the tile."""

    def fn(x):
        if s >= 1:
            y = x.repeat_interleave(s, -2).repeat_interleave(s, -1)
        else:
            y = torch.nn.functional.avg_pool3d(x, (1, round(1 / s), round(1 / s)))
        rows, cols = torch.arange(y.shape[-2]), torch.arange(y.shape[-1])
        return y + 0.1 * rows[:, None] + 0.01 * cols[None, :] ** 1.5

    return fn


def _stand_in_jax(s: int):
    def fn(x):  # [B, T, h, w, C]
        if s >= 1:
            y = jnp.repeat(jnp.repeat(x, s, 2), s, 3)
        else:
            k = round(1 / s)
            b, t, h, w, c = x.shape
            y = x.reshape(b, t, h // k, k, w // k, k, c).mean((3, 5))
        rows, cols = jnp.arange(y.shape[2]), jnp.arange(y.shape[3])
        return y + (0.1 * rows[:, None] + 0.01 * cols[None, :] ** 1.5)[..., None]

    return fn


@pytest.mark.parametrize(
    "hw, tiling, s",
    [
        ((7, 10), VAETiling(16, 24, 4, 6, 0.5), 4),  # 3 tile heights, the last smaller than the blend
        ((45, 80), VAETiling(16, 16, 16, 16), 1),  # 720p's grid (1280x720)
        ((26, 29), VAETiling(16, 16, 16, 16), 1),  # two ragged tiles on the bottom edge (14 and 2 high)
    ],
)
def test_tiled_decode_algorithm(hw, tiling, s):
    z = np.random.default_rng(3).standard_normal((1, 2, 1, *hw)).astype(np.float32)
    ref = types.SimpleNamespace(**vars(tiling), decoder=_stand_in_torch(s))
    ref.blend_v = lambda a, b, e: TorchVAE.blend_v(None, a, b, e)
    ref.blend_h = lambda a, b, e: TorchVAE.blend_h(None, a, b, e)
    ref.tile_latent_min_height, ref.tile_latent_min_width = tiling.latent(s)
    want = TorchVAE.tiled_decode(ref, torch.from_numpy(z)).numpy().transpose(0, 2, 3, 4, 1)
    out = (tiling.tile_sample_min_height, tiling.tile_sample_min_width)
    run = jax.jit(
        lambda z: tiled(
            _stand_in_jax(s), z, tile=tiling.latent(s), overlap=tiling.tile_overlap_factor, tile_out=out
        )
    )
    got = run(jnp.asarray(z.transpose(0, 2, 3, 4, 1)))
    assert got.shape == want.shape == (1, 1, hw[0] * s, hw[1] * s, 2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_tiled_encode_algorithm():
    x = np.random.default_rng(4).standard_normal((1, 1, 1, 720, 1280)).astype(np.float32)
    tiling = VAETiling()
    ref = types.SimpleNamespace(**vars(tiling), encoder=_stand_in_torch(1 / 16))
    ref.blend_v = lambda a, b, e: TorchVAE.blend_v(None, a, b, e)
    ref.blend_h = lambda a, b, e: TorchVAE.blend_h(None, a, b, e)
    ref.tile_latent_min_height, ref.tile_latent_min_width = tiling.latent(16)
    want = TorchVAE.tiled_encode(ref, torch.from_numpy(x)).numpy().transpose(0, 2, 3, 4, 1)
    run = jax.jit(lambda x: tiled(_stand_in_jax(1 / 16), x, tile=(256, 256), overlap=0.25, tile_out=(16, 16)))
    got = run(jnp.asarray(x.transpose(0, 2, 3, 4, 1)))
    assert got.shape == want.shape == (1, 1, 45, 80, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_bad_tiling(case):
    with pytest.raises(InputError, match="tile_overlap_factor in"):
        VAETiling(tile_overlap_factor=1.0)
    with pytest.raises(InputError, match="positive"):
        VAETiling(0, 256)
    assert VAETiling().latent(16) == (16, 16)
    assert VAETiling(128, 256, tile_latent_min_width=8).latent(16) == (8, 8)
    _, vae = case
    with pytest.raises(InputError, match="multiples of 2"):
        vae.encode(jnp.zeros((1, 1, 16, 16, 3)), VAETiling(7, 8))


def test_real_size_tiled_shapes():
    """The released VAE traced abstractly at 720p in the default tiles (2 latent frames): 4 x 7 tiles of 4
    shapes back to 1280 x 720."""
    from flax import nnx

    from jdiff.models.hunyuan_video15.vae import AutoencoderKLHunyuanVideo15

    vae = nnx.eval_shape(
        lambda: AutoencoderKLHunyuanVideo15(HunyuanVideo15VAEConfig.hunyuan_video15(), rngs=nnx.Rngs(0))
    )
    z = jax.ShapeDtypeStruct((1, 2, 45, 80, 32), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda m, z: m.decode(z, VAETiling()))(vae, z)
    assert jaxpr.out_avals[0].shape == (1, 5, 720, 1280, 3)
    # One lax.map (a scan) per tile shape at the top level; the frame scans nest inside.
    assert [e.primitive.name for e in jaxpr.jaxpr.eqns].count("scan") == 4
