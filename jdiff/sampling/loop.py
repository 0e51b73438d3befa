"""The denoising loop: one `lax.scan` over steps inside the caller's jit.

The caller supplies `velocity(x, sigma) -> v` (a closure over the model and the request's conditioning) and
the sigma schedule as an array, so every per-request value is a traced argument. Progress reporting is a
`jax.debug.callback` carrying only the step index: the device never waits for the host to answer.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jdiff.sampling.flow_match import euler_step

# The compiled callback is fixed; what it reports to (a progress bar) is swapped per request.
_hook: Callable[[int], None] | None = None


def set_progress_hook(hook: Callable[[int], None] | None) -> None:
    """Installs the function called with each finished step's index (from the runtime's callback thread)."""
    global _hook
    _hook = hook


def _tick(step) -> None:
    if _hook is not None:
        _hook(int(step))


def euler_loop(
    velocity: Callable[[jax.Array, jax.Array], jax.Array],
    latents: jax.Array,
    sigmas: jax.Array,
    timesteps: jax.Array,
    *,
    per_step=None,
    progress: bool = False,
) -> jax.Array:
    """Integrates the flow from sigmas[0] to sigmas[-1] with Euler steps.

    Args:
        velocity: model prediction v(x, t) for latents x at model timestep t (a scalar array). The model is
            fed the scheduler's timesteps rather than sigmas: diffusers does, and sigma * 1000 / 1000 is not
            always sigma in float32.
        latents: initial noise (float32 recommended: the state stays in its dtype between steps).
        sigmas: [n + 1] decreasing noise levels ending in 0.
        timesteps: [n] model timesteps (sigmas[:n] * num_train_timesteps).
        per_step: a pytree whose leaves have a leading step axis [n, ...] (values the caller computed for
            every step before the loop, e.g. FLUX's modulation vectors); step i then calls
            `velocity(x, t, per_step[i])`.
        progress: emit a host callback after each step (a static choice: it is compiled in or not).

    Returns:
        The final latents.
    """

    def body(x, inputs):
        i, t, sigma, sigma_next, extra = inputs
        v = velocity(x, t) if per_step is None else velocity(x, t, extra)
        x = euler_step(x, v, sigma, sigma_next)
        if progress:
            jax.debug.callback(_tick, i)
        return x, None

    n = sigmas.shape[0] - 1
    x, _ = jax.lax.scan(body, latents, (jnp.arange(n), timesteps, sigmas[:-1], sigmas[1:], per_step))
    return x
