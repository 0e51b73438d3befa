"""What the DDPM / score-based solvers share: the training noise schedule (betas, alphas_cumprod, sigmas), the
inference timestep spacings, Karras sigmas, and reading a model output as a data prediction.

Everything on the host is numpy following diffusers' dtypes: alphas_cumprod is float32 (diffusers computes it
with torch in float32; here the betas and their cumulative product are computed in float64 and rounded once,
which agrees with torch's float32 kernels to ~1e-6 relative: torch's own CPU linspace and cumprod results
depend on the CPU's vector width, so no numpy code reproduces them bit for bit on every machine). Timesteps
built from integers (every spacing) are exact.

Axis letters: T number of training timesteps; N number of inference steps; X any latent shape.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jdiff.errors import InputError
from jdiff.sampling.config import FIX_IN, check_types

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")
DDPM_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def check_ddpm_config(cfg, scheduler: str, predictions=DDPM_PREDICTIONS, spacings=SPACINGS) -> None:
    """The checks every DDPM-family config shares: JSON types, beta schedule, prediction type, spacing.

    Raises:
        InputError: naming the key, its value and the accepted ones.
    """
    check_types(cfg)

    def one_of(key, allowed):
        value = getattr(cfg, key)
        if value not in allowed:
            raise InputError(
                f"{scheduler} {key} must be one of {list(allowed)}, got {value!r}; fix it {FIX_IN}"
            )

    if cfg.num_train_timesteps < 2:
        raise InputError(
            f"num_train_timesteps must be at least 2, got {cfg.num_train_timesteps}; fix it {FIX_IN}"
        )
    if cfg.trained_betas is None:
        one_of("beta_schedule", BETA_SCHEDULES)
    elif len(cfg.trained_betas) != cfg.num_train_timesteps:
        raise InputError(
            f"trained_betas holds {len(cfg.trained_betas)} values but num_train_timesteps is "
            f"{cfg.num_train_timesteps}; fix it {FIX_IN}"
        )
    one_of("prediction_type", predictions)
    one_of("timestep_spacing", spacings)


def betas(cfg) -> np.ndarray:
    """[T] float32 betas of diffusers' `beta_schedule` (or `trained_betas`), before any zero-SNR rescaling."""
    n = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        return np.asarray(cfg.trained_betas, np.float32)
    if cfg.beta_schedule == "linear":
        return np.linspace(cfg.beta_start, cfg.beta_end, n).astype(np.float32)
    if cfg.beta_schedule == "scaled_linear":
        return np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n).astype(np.float32) ** 2

    # squaredcos_cap_v2: the cosine schedule, in Python floats as diffusers computes it.
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32)


def rescale_zero_terminal_snr(b: np.ndarray) -> np.ndarray:
    """Betas rescaled so the last timestep has zero SNR (arXiv 2305.08891, Algorithm 1), float32 as diffusers."""
    sqrt_ac = np.sqrt(np.cumprod(1 - b.astype(np.float64))).astype(np.float32)
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * (first / (first - last))
    ac = sqrt_ac**2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return (1 - alphas).astype(np.float32)


def alphas_cumprod(cfg, *, zero_snr_floor: bool = True) -> np.ndarray:
    """[T] float32 cumulative products of 1 - beta.

    Args:
        cfg: a config with the beta keys and `rescale_betas_zero_snr`.
        zero_snr_floor: with zero-SNR rescaling, set the last value to 2**-24 instead of 0 (the sigma-based
            schedulers do, so sigma stays finite; DDIM and LCM keep the 0).
    """
    b = betas(cfg)
    if cfg.rescale_betas_zero_snr:
        b = rescale_zero_terminal_snr(b)
    ac = np.cumprod(1 - b.astype(np.float64)).astype(np.float32)
    if cfg.rescale_betas_zero_snr and zero_snr_floor:
        ac[-1] = 2**-24
    return ac


def train_sigmas(ac: np.ndarray) -> np.ndarray:
    """[T] float32 sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod), increasing with t."""
    return (((1 - ac) / ac) ** np.float32(0.5)).astype(np.float32)


def spaced_timesteps(spacing: str, n_train: int, n: int, steps_offset: int) -> np.ndarray:
    """[N] float64 timesteps, decreasing, of diffusers' `timestep_spacing` for the Euler-style schedulers.

    "linspace": evenly from T - 1 to 0 (not rounded; float32 as diffusers builds them); "leading": multiples
    of T // N plus steps_offset; "trailing": rounded T - k T / N minus 1.
    """
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        t = (np.arange(0, n) * (n_train // n)).round()[::-1].astype(np.float32)
        return (t + steps_offset).astype(np.float64)
    t = np.arange(n_train, 0, -n_train / n).round().astype(np.float32)
    return (t - 1).astype(np.float64)


def karras_sigmas(sigmas: np.ndarray, n: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """[N] float64 Karras et al. (2022) sigmas, rho 7, between the ends of `sigmas` (or the given bounds)."""
    lo = float(sigma_min) if sigma_min is not None else float(sigmas[-1])
    hi = float(sigma_max) if sigma_max is not None else float(sigmas[0])
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of `sigma` by linear interpolation in log sigma (diffusers' _sigma_to_t)."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def noise_sigma(sigmas: np.ndarray, spacing: str) -> np.float32:
    """diffusers' `init_noise_sigma` of the Euler-style schedulers: max sigma, or sqrt(max^2 + 1) for leading."""
    top = np.float32(sigmas.max())
    if spacing in ("linspace", "trailing"):
        return top
    return np.float32((top**2 + np.float32(1)) ** np.float32(0.5))


def x0_from_sigma(
    prediction: str, x: Float[Array, "*x"], out: Float[Array, "*x"], sigma: Float[Array, ""]
) -> Float[Array, "*x"]:
    """The data prediction of the Euler-style (variance-exploding) schedulers, where x = x0 + sigma * noise."""
    if prediction == "epsilon":
        return x - sigma * out
    if prediction == "v_prediction":
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    return out


def x0_eps_from_alpha(
    prediction: str, x: Float[Array, "*x"], out: Float[Array, "*x"], alpha_prod: Float[Array, ""]
) -> tuple[Float[Array, "*x"], Float[Array, "*x"]]:
    """(data, noise) predictions of the variance-preserving schedulers (DDIM, LCM, PNDM's formula aside), where
    x = sqrt(alpha_prod) x0 + sqrt(1 - alpha_prod) noise."""
    beta_prod = 1 - alpha_prod
    if prediction == "epsilon":
        return (x - beta_prod**0.5 * out) / alpha_prod**0.5, out
    if prediction == "sample":
        return out, (x - alpha_prod**0.5 * out) / beta_prod**0.5
    return alpha_prod**0.5 * x - beta_prod**0.5 * out, alpha_prod**0.5 * out + beta_prod**0.5 * x


def f32(x) -> Array:
    return jnp.asarray(x, jnp.float32)
