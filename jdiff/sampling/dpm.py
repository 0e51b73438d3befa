"""DPM-Solver++ (multistep, orders 1-3, ODE and SDE), matching diffusers' `DPMSolverMultistepScheduler` with
`algorithm_type="dpmsolver++"` or `"sde-dpmsolver++"` on DDPM (variance-preserving) sigmas, optionally Karras.

Same design as UniPC (`unipc.py`): the schedule is host-side numpy; the state is the history of data
predictions; the order at each step (warm-up from 1, `lower_order_final`, `euler_at_final`) is a function of the
traced step index and the static number of steps, chosen with `lax.switch`.

VP parameterisation of a sigma: alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha, lambda = log alpha -
log sigma_t; the last sigma may be 0 (lambda = inf: the update then returns the data prediction).

Axis letters: N number of steps; X any latent shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.errors import InputError
from jdiff.sampling import ddpm
from jdiff.sampling.config import FIX_IN, refuse_unsupported
from jdiff.sampling.sampler import Schedule
from jdiff.sampling.unipc import UniPCState


@dataclass(frozen=True)
class DPMSolverConfig:
    """diffusers `DPMSolverMultistepScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    solver_order: int = 2
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    use_lu_lambdas: bool | None = False
    use_flow_sigmas: bool | None = False
    flow_shift: float | None = 1.0
    final_sigmas_type: str | None = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    def validate(self) -> None:
        name = "DPMSolverMultistepScheduler"
        ddpm.check_ddpm_config(self, name)
        refuse_unsupported(
            self,
            name,
            {
                k: False
                for k in (
                    "thresholding",
                    "use_exponential_sigmas",
                    "use_beta_sigmas",
                    "use_lu_lambdas",
                    "use_flow_sigmas",
                    "use_dynamic_shifting",
                )
            }
            | {"variance_type": None},
        )
        # diffusers runs "deis" as dpmsolver++ and the UniPC solver types as midpoint.
        if self.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++", "deis"):
            raise InputError(
                f"{name} algorithm_type must be 'dpmsolver++' or 'sde-dpmsolver++' in jdiff, got "
                f"{self.algorithm_type!r}; set one of them {FIX_IN}"
            )
        if self.solver_type not in ("midpoint", "heun", "logrho", "bh1", "bh2"):
            raise InputError(
                f"{name} solver_type must be 'midpoint' or 'heun', got {self.solver_type!r}; fix it {FIX_IN}"
            )
        if self.solver_order not in (1, 2, 3):
            raise InputError(
                f"{name} solver_order must be 1, 2 or 3, got {self.solver_order}; fix it {FIX_IN}"
            )
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise InputError(
                f"{name} final_sigmas_type must be 'zero' or 'sigma_min', got {self.final_sigmas_type!r}; "
                f"fix it {FIX_IN}"
            )

    @property
    def sde(self) -> bool:
        return self.algorithm_type == "sde-dpmsolver++"

    @property
    def heun(self) -> bool:
        return self.solver_type == "heun"


def dpm_schedule(cfg: DPMSolverConfig, num_steps: int, *, mu=None, sigmas=None) -> Schedule:
    """diffusers' `DPMSolverMultistepScheduler.set_timesteps(num_steps)`: integer timesteps [N] (as float32) and
    sigmas [N + 1] ending in 0 or the smallest training sigma."""
    if sigmas is not None:
        raise ValueError("custom sigmas are not implemented for DPMSolverMultistepScheduler")
    if num_steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {num_steps}")
    n_train = cfg.num_train_timesteps
    ac = ddpm.alphas_cumprod(cfg)
    lambdas = np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))
    last = n_train - int(np.searchsorted(lambdas[::-1], cfg.lambda_min_clipped))
    if cfg.timestep_spacing == "linspace":
        t = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    elif cfg.timestep_spacing == "leading":
        ratio = last // (num_steps + 1)
        t = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + cfg.steps_offset
    else:
        t = np.arange(last, 0, -n_train / num_steps).round().astype(np.int64) - 1
    train = ddpm.train_sigmas(ac)
    if cfg.use_karras_sigmas:
        s = ddpm.karras_sigmas(train[::-1], num_steps)
        tf = ddpm.sigma_to_t(s, np.log(train))
        t = (tf if cfg.beta_schedule == "squaredcos_cap_v2" else tf.round()).astype(np.int64)
    else:
        s = np.interp(t, np.arange(len(train)), train)
    final = (
        (((np.float32(1) - ac[0]) / ac[0]) ** np.float32(0.5)) if cfg.final_sigmas_type == "sigma_min" else 0
    )
    return Schedule(timesteps=t.astype(np.float32), sigmas=np.concatenate([s, [final]]).astype(np.float32))


def dpm_init(cfg: DPMSolverConfig, schedule: Schedule, latents) -> UniPCState:
    """The history of data predictions (oldest first); `last_sample` is unused here."""
    del schedule
    zeros = jnp.zeros(latents.shape, jnp.float32)
    return UniPCState(zeros, (zeros,) * cfg.solver_order)


def _alpha_sigma(sigma):
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


def _lambda(sigma):
    alpha, sigma_t = _alpha_sigma(sigma)
    return jnp.log(alpha) - jnp.log(sigma_t)


def _order(cfg: DPMSolverConfig, i, n: int):
    """The order diffusers uses at step i of n (1, 2 or 3)."""
    final = cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
    lower_final = (i == n - 1) & final
    lower_second = (i == n - 2) & (cfg.lower_order_final and n < 15)
    if cfg.solver_order == 1:
        return jnp.ones((), jnp.int32)
    second = jnp.where((i < 2) | lower_second, 2, cfg.solver_order)
    return jnp.where((i < 1) | lower_final, 1, second).astype(jnp.int32)


def _update(order: int, cfg: DPMSolverConfig, sigmas, i, sample, history, noise):
    """diffusers' first/second/third-order (SDE-)DPM-Solver++ update from sigmas[i] to sigmas[i + 1]."""
    alpha_t, sigma_t = _alpha_sigma(sigmas[i + 1])
    _, sigma_s0 = _alpha_sigma(sigmas[i])
    lambda_t, lambda_s0 = _lambda(sigmas[i + 1]), _lambda(sigmas[i])
    h = lambda_t - lambda_s0
    m0 = history[-1]
    if order == 1:
        d1 = d2 = None
    else:
        lambda_s1 = _lambda(sigmas[i - 1])
        r0 = (lambda_s0 - lambda_s1) / h
        d1_0 = (1.0 / r0) * (m0 - history[-2])
        d1, d2 = d1_0, None
        if order == 3:
            r1 = (lambda_s1 - _lambda(sigmas[i - 2])) / h
            d1_1 = (1.0 / r1) * (history[-2] - history[-3])
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    if not cfg.sde:
        x_t = (sigma_t / sigma_s0) * sample - (alpha_t * (jnp.exp(-h) - 1.0)) * m0
        if order == 2 and not cfg.heun:
            x_t = x_t - 0.5 * (alpha_t * (jnp.exp(-h) - 1.0)) * d1
        elif order >= 2:
            x_t = x_t + (alpha_t * ((jnp.exp(-h) - 1.0) / h + 1.0)) * d1
        if order == 3:
            x_t = x_t - (alpha_t * ((jnp.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        return x_t
    x_t = (sigma_t / sigma_s0 * jnp.exp(-h)) * sample + (alpha_t * (1 - jnp.exp(-2.0 * h))) * m0
    if order == 2 and not cfg.heun:
        x_t = x_t + 0.5 * (alpha_t * (1 - jnp.exp(-2.0 * h))) * d1
    elif order >= 2:
        x_t = x_t + (alpha_t * ((1.0 - jnp.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
    if order == 3:
        x_t = x_t + (alpha_t * ((1.0 - jnp.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
    return x_t + sigma_t * jnp.sqrt(1.0 - jnp.exp(-2 * h)) * noise


def dpm_step(cfg: DPMSolverConfig, schedule: Schedule, state: UniPCState, i, x, out, noise):
    """One DPM-Solver++ step: the model output as a data prediction, pushed onto the history, then the update
    of the order diffusers uses at this step (SDE: plus fresh noise)."""
    sigmas = schedule.sigmas.astype(jnp.float32)
    n = sigmas.shape[0] - 1
    sample = x.astype(jnp.float32)
    alpha, sigma_t = _alpha_sigma(sigmas[i])
    out = out.astype(jnp.float32)
    if cfg.prediction_type == "epsilon":
        x0 = (sample - sigma_t * out) / alpha
    elif cfg.prediction_type == "v_prediction":
        x0 = alpha * sample - sigma_t * out
    else:
        x0 = out
    history = (*state.model_outputs[1:], x0)
    z = noise() if cfg.sde else None
    branches = [
        (lambda s, h, order=order: _update(order, cfg, sigmas, i, s, h, z))
        for order in range(1, cfg.solver_order + 1)
    ]
    prev = jax.lax.switch(_order(cfg, i, n) - 1, branches, sample, history)
    return prev.astype(x.dtype), UniPCState(state.last_sample, history)
