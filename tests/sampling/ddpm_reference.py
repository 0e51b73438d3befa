"""Shared by the DDPM-solver tests: a deterministic fake model, diffusers' sampling loop, and jdiff's."""

import functools
import sys

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jdiff.sampling.loop import sample
from jdiff.sampling.noise import step_noise
from jdiff.sampling.table import SAMPLERS, sampler_for

RNG = np.random.default_rng(0)
X0 = RNG.standard_normal((2, 3, 5)).astype(np.float32)  # [B, C, W]: tiny, non-square
W = (RNG.standard_normal((5, 5)) * 0.6).astype(np.float32)


def fake_model(x, t, xp=jnp):
    """A fixed nonlinear function of the model input and the timestep, bounded like a real noise prediction."""
    w = W if xp is jnp else torch.from_numpy(W)
    return xp.tanh(x @ w) * (1 + t / 1000) + 0.1 * xp.sin(t / 100 + x)


def reference(name: str, config: dict, steps: int, x0=X0, *, step_kwargs=None, set_kwargs=None, keys=None):
    """diffusers' loop as its pipelines run it (init_noise_sigma, scale_model_input, step) -> (scheduler, x).

    With `keys`, the scheduler's random draws are replaced by the noise jdiff draws at each step from those
    keys (`noise.step_noise`), so stochastic solvers compare update for update.
    """
    ref = getattr(diffusers, name).from_config(config)
    ref.set_timesteps(steps, **(set_kwargs or {}))
    module = sys.modules[type(ref).__module__]
    current = [0]  # the step being run, for the noise of its draw

    def our_noise(shape, **kwargs):
        return torch.from_numpy(np.asarray(step_noise(keys, current[0], tuple(shape)[1:])))

    x = torch.from_numpy(x0) * ref.init_noise_sigma
    original = getattr(module, "randn_tensor", None)
    if keys is not None:
        module.randn_tensor = our_noise
    try:
        for step, t in enumerate(ref.timesteps):
            current[0] = step
            out = fake_model(ref.scale_model_input(x, t), t.float(), torch)
            x = ref.step(out, t, x, **(step_kwargs or {})).prev_sample
    finally:
        if original is not None:
            module.randn_tensor = original
    return ref, x.numpy()


@functools.partial(jax.jit, static_argnames=("name", "cfg"))
def _loop(latents, sched, keys, name, cfg):
    return sample(SAMPLERS[name], cfg, lambda x, t, _: fake_model(x, t), latents, sched, noise_keys=keys)


def ours(name: str, config: dict, steps: int, x0=X0, *, keys=None, **schedule_kwargs):
    """jdiff's loop (one jit per solver config) -> (schedule, final latents)."""
    sampler, cfg = sampler_for(name, config)
    sched = sampler.schedule(cfg, steps, **schedule_kwargs)
    return sched, np.asarray(_loop(jnp.asarray(x0), sched, keys, name, cfg))
