"""The variance-preserving (x = sqrt(a) x0 + sqrt(1 - a) noise) DDPM solvers on integer timesteps, matching
diffusers' `DDIMScheduler`, `LCMScheduler` and `PNDMScheduler` (PLMS, `skip_prk_steps`).

The model sees the sample as it is (init_noise_sigma 1). Every per-step scalar the reference reads from its
training tables by integer timestep (alphas_cumprod at t and at the previous timestep, DDIM's variance, LCM's
boundary scalings) is gathered on the host into the schedule's `aux`, so the traced steps only index arrays.

Axis letters: N number of steps (scan steps); X any latent shape.
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


@dataclass(frozen=True)
class DDIMConfig:
    """diffusers `DDIMScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        ddpm.check_ddpm_config(self, "DDIMScheduler")
        refuse_unsupported(self, "DDIMScheduler", {"thresholding": False})


@dataclass(frozen=True)
class LCMConfig:
    """diffusers `LCMScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: tuple[float, ...] | None = None
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    timestep_scaling: float = 10.0
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        ddpm.check_ddpm_config(self, "LCMScheduler")
        refuse_unsupported(self, "LCMScheduler", {"thresholding": False})
        if not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise InputError(
                f"LCMScheduler original_inference_steps must be in [1, num_train_timesteps], got "
                f"{self.original_inference_steps}; fix it {FIX_IN}"
            )


@dataclass(frozen=True)
class PNDMConfig:
    """diffusers `PNDMScheduler` config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    rescale_betas_zero_snr = False  # not a PNDM key

    def validate(self) -> None:
        ddpm.check_ddpm_config(self, "PNDMScheduler", predictions=("epsilon", "v_prediction"))
        if not self.skip_prk_steps:
            raise InputError(
                "jdiff's PNDMScheduler runs PLMS steps only: set skip_prk_steps=true "
                f"{FIX_IN} (Stable Diffusion's configs do)"
            )


def _ac(cfg) -> tuple[np.ndarray, np.float32]:
    ac = ddpm.alphas_cumprod(cfg, zero_snr_floor=False)
    return ac, np.float32(1.0) if cfg.set_alpha_to_one else ac[0]


def _check_steps(cfg, num_steps: int) -> None:
    if not 1 <= num_steps <= cfg.num_train_timesteps:
        raise InputError(
            f"the number of steps must be in [1, {cfg.num_train_timesteps}] (num_train_timesteps), got {num_steps}"
        )


def _integer_timesteps(spacing: str, n_train: int, n: int, steps_offset: int) -> np.ndarray:
    """[N] int64 decreasing timesteps of DDIM's and PNDM's `set_timesteps` (linspace is rounded here)."""
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (n_train // n)).round()[::-1].astype(np.int64) + steps_offset
    return np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1


def _sigmas_of(alpha: np.ndarray) -> np.ndarray:
    """Equivalent VE sigmas of alphas_cumprod values (for Schedule.sigmas; the steps read aux)."""
    return np.sqrt((1 - alpha.astype(np.float64)) / alpha.astype(np.float64)).astype(np.float32)


def ddim_schedule(cfg: DDIMConfig, num_steps: int, *, mu=None, sigmas=None, eta: float = 0.0) -> Schedule:
    """diffusers' `DDIMScheduler.set_timesteps(num_steps)`, with the step's `eta` (0: deterministic DDIM).

    Returns:
        timesteps [N] (integers as float32); sigmas [N + 1] the equivalent noise levels; aux: alpha_t,
        alpha_prev, variance [N] float32 and eta [] float32.
    """
    if sigmas is not None:
        raise ValueError("custom sigmas are not implemented for DDIMScheduler")
    _check_steps(cfg, num_steps)
    if not 0 <= eta < float("inf"):
        raise InputError(f"eta must be a finite number >= 0, got {eta}")
    ac, final = _ac(cfg)
    t = _integer_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_steps, cfg.steps_offset)
    prev = t - cfg.num_train_timesteps // num_steps
    a_t = ac[t]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    variance = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
    aux = {
        "alpha_t": a_t,
        "alpha_prev": a_prev,
        "variance": variance.astype(np.float32),
        "eta": np.float32(eta),
    }
    return Schedule(
        timesteps=t.astype(np.float32), sigmas=_sigmas_of(np.concatenate([a_t, a_prev[-1:]])), aux=aux
    )


def ddim_step(cfg: DDIMConfig, schedule: Schedule, state, i, x, out, noise):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps (+ std * noise when eta > 0), std = eta sqrt(var)."""
    a_t, a_prev = schedule.aux["alpha_t"][i], schedule.aux["alpha_prev"][i]
    sample, out = x.astype(jnp.float32), out.astype(jnp.float32)
    x0, eps = ddpm.x0_eps_from_alpha(cfg.prediction_type, sample, out, a_t)
    if cfg.clip_sample:
        x0 = jnp.clip(x0, -cfg.clip_sample_range, cfg.clip_sample_range)
    eta = schedule.aux["eta"]
    std = eta * schedule.aux["variance"][i] ** 0.5
    prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    prev = jax.lax.cond(eta > 0, lambda p: p + std * noise(optional=True), lambda p: p, prev)
    return prev.astype(x.dtype), state


