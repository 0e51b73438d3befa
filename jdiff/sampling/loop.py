"""The denoising loop: one `lax.scan` over steps inside the caller's jit, the same for every solver.

The caller supplies `model_fn(x, t, extra)` (a closure over the model and the request's conditioning), a
`Sampler` from the table with its config, and the request's `Schedule` as arrays, so every per-request value
is a traced argument. Progress reporting is a `jax.debug.callback` carrying a request token and the step index
(`progress.py`): the device never waits for the host.

Axis letters: N number of steps; X any latent shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jdiff.sampling import progress as progress_registry
from jdiff.sampling.sampler import Sampler, Schedule


def sample(
    sampler: Sampler,
    cfg,
    model_fn: Callable[[Array, Array, Any], Array],
    latents: Float[Array, "*x"],
    schedule: Schedule,
    *,
    per_step=None,
    progress: Int[Array, ""] | None = None,
) -> Float[Array, "*x"]:
    """Runs `sampler` from the initial noise to the final latents, one model call per step.

    Each step: the model sees `sampler.scale_model_input(x)` at `schedule.timesteps[i]`, then `sampler.step`
    turns its output into the next sample, then the progress tick (when asked for) reports step i.

    Args:
        sampler: a table row (`table.SAMPLERS`).
        cfg: its config (static: hashable, part of the compiled program).
        model_fn: `model_fn(x, t, extra)`, the model output for model input x at model timestep t (a scalar
            array); `extra` is step i's slice of `per_step`, or None without one.
        latents: initial noise, standard normal (multiplied by `schedule.init_noise_sigma` here); float32
            recommended, since the sample stays in its dtype between steps.
        schedule: the sampler's schedule for this request (numpy arrays given to the caller's jit, traced here);
            the number of steps is static (its shape).
        per_step: a pytree whose leaves have a leading step axis [N, ...] (values the caller computed for every
            step before the loop, e.g. FLUX's modulation vectors).
        progress: a token from `progress.track` (a traced int32), or None: no callback is compiled in.

    Returns:
        The final latents, in the latents' dtype.
    """
    # Inside the caller's jit the schedule is already traced; called eagerly, numpy leaves could not be indexed
    # by the traced step index.
    schedule = jax.tree.map(jnp.asarray, schedule)
    x = (latents * schedule.init_noise_sigma).astype(latents.dtype)
    state = sampler.init(cfg, schedule, x)

    def body(carry, inputs):
        x, state = carry
        i, t, extra = inputs
        out = model_fn(sampler.scale_model_input(cfg, schedule, i, x), t, extra)
        x, state = sampler.step(cfg, schedule, state, i, x, out)
        if progress is not None:
            progress_registry.tick(progress, i)
        return (x, state), None

    n = schedule.timesteps.shape[0]
    (x, _), _ = jax.lax.scan(body, (x, state), (jnp.arange(n), schedule.timesteps, per_step))
    return x
