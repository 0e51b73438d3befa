"""Timesteps and guidance rounded to the model's dtype as diffusers rounds them (`jdiff.layers.rounding`).

In bfloat16, diffusers' flow pipelines pass `t.to(latents.dtype) / 1000` and FLUX's transformer embeds
`timestep.to(dtype) * 1000` (a guidance of 3.5 becomes 3504); the sinusoidal embeddings turn those roundings
into a large change of the output (FLUX.1-dev widths, 1 double + 1 single block: 0.29 relative). The
parity tests elsewhere run in float32, where the rounding is the identity; these run in bfloat16.
"""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel as TorchFlux

from jdiff.layers.embeddings import pipeline_sigma
from jdiff.layers.rope import rope_cos_sin
from jdiff.layers.rounding import rounded
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.plan import SPEC
from tests import parity
from tests.utils import rel_err

# A flow schedule's timesteps (0..1000) and some guidance scales, incl. values that bfloat16 cannot hold.
T = np.array([1000.0, 997.3, 731.25, 500.0, 123.456, 3.5, 0.0], np.float32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_rounding_matches_torch_under_jit(dtype):
    tdt = {jnp.bfloat16: torch.bfloat16, jnp.float16: torch.float16, jnp.float32: torch.float32}[dtype]
    t = torch.tensor(T)
    want_sigma = (t.to(tdt) / 1000).float().numpy()  # FluxPipeline: t.to(latents.dtype), then / 1000
    want_scaled = (t.to(tdt) * 1000).float().numpy()  # FluxTransformer2DModel: t.to(dtype) * 1000
    # Jitted, and followed by float32 math as in the models: XLA may drop an astype round trip there.
    got_sigma = jax.jit(lambda x: pipeline_sigma(x, dtype) * 1.0)(jnp.asarray(T))
    got_scaled = jax.jit(lambda x: rounded(rounded(x, dtype) * 1000, dtype) + 0.0)(jnp.asarray(T))
    # Exact in 16 bits; in float32 XLA may divide by multiplying with 1/1000 (one ulp).
    tol = 0 if dtype != jnp.float32 else 1e-6
    np.testing.assert_allclose(np.asarray(got_sigma), want_sigma, rtol=tol, atol=0)
    np.testing.assert_allclose(np.asarray(got_scaled), want_scaled, rtol=tol, atol=0)
    assert got_sigma.dtype == jnp.float32


def test_flux_bf16_output_next_to_diffusers_bf16():
    """The same tiny FLUX.1 in bfloat16 on both sides, at a timestep and a guidance bfloat16 rounds: jdiff's
    output stays at bfloat16 noise from diffusers' (0.005 here; 0.015-0.02 without the rounding)."""
    ref = parity.randomized(TorchFlux(**parity.kwargs(FluxConfig.tiny(num_attention_heads=3))))
    ref = ref.to(torch.bfloat16)
    cfg, model = parity.load(ref, SPEC, tempfile.mkdtemp(), dtype=jnp.bfloat16)
    h, w, t = 3, 5, 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, h * w, cfg.in_channels)).astype(np.float32)
    txt = rng.standard_normal((1, t, cfg.joint_attention_dim)).astype(np.float32)
    pooled = rng.standard_normal((1, cfg.pooled_projection_dim)).astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 1], img[..., 2] = np.arange(h)[:, None], np.arange(w)[None]
    ids = np.concatenate([np.zeros((t, 3), np.float32), img.reshape(-1, 3)])
    rope = rope_cos_sin(jnp.asarray(ids), tuple(cfg.axes_dims_rope), 10000.0)
    timestep, guidance = 723.4, 3.5
    bf = torch.bfloat16
    with torch.no_grad():
        want = ref(
            hidden_states=torch.tensor(x).to(bf),
            encoder_hidden_states=torch.tensor(txt).to(bf),
            pooled_projections=torch.tensor(pooled).to(bf),
            timestep=torch.tensor([timestep]).to(bf) / 1000,
            guidance=torch.tensor([guidance]),
            txt_ids=torch.tensor(ids[:t]),
            img_ids=torch.tensor(ids[t:]),
            return_dict=False,
        )[0]
    sigma = pipeline_sigma(jnp.asarray([timestep]), jnp.bfloat16)
    got = jax.jit(lambda m, *a: m(*a, rope, guidance=jnp.asarray([guidance])))(
        model, *(jnp.asarray(a, jnp.bfloat16) for a in (x, txt, pooled)), sigma
    )
    err = rel_err(np.asarray(got, np.float32), want.float().numpy())
    assert err < 0.01, err