def lcm_schedule(
    cfg: LCMConfig, num_steps: int, *, mu=None, sigmas=None, original_inference_steps: int | None = None
) -> Schedule:
    """diffusers' `LCMScheduler.set_timesteps(num_steps, original_inference_steps=...)` (strength 1).

    Returns:
        timesteps [N]; aux: alpha_t, alpha_prev, c_skip, c_out [N] float32.
    """
    if sigmas is not None:
        raise ValueError("custom sigmas are not implemented for LCMScheduler")
    original = original_inference_steps or cfg.original_inference_steps
    k = cfg.num_train_timesteps // original
    origin = np.arange(1, original + 1) * k - 1
    if not 1 <= num_steps <= min(original, cfg.num_train_timesteps):
        raise InputError(
            f"LCMScheduler takes 1 to original_inference_steps={original} steps, got {num_steps}"
        )
    idx = np.floor(np.linspace(0, len(origin), num=num_steps, endpoint=False)).astype(np.int64)
    t = origin[::-1][idx].astype(np.int64)
    ac, final = _ac(cfg)
    prev = np.concatenate([t[1:], t[-1:]])
    a_t = ac[t]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    scaled = t.astype(np.float32) * np.float32(cfg.timestep_scaling)
    c_skip = np.float32(0.25) / (scaled**2 + np.float32(0.25))
    c_out = scaled / (scaled**2 + np.float32(0.25)) ** np.float32(0.5)
    aux = {"alpha_t": a_t, "alpha_prev": a_prev, "c_skip": c_skip, "c_out": c_out}
    return Schedule(
        timesteps=t.astype(np.float32), sigmas=_sigmas_of(np.concatenate([a_t, a_prev[-1:]])), aux=aux
    )


def lcm_step(cfg: LCMConfig, schedule: Schedule, state, i, x, out, noise):
    """The consistency step: denoised = c_out x0 + c_skip x; then re-noised to the next timestep (not at the end)."""
    n = schedule.timesteps.shape[0]
    aux = schedule.aux
    a_t, a_prev = aux["alpha_t"][i], aux["alpha_prev"][i]
    sample = x.astype(jnp.float32)
    x0, _ = ddpm.x0_eps_from_alpha(cfg.prediction_type, sample, out.astype(jnp.float32), a_t)
    if cfg.clip_sample:
        x0 = jnp.clip(x0, -cfg.clip_sample_range, cfg.clip_sample_range)
    denoised = aux["c_out"][i] * x0 + aux["c_skip"][i] * sample
    prev = jax.lax.cond(
        i < n - 1, lambda d: a_prev**0.5 * d + (1 - a_prev) ** 0.5 * noise(), lambda d: d, denoised
    )
    return prev.astype(x.dtype), state


def pndm_schedule(cfg: PNDMConfig, num_steps: int, *, mu=None, sigmas=None) -> Schedule:
    """diffusers' `PNDMScheduler.set_timesteps(num_steps)` with skip_prk_steps: N + 1 model calls (the second
    one, at the same timestep as the third, refines the first step), so the schedule has N + 1 scan steps.

    Returns:
        timesteps [N + 1]; aux: alpha_t, alpha_prev [N + 1] float32 per scan step.
    """
    if sigmas is not None:
        raise ValueError("custom sigmas are not implemented for PNDMScheduler")
    _check_steps(cfg, num_steps)
    base = _integer_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_steps, cfg.steps_offset)[
        ::-1
    ]
    t = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].astype(np.int64)
    ratio = cfg.num_train_timesteps // num_steps
    cur, prev = t.copy(), t - ratio
    if len(t) > 1:  # the refining call goes from the first timestep again
        cur[1], prev[1] = t[1] + ratio, t[1]
    ac, final = _ac(cfg)
    a_t = ac[cur]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    return Schedule(
        timesteps=t.astype(np.float32),
        sigmas=_sigmas_of(np.concatenate([a_t, a_prev[-1:]])),
        aux={"alpha_t": a_t, "alpha_prev": a_prev},
    )


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PNDMState:
    """PLMS history: the first sample (for the refining call) and the last four noise predictions, oldest first."""

    first_sample: jax.Array
    ets: tuple[jax.Array, ...]


def pndm_init(cfg: PNDMConfig, schedule: Schedule, latents) -> PNDMState:
    del cfg, schedule
    zeros = jnp.zeros(latents.shape, jnp.float32)
    return PNDMState(zeros, (zeros,) * 4)


def pndm_step(cfg: PNDMConfig, schedule: Schedule, state: PNDMState, i, x, out):
    """One PLMS call: Euler-like on the first call, the mean of the first two outputs on the refining call,
    then Adams-Bashforth of order 2, 3 and 4 on the noise predictions."""
    a_t, a_prev = schedule.aux["alpha_t"][i], schedule.aux["alpha_prev"][i]
    sample, e = x.astype(jnp.float32), out.astype(jnp.float32)
    refine = i == 1
    ets = jax.tree.map(lambda old, new: jnp.where(refine, old, new), state.ets, (*state.ets[1:], e))
    sample = jnp.where(refine, state.first_sample, sample)
    first_sample = jnp.where(i == 0, sample, state.first_sample)
    e1, e2, e3, e4 = ets[::-1]  # newest first
    combos = [
        lambda: e,
        lambda: (e + state.ets[-1]) / 2,
        lambda: (3 * e1 - e2) / 2,
        lambda: (23 * e1 - 16 * e2 + 5 * e3) / 12,
        lambda: (1 / 24) * (55 * e1 - 59 * e2 + 37 * e3 - 9 * e4),
    ]
    eps = jax.lax.switch(jnp.minimum(i, 4), combos)
    if cfg.prediction_type == "v_prediction":
        eps = a_t**0.5 * eps + (1 - a_t) ** 0.5 * sample
    b_t, b_prev = 1 - a_t, 1 - a_prev
    sample_coeff = (a_prev / a_t) ** 0.5
    denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
    prev = sample_coeff * sample - (a_prev - a_t) * eps / denom
    return prev.astype(x.dtype), PNDMState(first_sample, ets)
