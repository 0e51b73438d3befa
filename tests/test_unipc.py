"""Flow-matching UniPC against diffusers' UniPCMultistepScheduler as the Wan pipelines configure it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from jdiff.errors import InputError
from jdiff.sampling import loop
from jdiff.sampling.unipc import UniPCConfig, unipc_init, unipc_loop, unipc_schedule, unipc_step
from jdiff.weights.config import from_dict

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


@functools.partial(jax.jit, static_argnames="cfg")
def _loop(latents, sigmas, timesteps, w, cfg):
    return unipc_loop(lambda x, t: _velocity(x, t, w), latents, sigmas, timesteps, cfg)


def _ours(cfg: UniPCConfig, steps: int, *, mu=None, x0=X0) -> np.ndarray:
    sigmas, timesteps = unipc_schedule(cfg, steps, mu=mu)
    return np.asarray(
        _loop(jnp.asarray(x0), jnp.asarray(sigmas), jnp.asarray(timesteps), jnp.asarray(W), cfg)
    )


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_schedule_matches_diffusers(steps, shift):
    ref = UniPCMultistepScheduler(**WAN, flow_shift=shift)
    ref.set_timesteps(steps)
    sigmas, timesteps = unipc_schedule(from_dict(UniPCConfig, dict(ref.config)), steps)
    np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
    assert sigmas.dtype == np.float32 and timesteps.dtype == np.float32


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
    sigmas, timesteps = unipc_schedule(from_dict(UniPCConfig, dict(ref.config)), steps, mu=mu)
    np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_loop_matches_diffusers(steps, shift):
    ref, want = _reference({**WAN, "flow_shift": shift}, steps)
    got = _ours(from_dict(UniPCConfig, dict(ref.config)), steps)
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
    got = _ours(from_dict(UniPCConfig, dict(ref.config)), 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bh1_final_step_is_the_data_prediction(order):
    """diffusers' bh1 last step to sigma 0 is NaN (-inf * 0); ours is its limit, the last x0 prediction."""
    ref, want = _reference({**WAN, "flow_shift": 3.0, "solver_type": "bh1", "solver_order": order}, 6)
    assert np.isnan(want).all()
    got = _ours(from_dict(UniPCConfig, dict(ref.config)), 6)
    np.testing.assert_allclose(got, ref.model_outputs[-1].numpy(), rtol=1e-5, atol=1e-5)


def test_jit_once_across_latents_and_shifts():
    cfg = from_dict(UniPCConfig, {**WAN, "flow_shift": 3.0})
    traces = 0

    @jax.jit
    def run(latents, sigmas, timesteps):
        nonlocal traces
        traces += 1
        return unipc_loop(lambda x, t: _velocity(x, t, W), latents, sigmas, timesteps, cfg, progress=True)

    seen = []
    loop.set_progress_hook(seen.append)
    try:
        for shift, x0 in [(3.0, X0), (5.0, -X0), (1.0, 0.5 * X0)]:
            ref, want = _reference({**WAN, "flow_shift": shift}, 4, x0=x0)
            sigmas, timesteps = unipc_schedule(from_dict(UniPCConfig, dict(ref.config)), 4)
            got = run(jnp.asarray(x0), jnp.asarray(sigmas), jnp.asarray(timesteps))
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
        jax.effects_barrier()
    finally:
        loop.set_progress_hook(None)
    assert traces == 1
    assert sorted(seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_step_by_step_and_dtype():
    """unipc_step driven by hand (traced i under jit) in bf16 keeps the latents' dtype and tracks float32."""
    cfg = from_dict(UniPCConfig, {**WAN, "flow_shift": 5.0})
    sigmas, timesteps = unipc_schedule(cfg, 5)
    step = jax.jit(unipc_step, static_argnames="cfg")
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        state = unipc_init(jnp.asarray(X0, dtype), cfg)
        for i in range(5):
            v = _velocity(state.sample.astype(jnp.float32), timesteps[i], W).astype(dtype)
            state, x = step(state, v, jnp.int32(i), jnp.asarray(sigmas), cfg=cfg)
            assert x.dtype == dtype and state.sample.dtype == dtype
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
    ],
)
def test_unsupported_configs(bad, match):
    with pytest.raises(InputError, match=match):
        from_dict(UniPCConfig, {**WAN, **bad})


def test_bad_step_count_and_missing_mu():
    cfg = from_dict(UniPCConfig, WAN)
    with pytest.raises(InputError, match="at least 1"):
        unipc_schedule(cfg, 0)
    with pytest.raises(ValueError, match="mu"):
        unipc_schedule(from_dict(UniPCConfig, {**WAN, "use_dynamic_shifting": True}), 4)
    # diffusers' defaults (epsilon prediction on VP sigmas) are refused rather than silently mis-sampled.
    with pytest.raises(InputError):
        from_dict(UniPCConfig, {})
