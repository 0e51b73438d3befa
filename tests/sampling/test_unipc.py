"""The table's flow-matching UniPC row against diffusers' UniPCMultistepScheduler as the Wan pipelines
configure it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from jdiff.errors import InputError
from jdiff.sampling import progress
from jdiff.sampling.loop import sample
from jdiff.sampling.table import SAMPLERS, sampler_for

UNIPC = SAMPLERS["UniPCMultistepScheduler"]

# Wan2.1 scheduler/scheduler_config.json, less flow_shift (3.0 at 480p, 5.0 at 720p).
WAN = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    solver_order=2,
    predict_x0=True,
    solver_type="bh2",
    lower_order_final=True,
    disable_corrector=[],
    final_sigmas_type="zero",
    timestep_spacing="linspace",
    steps_offset=0,
)
STEPS = [1, 2, 3, 10, 50]
SHIFTS = [1.0, 3.0, 5.0]

RNG = np.random.default_rng(0)
X0 = RNG.standard_normal((2, 5, 4)).astype(np.float32)
W = (RNG.standard_normal((4, 4)) * 0.7).astype(np.float32)


def _reference(sched: dict, steps: int, *, mu=None, x0=X0) -> tuple[UniPCMultistepScheduler, np.ndarray]:
    """diffusers' loop as pipeline_wan runs it, over a toy model depending on both the state and t."""
    ref = UniPCMultistepScheduler(**sched)
    ref.set_timesteps(steps, mu=mu)
    ref.set_begin_index(0)
    x, w = torch.from_numpy(x0), torch.from_numpy(W)
    for t in ref.timesteps:
        v = torch.tanh(x @ w) * (1 + t / 1000)
        x = ref.step(v, t, x).prev_sample
    return ref, x.numpy()


def _velocity(x, t, w):
    return jnp.tanh(x @ w) * (1 + t / 1000)


def _cfg(config: dict):
    sampler, cfg = sampler_for("UniPCMultistepScheduler", config)
    assert sampler is UNIPC
    return cfg


@functools.partial(jax.jit, static_argnames="cfg")
def _loop(latents, sched, w, cfg):
    return sample(UNIPC, cfg, lambda x, t, _: _velocity(x, t, w), latents, sched)


