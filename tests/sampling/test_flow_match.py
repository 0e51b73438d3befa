"""The table's flow-match Euler row against diffusers' FlowMatchEulerDiscreteScheduler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from jdiff.errors import InputError
from jdiff.sampling.flow_match import calculate_shift, default_sigmas
from jdiff.sampling.loop import sample
from jdiff.sampling.table import sampler_for

DEV = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
SCHNELL = dict(shift=1.0, use_dynamic_shifting=False)


def _euler(config: dict):
    return sampler_for("FlowMatchEulerDiscreteScheduler", config)


@pytest.mark.parametrize("steps", [1, 4, 28, 50])
@pytest.mark.parametrize(
    "sched",
    [
        DEV,
        SCHNELL,
        dict(shift=3.0),
        dict(shift=5.0, shift_terminal=0.02),
        {**DEV, "time_shift_type": "linear"},
    ],
)
@pytest.mark.parametrize("seq_len", [16, 1024, 4096, 6400])
def test_schedule_matches_diffusers(steps, sched, seq_len):
    if steps == 1 and "shift_terminal" in sched:
        pytest.skip("diffusers returns NaN sigmas here; see test_one_step_shift_terminal")
    ref = FlowMatchEulerDiscreteScheduler(**sched)
    sampler, cfg = _euler(dict(ref.config))
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    ref.set_timesteps(sigmas=default_sigmas(steps), mu=mu)  # how diffusers' FluxPipeline calls it
    got = sampler.schedule(cfg, steps, sigmas=default_sigmas(steps), mu=mu)
    np.testing.assert_array_equal(got.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(got.timesteps, ref.timesteps.numpy())


def test_euler_loop_matches_scheduler_steps():
    ref = FlowMatchEulerDiscreteScheduler(**DEV)
    sampler, cfg = _euler(dict(ref.config))
    ref.set_timesteps(sigmas=default_sigmas(6), mu=0.8)
    sched = sampler.schedule(cfg, 6, sigmas=default_sigmas(6), mu=0.8)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 5, 4)).astype(np.float32)
    w = rng.standard_normal((4, 4)).astype(np.float32)

    def model(x, t, _):  # a model whose output depends on both the state and the noise level
        return jnp.tanh(x @ w) * (1 + t / 1000)

    # With a progress token nobody registered: the callback is compiled in and a no-op.
    got = sample(sampler, cfg, model, jnp.asarray(x0), sched, progress=jnp.int32(7))
    x = torch.from_numpy(x0)
    for t in ref.timesteps:
        v = torch.tanh(x @ torch.from_numpy(w)) * (1 + t / 1000)
        x = ref.step(v, t, x).prev_sample
    np.testing.assert_allclose(np.asarray(got), x.numpy(), rtol=1e-6, atol=1e-6)


def test_euler_step_upcasts():
    sampler, cfg = _euler({})
    sched = sampler.schedule(cfg, 1)  # sigmas [1, 0]
    x = jnp.ones((3,), jnp.bfloat16)
    out, state = sampler.step(
        cfg, sched, sampler.init(cfg, sched, x), 0, x, jnp.full((3,), 0.5, jnp.bfloat16)
    )
    assert out.dtype == jnp.bfloat16 and state == ()
    np.testing.assert_allclose(np.asarray(out, np.float32), 0.5)


def test_unsupported_scheduler_options():
    with pytest.raises(InputError, match="use_karras_sigmas"):
        _euler({"use_karras_sigmas": True})
    sampler, cfg = _euler({"use_dynamic_shifting": True})
    with pytest.raises(ValueError, match="mu"):
        sampler.schedule(cfg, 3, sigmas=default_sigmas(3))


def test_one_step_shift_terminal_is_finite():
    sampler, cfg = _euler(dict(shift=5.0, shift_terminal=0.02))
    got = sampler.schedule(cfg, 1, sigmas=default_sigmas(1))
    np.testing.assert_array_equal(got.sigmas, [1.0, 0.0])
    np.testing.assert_array_equal(got.timesteps, [1000.0])


@pytest.mark.parametrize("steps", [1, 3, 30])
@pytest.mark.parametrize("sched", [dict(shift=3.0), dict(shift=5.0), dict(shift=1.0), DEV])
def test_schedule_from_steps_matches_diffusers(steps, sched):
    ref = FlowMatchEulerDiscreteScheduler(**sched)
    sampler, cfg = _euler(dict(ref.config))
    kw = {"mu": 0.7} if cfg.use_dynamic_shifting else {}
    ref.set_timesteps(steps, **kw)  # how diffusers' Wan pipelines call it
    got = sampler.schedule(cfg, steps, **kw)
    np.testing.assert_array_equal(got.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(got.timesteps, ref.timesteps.numpy())


def test_noise_keys_are_jax_keys_and_use_all_64_bits_of_the_seed():
    from jdiff.sampling.noise import noise_from_keys, noise_keys

    seeds = [0, 5, 2**31 + 3, 2**32 + 5, 2**63 - 1]
    keys = noise_keys(seeds)
    assert keys.dtype == np.uint32 and keys.shape == (5, 2)
    for s, k in zip(seeds[:3], keys[:3], strict=True):  # below 2**32: exactly jax.random.key(s)
        np.testing.assert_array_equal(k, np.asarray(jax.random.key_data(jax.random.key(s))))
    noise = np.asarray(jax.jit(noise_from_keys, static_argnums=1)(keys, (3, 4)))
    assert noise.shape == (5, 3, 4) and noise.dtype == np.float32
    want = jax.random.normal(jax.random.key(5), (3, 4), jax.numpy.float32)
    np.testing.assert_allclose(noise[1], np.asarray(want), rtol=1e-6, atol=1e-6)
    assert not np.allclose(noise[1], noise[3])  # 5 and 2**32 + 5 no longer share their noise
