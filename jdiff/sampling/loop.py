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
from jdiff.sampling import step_cache
from jdiff.sampling.noise import step_noise
from jdiff.sampling.sampler import Sampler, Schedule
from jdiff.sampling.step_cache import StepCache


def sample(
    sampler: Sampler,
    cfg,
    model_fn: Callable[[Array, Array, Any], Array],
    latents: Float[Array, "*x"],
    schedule: Schedule,
    *,
    per_step=None,
    progress: Int[Array, ""] | None = None,
    noise_keys: Array | None = None,
    cache: StepCache | None = None,
) -> Float[Array, "*x"] | tuple[Float[Array, "*x"], dict[str, Array]]:
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
            step before the loop, e.g. FLUX's modulation vectors); a solver calling the model twice per step (Heun)
            gives both calls step i's values.
        progress: a token from `progress.track` (a traced int32), or None: no callback is compiled in.
        noise_keys: [B, 2] uint32 key data, one per sample of the leading latents axis (`noise.noise_keys`),
            for solvers that add noise during sampling: step i draws from `fold_in(key, i)`, so the same keys
            give the same result. None: a solver that needs noise fails to trace, saying so.
        cache: step caching (`step_cache.StepCache`): the model runs through `cache.model`'s parts and
            `model_fn` is not called; None: every step calls `model_fn`.

    Returns:
        The final latents, in the latents' dtype; with a `cache`, (latents, statistics): "skipped", the steps on
        which the remaining blocks did not run, and "reused" [B], per output the steps that took its cached
        residual (what it would skip alone).

    Raises:
        ValueError: the solver adds noise and `noise_keys` is None, or they do not match the latents' batch; a
            cache with a solver calling the model twice per step.
    """
    # Inside the caller's jit the schedule is already traced; called eagerly, numpy leaves could not be indexed
    # by the traced step index.
    schedule = jax.tree.map(jnp.asarray, schedule)
    x = (latents * schedule.init_noise_sigma).astype(latents.dtype)
    state = sampler.init(cfg, schedule, x)
    n = schedule.timesteps.shape[0]
    cached = ()
    if cache is not None:
        if sampler.model_calls != 1:
            raise ValueError("step caching needs a solver with one model call per step")
        first = jax.tree.map(lambda a: a[0], per_step)
        x0 = sampler.scale_model_input(cfg, schedule, 0, x)
        cached = (step_cache.init(cache, x0, schedule.timesteps[0], first),)

    def body(carry, inputs):
        x, state, *cached = carry
        i, t, extra = inputs
        if cache is not None:
            out, cached[0] = step_cache.call(
                cache, cached[0], i, n, sampler.scale_model_input(cfg, schedule, i, x), t, extra
            )
        elif sampler.model_calls == 1:
            out = model_fn(sampler.scale_model_input(cfg, schedule, i, x), t, extra)
        else:
            out = lambda model_input, tt: model_fn(model_input, tt, extra)
        noise = (_noise_source(noise_keys, i, x),) if sampler.takes_noise else ()
        x, state = sampler.step(cfg, schedule, state, i, x, out, *noise)
        if progress is not None:
            progress_registry.tick(progress, i)
        return (x, state, *cached), None

    (x, _, *cached), _ = jax.lax.scan(
        body, (x, state, *cached), (jnp.arange(n), schedule.timesteps, per_step)
    )
    if cache is None:
        return x
    return x, {k: cached[0][k] for k in ("skipped", "reused")}


def _noise_source(noise_keys, i, x):
    """The step's noise as a function, so steps that add none draw none.

    Without keys, `noise()` fails while tracing; `noise(optional=True)` (for noise behind a traced condition,
    e.g. DDIM's eta > 0) returns NaN instead, so a run that reaches it cannot pass unnoticed.
    """

    def draw(optional: bool = False):
        if noise_keys is None:
            if optional:
                return jnp.full(x.shape, jnp.nan, jnp.float32)
            raise ValueError("this solver adds noise while sampling: pass noise_keys to sample()")
        if noise_keys.shape != (x.shape[0], 2):
            raise ValueError(f"noise_keys must be [B, 2] for latents {x.shape}, got {noise_keys.shape}")
        return step_noise(noise_keys, i, x.shape[1:])

    return draw


def steps_first(m: jax.Array, n: int) -> jax.Array:
    """A leaf computed before the loop for all `n` steps at once, in step-major rows, laid out for the scan:
    [*layers, n * B, K] -> [n, *layers, B, K] (the DiTs' timestep modulation, one matmul for every step)."""
    m = m.reshape(*m.shape[:-2], n, -1, m.shape[-1])
    return jnp.moveaxis(m, -3, 0)
