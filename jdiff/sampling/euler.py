"""The Euler-style (variance-exploding, x = x0 + sigma * noise) DDPM solvers, matching diffusers'
`EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler` and `HeunDiscreteScheduler`.

The model sees x / sqrt(sigma^2 + 1) at a training timestep; the schedule is diffusers' `set_timesteps`
(timestep spacing, sigmas interpolated from the training schedule, optionally Karras sigmas), computed on the
host; the steps are pure functions traced inside the one `lax.scan` of `loop.sample`. Heun evaluates the model
twice per step (`Sampler.model_calls == 2`): diffusers' 2N - 1 scheduler calls are N scan steps here, the last
one a plain Euler step.

Axis letters: N number of steps; X any latent shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jdiff.errors import InputError
from jdiff.sampling import ddpm
from jdiff.sampling.config import FIX_IN, refuse_unsupported
from jdiff.sampling.sampler import Schedule


def prediction_type(cfg) -> str:
    """`Sampler.prediction` of the DDPM-family rows: the config's prediction_type."""
    return cfg.prediction_type


@dataclass(frozen=True)
class EulerConfig:
    """diffusers `EulerDiscreteScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    def validate(self) -> None:
        name = "EulerDiscreteScheduler"
        ddpm.check_ddpm_config(self, name)
        refuse_unsupported(
            self,
            name,
            {"interpolation_type": "linear", "use_exponential_sigmas": False, "use_beta_sigmas": False},
        )
        _one_of(self, name, "timestep_type", ("discrete", "continuous"))
        _one_of(self, name, "final_sigmas_type", ("zero", "sigma_min"))


@dataclass(frozen=True)
class EulerAncestralConfig:
    """diffusers `EulerAncestralDiscreteScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        # diffusers raises NotImplementedError for sample prediction in this class.
        ddpm.check_ddpm_config(
            self, "EulerAncestralDiscreteScheduler", predictions=("epsilon", "v_prediction")
        )


@dataclass(frozen=True)
class HeunConfig:
    """diffusers `HeunDiscreteScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    clip_sample: bool | None = False
    clip_sample_range: float = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0

    rescale_betas_zero_snr = False  # not a Heun key: its betas are never rescaled

    def validate(self) -> None:
        name = "HeunDiscreteScheduler"
        ddpm.check_ddpm_config(self, name)
        refuse_unsupported(self, name, {"use_exponential_sigmas": False, "use_beta_sigmas": False})


def _one_of(cfg, scheduler, key, allowed):
    if getattr(cfg, key) not in allowed:
        raise InputError(
            f"{scheduler} {key} must be one of {list(allowed)}, got {getattr(cfg, key)!r}; fix it {FIX_IN}"
        )


def _sigmas(cfg, num_steps: int, *, karras: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timesteps [N] float64, sigmas [N] float64, alphas_cumprod [T] float32) before the final sigma."""
    if num_steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {num_steps}")
    ac = ddpm.alphas_cumprod(cfg)
    train = ddpm.train_sigmas(ac)
    t = ddpm.spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_steps, cfg.steps_offset)
    s = np.interp(t, np.arange(len(train)), train)
    if karras:
        s = ddpm.karras_sigmas(s, num_steps, getattr(cfg, "sigma_min", None), getattr(cfg, "sigma_max", None))
        t = ddpm.sigma_to_t(s, np.log(train))
    return t, s, ac


def euler_schedule(cfg: EulerConfig, num_steps: int, *, mu=None, sigmas=None) -> Schedule:
    """diffusers' `EulerDiscreteScheduler.set_timesteps(num_steps)`: timesteps [N] float32 and sigmas [N + 1].

    `mu` and custom `sigmas` are not taken (a DDPM schedule has no shift; custom sigmas: not implemented).
    """
    _no_custom(mu, sigmas)
    t, s, ac = _sigmas(cfg, num_steps, karras=bool(cfg.use_karras_sigmas))
    last = train_sigma_min(ac) if cfg.final_sigmas_type == "sigma_min" else 0.0
    s = np.concatenate([s, [last]]).astype(np.float32)
    if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
        t = np.float32(0.25) * np.log(s[:-1])
    return Schedule(
        timesteps=t.astype(np.float32), sigmas=s, init_noise_sigma=ddpm.noise_sigma(s, cfg.timestep_spacing)
    )


def ancestral_schedule(cfg: EulerAncestralConfig, num_steps: int, *, mu=None, sigmas=None) -> Schedule:
    """diffusers' `EulerAncestralDiscreteScheduler.set_timesteps(num_steps)`."""
    _no_custom(mu, sigmas)
    t, s, _ = _sigmas(cfg, num_steps, karras=False)
    s = np.concatenate([s, [0.0]]).astype(np.float32)
    return Schedule(
        timesteps=t.astype(np.float32), sigmas=s, init_noise_sigma=ddpm.noise_sigma(s, cfg.timestep_spacing)
    )


