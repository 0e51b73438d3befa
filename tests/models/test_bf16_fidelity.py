"""bfloat16 next to the references: the small values they round to the model's dtype before embedding them,
rounded the same way (`jdiff.layers.rounding`).

In bfloat16, diffusers' flow pipelines pass `t.to(latents.dtype) / 1000` and FLUX's transformer embeds
`timestep.to(dtype) * 1000` (a guidance of 3.5 becomes 3504); the sinusoidal embeddings turn those roundings
into a large change of the output (FLUX.1-dev widths, 1 double + 1 single block: 0.29 relative). SDXL's
pipeline builds its size/crop time ids in the text embeddings' dtype (an original size of 1500 becomes 1504).
The parity tests elsewhere run in float32, where the rounding is the identity; these run in bfloat16.
`benchmarks/bf16_survey.py` measures every component this way (docs/devlog.md has its table); only the ones
that needed a fix have a test here.
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


def test_sdxl_size_conditioning_rounded_as_diffusers(tmp_path):
    """SDXL's size/crop time ids: diffusers builds them in the text embeddings' dtype, so in bfloat16 an
    original size of 3000 x 1500 is 3008 x 1504 to the UNet's sinusoidal embedding. The same tiny SDXL pipeline
    in bfloat16 on both sides, one step from the same latents: jdiff's latents stay at bfloat16 noise from
    diffusers'."""
    import jdiff
    from tests.fixtures_sd import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    pipe.save_pretrained(tmp_path)
    gen = jdiff.DiffGenerator.from_pretrained(tmp_path, dtype="bfloat16")
    pipe.to(torch.bfloat16)
    lat = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    kw = dict(height=24, width=40, num_inference_steps=1, guidance_scale=1.0, original_size=(3000, 1500),
              crops_coords_top_left=(0, 0), target_size=(24, 40))  # fmt: skip
    final = {}

    def keep(_, i, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    with torch.no_grad():
        pipe("a red circle", latents=lat, output_type="latent", callback_on_step_end=keep, **kw)
    got = gen.generate("a red circle", latents=lat.float().numpy(), output_type="latent", **kw)
    # 0.002 (diffusers' final latents are bfloat16 values); 0.0097 with the time ids in float32.
    err = rel_err(got.latents, final["latents"].float().numpy())
    assert err < 0.005, err
