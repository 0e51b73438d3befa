"""Flow-matching schedules and the Euler step, matching diffusers' `FlowMatchEulerDiscreteScheduler`.

Schedules are computed on the host in numpy with the reference's float32 arithmetic (they are a few dozen
numbers, known before the loop starts) and enter the jitted loop as arguments, so a new step count changes a
shape but a new shift or resolution never recompiles.

Axis letters: N number of steps; X any latent shape (the step is elementwise over it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jdiff.errors import InputError
from jdiff.sampling.config import check_types, refuse_unsupported
from jdiff.sampling.sampler import Schedule


@dataclass(frozen=True)
class FlowMatchEulerConfig:
    """diffusers `FlowMatchEulerDiscreteScheduler` config keys (scheduler/scheduler_config.json)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False

    def validate(self) -> None:
        check_types(self)
        refuse_unsupported(
            self,
            "FlowMatchEulerDiscreteScheduler",
            {
                k: False
                for k in (
                    "invert_sigmas",
                    "use_karras_sigmas",
                    "use_exponential_sigmas",
                    "use_beta_sigmas",
                    "stochastic_sampling",
                )
            },
        )
        if self.time_shift_type not in ("exponential", "linear"):
            raise InputError(
                f"scheduler time_shift_type must be 'exponential' or 'linear', got {self.time_shift_type!r}"
            )


def shift_sigmas(
    s: np.ndarray,
    shift: float,
    *,
    dynamic: bool = False,
    mu: float | None = None,
    time_shift_type: str = "exponential",
    shift_terminal: float | None = None,
) -> np.ndarray:
    """Shifts base sigmas as diffusers' flow schedulers do, in the dtype of `s` (the reference's precision).

    Static: shift s / (1 + (shift - 1) s). Dynamic (resolution-dependent mu): exp(mu) / (exp(mu) + 1/s - 1),
    or mu / (mu + 1/s - 1) for the linear type. Then an optional stretch so the last sigma is shift_terminal.
    """
    if dynamic:
        if mu is None:
            raise ValueError("this scheduler uses dynamic shifting: pass mu")
        if time_shift_type == "exponential":
            s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
        else:
            s = mu / (mu + (1 / s - 1) ** 1.0)
    else:
        s = shift * s / (1 + (shift - 1) * s)
    if shift_terminal and s[-1] != 1:
        # diffusers divides by 1 - s[-1], which is 0 for a one-step schedule, and returns NaN sigmas; a single
        # step from sigma 1 has nothing to stretch, so we leave it as is.
        one_minus = 1 - s
        s = 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))
    return s


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu for dynamic shifting: linear in the number of image tokens (FLUX)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def default_sigmas(num_steps: int) -> np.ndarray:
    """The FLUX pipelines' base schedule before shifting: linspace(1, 1/n, n)."""
    return np.linspace(1.0, 1.0 / num_steps, num_steps)


def euler_schedule(
    cfg: FlowMatchEulerConfig, num_steps: int, *, mu: float | None = None, sigmas: np.ndarray | None = None
) -> Schedule:
    """diffusers' `set_timesteps(num_steps, sigmas=sigmas, mu=mu)`: shifted sigmas ending in 0, and timesteps.

    Args:
        cfg: the scheduler config.
        num_steps: number of denoising steps (model calls).
        mu: dynamic-shift parameter (`calculate_shift` of the image sequence length); required when the config
            uses dynamic shifting, ignored otherwise.
        sigmas: base sigmas in (0, 1], decreasing, one per step (FLUX passes `default_sigmas(num_steps)`);
            None: diffusers' range from the construction-time sigmas (how the Wan pipelines call it).

    Returns:
        sigmas [N + 1] float32 ending in 0 and timesteps [N] float32 = sigmas[:N] * num_train_timesteps.

    Raises:
        InputError: num_steps < 1.
        ValueError: `sigmas` does not hold num_steps values, or `mu` is missing for dynamic shifting.
    """
    if num_steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {num_steps}")
    if sigmas is None:
        s = _range_from_steps(cfg, num_steps)
    else:
        s = np.asarray(sigmas).astype(np.float32)
        if s.shape != (num_steps,):
            raise ValueError(f"{num_steps} steps need {num_steps} base sigmas, got shape {s.shape}")
    s = shift_sigmas(
        s,
        cfg.shift,
        dynamic=cfg.use_dynamic_shifting,
        mu=mu,
        time_shift_type=cfg.time_shift_type,
        shift_terminal=cfg.shift_terminal,
    ).astype(np.float32)
    timesteps = s * np.float32(cfg.num_train_timesteps)
    return Schedule(timesteps=timesteps, sigmas=np.concatenate([s, np.zeros(1, np.float32)]))


def _range_from_steps(cfg: FlowMatchEulerConfig, num_steps: int) -> np.ndarray:
    """The unshifted base sigmas of `set_timesteps(num_steps)` with no sigmas given, float64.

    The range comes from the scheduler's construction-time sigmas (already shifted when the shift is static),
    is spaced linearly in float64, and is then shifted again by the caller: diffusers applies a static shift
    twice on this path, and we reproduce that so schedules match.
    """
    n_train = cfg.num_train_timesteps
    base = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1] / np.float32(n_train)
    if not cfg.use_dynamic_shifting:
        base = (np.float32(cfg.shift) * base / (1 + (np.float32(cfg.shift) - 1) * base)).astype(np.float32)
    sigma_max, sigma_min = float(base[0]), float(base[-1])
    return np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps) / n_train


def euler_step(
    cfg: FlowMatchEulerConfig,
    schedule: Schedule,
    state: tuple[()],
    i: Int[Array, ""],
    x: Float[Array, "*x"],
    velocity: Float[Array, "*x"],
) -> tuple[Float[Array, "*x"], tuple[()]]:
    """x_next = x + (sigmas[i + 1] - sigmas[i]) * v, in float32 (the reference upcasts for this update).

    Returns:
        (x_next in x's dtype, the unchanged empty state).
    """
    del cfg
    sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
    x_next = x.astype(jnp.float32) + (sigma_next - sigma) * velocity.astype(jnp.float32)
    return x_next.astype(x.dtype), state


# ---- compatibility: the pipelines' current calls, until they call `sample()` with the table --------------
