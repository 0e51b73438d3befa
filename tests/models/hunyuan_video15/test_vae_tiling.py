"""AutoencoderKLHunyuanVideo15 tiled decode / encode: parity with diffusers' `enable_tiling()` through the real
loader, non-square tiles, ragged edge tiles (one smaller than the blend), float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15 as TorchVAE

from jdiff.errors import InputError
from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
from jdiff.models.hunyuan_video15.tiling import VAETiling
from jdiff.models.hunyuan_video15.vae_plan import SPEC
from tests import parity

# Latent tiles 4 x 6 (pixels 16 x 24 at 4x), half overlapping: latent rows start at 0, 2, 4 (tiles 4, 3, 1
# high: the last one's 4 pixel rows are fewer than the 8-row blend) and columns at 0, 3, 6 (6, 6, 3 wide).
TILING = VAETiling(16, 24, 4, 6, 0.5)
Z_SHAPE = (1, 4, 2, 5, 9)  # [B, C, t, h, w]: 2 latent frames of 5 x 9


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cfg = HunyuanVideo15VAEConfig.tiny()
    ref = parity.randomized(TorchVAE(**parity.kwargs(cfg)), 0.1)
    _, vae = parity.load(ref, SPEC, tmp_path_factory.mktemp("vae"))
    ref.enable_tiling(**vars(TILING))
    return ref, vae


def test_tiled_decode_parity(case):
    ref, vae = case
    z = np.random.default_rng(0).standard_normal(Z_SHAPE).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy().transpose(0, 2, 3, 4, 1)
    decode = jax.jit(vae.decode, static_argnames="tiling")
    got = decode(jnp.asarray(z.transpose(0, 2, 3, 4, 1)), tiling=TILING)
    assert got.shape == want.shape == (1, 5, 20, 36, 3)
    parity.assert_close(got, want, what="tiled decode")
    # Tiling changes the output (the blend is not exact): the comparison above is of the tiled algorithm.
    plain = decode(jnp.asarray(z.transpose(0, 2, 3, 4, 1)), tiling=None)
    assert float(jnp.abs(plain - got).max()) > 1e-2


def test_tiled_encode_parity(case):
    ref, vae = case
    video = np.random.default_rng(1).uniform(-1, 1, (1, 3, 5, 20, 36)).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(video)).latent_dist
    mean, logvar = jax.jit(vae.encode, static_argnames="tiling")(
        jnp.asarray(video.transpose(0, 2, 3, 4, 1)), tiling=TILING
    )
    assert mean.shape == (1, 2, 5, 9, 4)
    parity.assert_close(mean, dist.mean.numpy().transpose(0, 2, 3, 4, 1), what="tiled mean")
    parity.assert_close(logvar, dist.logvar.numpy().transpose(0, 2, 3, 4, 1), what="tiled logvar")


def test_small_input_is_not_tiled(case):
    """As diffusers: latents no larger than a tile decode whole."""
    _, vae = case
    z = jnp.asarray(np.random.default_rng(2).standard_normal((1, 1, 4, 6, 4)), jnp.float32)
    np.testing.assert_array_equal(vae.decode(z, tiling=TILING), vae.decode(z))


def test_bad_tiling():
    with pytest.raises(InputError, match="tile_overlap_factor in"):
        VAETiling(tile_overlap_factor=1.0)
    with pytest.raises(InputError, match="positive"):
        VAETiling(0, 256)
    assert VAETiling().latent(16) == (16, 16)
    assert VAETiling(128, 256, tile_latent_min_width=8).latent(16) == (8, 8)