def _ours(config: dict, steps: int, *, mu=None, x0=X0) -> np.ndarray:
    cfg = _cfg(config)
    return np.asarray(_loop(jnp.asarray(x0), UNIPC.schedule(cfg, steps, mu=mu), jnp.asarray(W), cfg))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_schedule_matches_diffusers(steps, shift):
    ref = UniPCMultistepScheduler(**WAN, flow_shift=shift)
    ref.set_timesteps(steps)
    got = UNIPC.schedule(_cfg(dict(ref.config)), steps)
    np.testing.assert_array_equal(got.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(got.timesteps, ref.timesteps.numpy())
    assert got.sigmas.dtype == np.float32 and got.timesteps.dtype == np.float32


@pytest.mark.parametrize(
    "extra",
    [
        dict(use_dynamic_shifting=True, time_shift_type="exponential"),
        dict(use_dynamic_shifting=True, time_shift_type="linear"),
        dict(shift_terminal=0.1),
        dict(final_sigmas_type="sigma_min"),
    ],
)
@pytest.mark.parametrize("steps", [2, 10])
def test_schedule_variants_match_diffusers(extra, steps):
    ref = UniPCMultistepScheduler(**{**WAN, "flow_shift": 3.0, **extra})
    mu = 0.8 if extra.get("use_dynamic_shifting") else None
    ref.set_timesteps(steps, mu=mu)
    got = UNIPC.schedule(_cfg(dict(ref.config)), steps, mu=mu)
    np.testing.assert_array_equal(got.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(got.timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("extra", [{}, dict(use_dynamic_shifting=True)])
def test_custom_sigmas_match_diffusers(dtype, extra):
    """set_timesteps(sigmas=...) shifts the given base sigmas in their own precision."""
    ref = UniPCMultistepScheduler(**{**WAN, "flow_shift": 3.0, **extra})
    mu = 0.8 if extra else None
    base = np.linspace(1.0, 0.05, 7).astype(dtype)
    ref.set_timesteps(sigmas=base.copy(), mu=mu)
    got = UNIPC.schedule(_cfg(dict(ref.config)), 7, sigmas=base, mu=mu)
    np.testing.assert_array_equal(got.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(got.timesteps, ref.timesteps.numpy())
    with pytest.raises(ValueError, match="8 steps need 8 base sigmas"):
        UNIPC.schedule(_cfg(dict(ref.config)), 8, sigmas=base, mu=mu)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_loop_matches_diffusers(steps, shift):
    ref, want = _reference({**WAN, "flow_shift": shift}, steps)
    got = _ours(dict(ref.config), steps)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [
        dict(solver_order=1),
        dict(solver_order=3),
        dict(solver_type="bh1", final_sigmas_type="sigma_min"),
        dict(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"),
        dict(disable_corrector=[0, 2]),
        dict(lower_order_final=False, final_sigmas_type="sigma_min"),
        dict(final_sigmas_type="sigma_min"),
    ],
)
def test_loop_variants_match_diffusers(extra):
    ref, want = _reference({**WAN, "flow_shift": 3.0, **extra}, 6)
    got = _ours(dict(ref.config), 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bh1_final_step_is_the_data_prediction(order):
    """diffusers' bh1 last step to sigma 0 is NaN (-inf * 0); ours is its limit, the last x0 prediction."""
    ref, want = _reference({**WAN, "flow_shift": 3.0, "solver_type": "bh1", "solver_order": order}, 6)
    assert np.isnan(want).all()
    got = _ours(dict(ref.config), 6)
    np.testing.assert_allclose(got, ref.model_outputs[-1].numpy(), rtol=1e-5, atol=1e-5)


def test_jit_once_across_latents_and_shifts():
    cfg = _cfg({**WAN, "flow_shift": 3.0})
    traces = 0

    @jax.jit
    def run(latents, sched, token):
        nonlocal traces
        traces += 1
        return sample(UNIPC, cfg, lambda x, t, _: _velocity(x, t, W), latents, sched, progress=token)

    seen = []
    with progress.track(seen.append) as token:
        for shift, x0 in [(3.0, X0), (5.0, -X0), (1.0, 0.5 * X0)]:
            ref, want = _reference({**WAN, "flow_shift": shift}, 4, x0=x0)
            sched = UNIPC.schedule(_cfg(dict(ref.config)), 4)
            got = run(jnp.asarray(x0), sched, np.int32(token))
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
        jax.effects_barrier()
    assert traces == 1
    assert sorted(seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_step_by_step_and_dtype():
    """The row's step driven by hand (traced i under jit) in bf16 keeps the latents' dtype and tracks float32."""
    cfg = _cfg({**WAN, "flow_shift": 5.0})
    sched = UNIPC.schedule(cfg, 5)
    step = jax.jit(UNIPC.step, static_argnums=0)
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.asarray(X0, dtype)
        state = UNIPC.init(cfg, sched, x)
        for i in range(5):
            v = _velocity(x.astype(jnp.float32), sched.timesteps[i], W).astype(dtype)
            x, state = step(cfg, sched, state, jnp.int32(i), x, v)
            assert x.dtype == dtype
        outs[dtype] = np.asarray(x, np.float32)
    np.testing.assert_allclose(
        outs[jnp.float32], _reference({**WAN, "flow_shift": 5.0}, 5)[1], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(outs[jnp.bfloat16], outs[jnp.float32], atol=0.1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(prediction_type="epsilon"), "flow_prediction"),
        (dict(use_flow_sigmas=False), "use_flow_sigmas"),
        (dict(predict_x0=False), "predict_x0"),
        (dict(solver_order=4), "solver_order"),
        (dict(solver_type="bh3"), "solver_type"),
        (dict(use_karras_sigmas=True), "use_karras_sigmas"),
        (dict(use_beta_sigmas=True), "use_beta_sigmas"),
        (dict(thresholding=True), "thresholding"),
        (dict(final_sigmas_type="one"), "final_sigmas_type"),
        (dict(timestep_spacing="random"), "timestep_spacing"),
        (dict(lower_order_final=False), "lower_order_final"),
        (dict(solver_p={"_class_name": "DDIMScheduler"}), "solver_p"),
        (dict(flow_shift="3.0"), "flow_shift"),
    ],
)
def test_unsupported_configs(bad, match):
    with pytest.raises(InputError, match=match):
        _cfg({**WAN, **bad})


def test_bad_step_count_and_missing_mu():
    cfg = _cfg(WAN)
    with pytest.raises(InputError, match="at least 1"):
        UNIPC.schedule(cfg, 0)
    with pytest.raises(ValueError, match="mu"):
        UNIPC.schedule(_cfg({**WAN, "use_dynamic_shifting": True}), 4)