def heun_schedule(cfg: HeunConfig, num_steps: int, *, mu=None, sigmas=None) -> Schedule:
    """diffusers' `HeunDiscreteScheduler.set_timesteps(num_steps)`, one entry per Heun step: diffusers repeats
    every timestep and sigma but the first (2N - 1 model calls); step i here calls the model at timesteps[i]
    and, but on the last step, at timesteps[i + 1]."""
    _no_custom(mu, sigmas)
    t, s, _ = _sigmas(cfg, num_steps, karras=bool(cfg.use_karras_sigmas))
    s = np.concatenate([s, [0.0]]).astype(np.float32)
    return Schedule(
        timesteps=t.astype(np.float32), sigmas=s, init_noise_sigma=ddpm.noise_sigma(s, cfg.timestep_spacing)
    )


def train_sigma_min(ac: np.ndarray) -> np.float32:
    """The smallest training sigma, sqrt((1 - ac[0]) / ac[0]) in float32 (final_sigmas_type="sigma_min")."""
    return np.float32(((np.float32(1) - ac[0]) / ac[0]) ** np.float32(0.5))


def _no_custom(mu, sigmas) -> None:
    if sigmas is not None:
        raise ValueError("custom sigmas are not implemented for the DDPM-family schedules")
    del mu  # a DDPM schedule has no resolution-dependent shift


def scale_by_sigma(cfg, schedule: Schedule, i: Int[Array, ""], x: Float[Array, "*x"]) -> Float[Array, "*x"]:
    """diffusers' `scale_model_input` of the Euler-style schedulers: x / sqrt(sigma^2 + 1)."""
    del cfg
    sigma = schedule.sigmas[i]
    return (x / (sigma**2 + 1) ** 0.5).astype(x.dtype)


def euler_step(cfg: EulerConfig, schedule: Schedule, state, i, x, out):
    """x_next = x + (x - x0) / sigma * (sigma_next - sigma), in float32 (diffusers' defaults: no churn)."""
    sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
    sample = x.astype(jnp.float32)
    x0 = ddpm.x0_from_sigma(cfg.prediction_type, sample, out.astype(jnp.float32), sigma)
    prev = sample + (sample - x0) / sigma * (sigma_next - sigma)
    return prev.astype(x.dtype), state


def ancestral_step(cfg: EulerAncestralConfig, schedule: Schedule, state, i, x, out, noise):
    """An Euler step to sigma_down, then fresh noise of scale sigma_up (sigma_down^2 + sigma_up^2 = sigma_next^2)."""
    sigma, sigma_to = schedule.sigmas[i], schedule.sigmas[i + 1]
    sample = x.astype(jnp.float32)
    x0 = ddpm.x0_from_sigma(cfg.prediction_type, sample, out.astype(jnp.float32), sigma)
    sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    prev = sample + (sample - x0) / sigma * (sigma_down - sigma)
    prev = prev + noise() * sigma_up
    return prev.astype(x.dtype), state


def heun_step(cfg: HeunConfig, schedule: Schedule, state, i, x, model):
    """Heun's method from sigmas[i] to sigmas[i + 1]: an Euler step, the model again at its end, and the mean
    of the two slopes; the last step (to sigma 0) is the Euler step alone, as in diffusers."""
    n = schedule.timesteps.shape[0]
    sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
    sample = x.astype(jnp.float32)

    def x0(inp, out, s):
        pred = ddpm.x0_from_sigma(cfg.prediction_type, inp, out.astype(jnp.float32), s)
        if cfg.clip_sample:
            pred = jnp.clip(pred, -cfg.clip_sample_range, cfg.clip_sample_range)
        return pred

    out = model(scale_by_sigma(cfg, schedule, i, x), schedule.timesteps[i])
    derivative = (sample - x0(sample, out, sigma)) / sigma
    dt = sigma_next - sigma
    euler = sample + derivative * dt

    def second(euler):
        t_next = schedule.timesteps[jnp.minimum(i + 1, n - 1)]
        out_2 = model(scale_by_sigma(cfg, schedule, i + 1, euler.astype(x.dtype)), t_next)
        derivative_2 = (euler - x0(euler, out_2, sigma_next)) / sigma_next
        return sample + (derivative + derivative_2) / 2 * dt

    prev = jax.lax.cond(i < n - 1, second, lambda e: e, euler)
    return prev.astype(x.dtype), state
