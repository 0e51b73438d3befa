"""What a solver is to the loop: a `Schedule` computed on the host and a `Sampler` record of pure functions.

A solver is a config dataclass (diffusers' `scheduler_config.json` keys), a host-side `schedule` function
(diffusers' `set_timesteps`) and a traced `step` function (diffusers' `step`); stateful solvers add `init` for
their carry, and the DDPM family adds the input scaling diffusers calls `scale_model_input` and
`init_noise_sigma`. `sample()` in `loop.py` runs any of them; `table.py` maps diffusers class names to them.

Axis letters: N number of steps; X any latent shape (solvers are elementwise over it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, Float, Int

# What a model's output is, as a solver reads it: a velocity (flow matching, v = noise - data), the noise
# (diffusers "epsilon"), v = alpha * noise - sigma * data (diffusers "v_prediction") or the data ("sample").
PREDICTIONS = ("flow", "epsilon", "v_prediction", "sample")

_UNIT = np.float32(1.0)  # an immutable numpy scalar, so it can be a dataclass default


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Schedule:
    """One request's schedule: numpy arrays on the host, traced arrays inside the loop (a pytree).

    Attributes:
        timesteps: [N] what the model is given at step i, in the reference's values (float32).
        sigmas: [N + 1] noise levels, step i going from sigmas[i] to sigmas[i + 1] (float32).
        init_noise_sigma: [] the scale of the initial noise, as diffusers' `scheduler.init_noise_sigma`:
            `sample()` multiplies the latents by it before the first step. 1 for the flow solvers.
        aux: whatever else a solver's step reads, by name (e.g. alphas_cumprod per step for DDIM); every value
            an array, so a new request's values never recompile.
    """

    timesteps: Float[Array, " n"]
    sigmas: Float[Array, " n1"]
    init_noise_sigma: Float[Array, ""] = _UNIT
    aux: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]


def no_state(cfg, schedule: Schedule, latents: Float[Array, "*x"]) -> tuple[()]:
    """`init` of a solver that carries nothing between steps but the sample."""
    del cfg, schedule, latents
    return ()


def unscaled_input(cfg, schedule: Schedule, i: Int[Array, ""], x: Float[Array, "*x"]) -> Float[Array, "*x"]:
    """`scale_model_input` of a solver whose model sees the sample as it is (diffusers returns it unchanged)."""
    del cfg, schedule, i
    return x


def predicts_flow(cfg) -> str:
    """`prediction` of a flow-matching solver: the model outputs a velocity."""
    del cfg
    return "flow"


@dataclass(frozen=True)
class Sampler:
    """One diffusers scheduler class, as pure functions of its config.

    Attributes:
        config: the config dataclass; field names are the diffusers `scheduler_config.json` keys, and its
            `validate()` refuses what the solver does not implement.
        schedule: host side, `(cfg, num_steps, *, mu=None, sigmas=None) -> Schedule`, reproducing diffusers'
            `set_timesteps(num_steps, sigmas=sigmas, mu=mu)` in the reference's arithmetic. `mu` is the
            dynamic-shift parameter, `sigmas` custom base sigmas where the reference takes them.
        step: traced, `(cfg, schedule, state, i, x, model_output) -> (x_next, state)`: one update from
            sigmas[i] given the model's output at (x, timesteps[i]); `i` is a traced int32 and the number of
            steps is static (the schedule's shape). Keeps x's dtype.
        init: traced, `(cfg, schedule, latents) -> state`, the carry before step 0 (a pytree; () if none).
        prediction: `cfg -> one of PREDICTIONS`, what the solver reads the model output as.
        scale_model_input: traced, `(cfg, schedule, i, x) -> model input` (diffusers' `scale_model_input`).
        takes_noise: the step takes a last argument `noise`, a function of no arguments returning standard
            normal noise of x's shape (float32) drawn from this step's keys (`noise.step_noise`); a step calls
            it only where it adds noise (ancestral, SDE and LCM steps, DDIM with eta > 0), so a deterministic
            configuration compiles no random draws and needs no keys (`noise(optional=True)`, for noise behind a
            traced condition, gives NaN without keys instead of failing to trace).
        model_calls: 1, or 2 for solvers evaluating the model twice per step (Heun): the step then gets
            `model(model_input, t) -> output` in place of the output, scales its inputs itself, and the
            loop's `scale_model_input` is not used; `timesteps[i]` is the first call's timestep.
    """

    config: type
    schedule: Callable[..., Schedule]
    step: Callable[..., tuple[Array, Any]]
    init: Callable[..., Any] = no_state
    prediction: Callable[[Any], str] = predicts_flow
    scale_model_input: Callable[..., Array] = unscaled_input
    takes_noise: bool = False
    model_calls: int = 1
