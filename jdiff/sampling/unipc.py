"""UniPC (multistep predictor-corrector), matching diffusers' `UniPCMultistepScheduler` with `predict_x0=True`:
on flow sigmas as the Wan pipelines configure it (`prediction_type="flow_prediction"`, `use_flow_sigmas=True`)
and on DDPM (variance-preserving) sigmas, optionally Karras, for epsilon, v and sample prediction.

Same design as the Euler path (`flow_match.py`): the schedule is computed on the host in numpy with the
reference's arithmetic and enters the jitted loop as arrays; the solver step is a pure function of a small
dataclass state (the history) and the model output; `loop.sample` runs it in one `lax.scan`. The solver's order
at each step (warm-up from order 1, `lower_order_final`) is a function of the traced step index and the static
number of steps, chosen with `lax.switch`, so one compile serves every shift and every request of the same
shape.

Axis letters: N number of steps; X any latent shape (the solver is elementwise over it).

Flow parameterisation: alpha = 1 - sigma, lambda = log(alpha) - log(sigma); the model's velocity v converts to
a data prediction x0 = x - sigma * v, and the UniP/UniC updates are diffusers' B(h) formulas on x0. DDPM
parameterisation: alpha = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma * alpha in the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jdiff.errors import InputError
from jdiff.sampling import ddpm
from jdiff.sampling.config import FIX_IN, check_types, refuse_unsupported
from jdiff.sampling.flow_match import shift_sigmas
from jdiff.sampling.sampler import Schedule

# diffusers renames these to bh2 in its constructor.
_BH2_ALIASES = ("bh2", "midpoint", "heun", "logrho")


@dataclass(frozen=True)
class UniPCConfig:
    """diffusers `UniPCMultistepScheduler` config keys (scheduler/scheduler_config.json), with its defaults.

    Flow matching: a Wan config sets `prediction_type="flow_prediction"` and `use_flow_sigmas=true`; the beta
    keys, sigma_min/sigma_max, timestep_spacing and steps_offset only feed VP sigmas and are unused with flow
    sigmas (in diffusers too). Otherwise the DDPM form (diffusers' defaults, Stable Diffusion's UniPC).
    """

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
    predict_x0: bool = True
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    solver_p: Any = None  # a scheduler object in diffusers (UniP replaced by another solver); not in JSON
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    final_sigmas_type: str = "zero"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    sigma_min: float | None = None
    sigma_max: float | None = None
    shift_terminal: float | None = None

    def validate(self) -> None:
        check_types(self)
        fix = FIX_IN
        if (self.prediction_type == "flow_prediction") != bool(self.use_flow_sigmas):
            raise InputError(
                "UniPC flow matching needs both prediction_type='flow_prediction' and use_flow_sigmas=true, got "
                f"{self.prediction_type!r} and {self.use_flow_sigmas}; set both {fix} (or neither, for DDPM models)"
            )
        if not self.use_flow_sigmas:
            ddpm.check_ddpm_config(self, "UniPCMultistepScheduler")
        if not self.predict_x0:
            raise InputError(f"jdiff's UniPC needs predict_x0=true, got false; set it {fix}")
        refuse_unsupported(
            self,
            "UniPCMultistepScheduler",
            {
                "thresholding": False,
                "use_exponential_sigmas": False,
                "use_beta_sigmas": False,
                "solver_p": None,
            }
            | ({"use_karras_sigmas": False} if self.use_flow_sigmas else {}),
        )
        if self.solver_order not in (1, 2, 3):
            raise InputError(
                f"UniPC solver_order must be 1, 2 or 3, got {self.solver_order}; change it {fix}"
            )
        if self.solver_type not in ("bh1", *_BH2_ALIASES):
            raise InputError(
                f"UniPC solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}; fix it {fix}"
            )
        if self.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise InputError(
                f"timestep_spacing must be 'linspace', 'leading' or 'trailing', got {self.timestep_spacing!r}"
            )
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise InputError(
                f"final_sigmas_type must be 'zero' or 'sigma_min', got {self.final_sigmas_type!r}"
            )
        if self.time_shift_type not in ("exponential", "linear"):
            raise InputError(
                f"time_shift_type must be 'exponential' or 'linear', got {self.time_shift_type!r}"
            )
        if not self.lower_order_final and self.solver_order > 1 and self.final_sigmas_type == "zero":
            # The last multistep update divides by lambda(0) = inf: diffusers returns inf/NaN latents.
            raise InputError(
                "lower_order_final=false with final_sigmas_type='zero' makes UniPC's last step non-finite "
                f"(in diffusers too); set lower_order_final=true {fix}"
            )

    @property
    def bh2(self) -> bool:
        return self.solver_type in _BH2_ALIASES


def unipc_flow_schedule(
    cfg: UniPCConfig, num_steps: int, *, mu: float | None = None, sigmas: np.ndarray | None = None
) -> Schedule:
    """Sigmas and model timesteps exactly as diffusers' `set_timesteps(num_steps, sigmas=sigmas, mu=mu)` with
    flow sigmas.

    The shift is applied in the base sigmas' precision (float64 on diffusers' default linspace, which stops at
    1/num_train_timesteps), the first sigma is pulled off 1 by 1e-6 so lambda stays finite, and the model
    timesteps are sigma * num_train_timesteps truncated to integers.

    Args:
        cfg: the scheduler config.
        num_steps: number of denoising steps (model calls).
        mu: dynamic-shift parameter; required when the config uses dynamic shifting, ignored otherwise.
        sigmas: custom base sigmas, one per step, shifted like the default ones (diffusers takes them with
            flow sigmas only, as an array); None: the default linspace.

    Returns:
        sigmas [N + 1] float32 ending in the final sigma, timesteps [N] float32. diffusers' timesteps are
        int64; they are float32 here holding the same integers (exact below 2**24) so the model sees the same
        timestep dtype as with the Euler sampler.

    Raises:
        InputError: num_steps < 1.
        ValueError: `sigmas` does not hold num_steps values, or `mu` is missing for dynamic shifting.
    """
    if num_steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {num_steps}")
    if sigmas is None:
        s = np.linspace(1, 1 / cfg.num_train_timesteps, num_steps + 1)[:-1]
    else:
        s = np.asarray(sigmas)
        if s.shape != (num_steps,):
            raise ValueError(f"{num_steps} steps need {num_steps} base sigmas, got shape {s.shape}")
    s = shift_sigmas(
        s,
        cfg.flow_shift,
        dynamic=cfg.use_dynamic_shifting,
        mu=mu,
        time_shift_type=cfg.time_shift_type,
        shift_terminal=cfg.shift_terminal,
    )
    s = np.array(s)  # a copy: the 1e-6 pull below writes in place, as diffusers does
    if np.fabs(s[0] - 1) < 1e-6:
        s[0] -= 1e-6
    timesteps = (s * cfg.num_train_timesteps).astype(np.int64).astype(np.float32)
    last = s[-1] if cfg.final_sigmas_type == "sigma_min" else 0.0
    return Schedule(timesteps=timesteps, sigmas=np.concatenate([s, [last]]).astype(np.float32))


def unipc_schedule(
    cfg: UniPCConfig, num_steps: int, *, mu: float | None = None, sigmas: np.ndarray | None = None
) -> Schedule:
    """diffusers' `set_timesteps`: `unipc_flow_schedule` with flow sigmas, else the DDPM schedule (integer
    timesteps [N] as float32 from `timestep_spacing`, interpolated training sigmas or Karras sigmas)."""
    if cfg.use_flow_sigmas:
        return unipc_flow_schedule(cfg, num_steps, mu=mu, sigmas=sigmas)
    if sigmas is not None:
        raise ValueError("custom sigmas are taken with flow sigmas only (as in diffusers)")
    if num_steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {num_steps}")
    n_train = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        t = np.linspace(0, n_train - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    elif cfg.timestep_spacing == "leading":
        ratio = n_train // (num_steps + 1)
        t = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + cfg.steps_offset
    else:
        t = np.arange(n_train, 0, -n_train / num_steps).round().astype(np.int64) - 1
    ac = ddpm.alphas_cumprod(cfg)
    train = ddpm.train_sigmas(ac)
    if cfg.use_karras_sigmas:
        s = ddpm.karras_sigmas(train[::-1], num_steps, cfg.sigma_min, cfg.sigma_max)
        t = ddpm.sigma_to_t(s, np.log(train)).round().astype(np.int64)
        last = s[-1]
    else:
        s = np.interp(t, np.arange(len(train)), train)
        last = ((np.float32(1) - ac[0]) / ac[0]) ** np.float32(0.5)
    last = last if cfg.final_sigmas_type == "sigma_min" else 0.0
    return Schedule(timesteps=t.astype(np.float32), sigmas=np.concatenate([s, [last]]).astype(np.float32))


def unipc_prediction(cfg: UniPCConfig) -> str:
    """`Sampler.prediction`: a velocity with flow sigmas, else the config's prediction_type."""
    return "flow" if cfg.use_flow_sigmas else cfg.prediction_type


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class UniPCState:
    """The solver's carry between steps (the sample itself is the loop's).

    Attributes:
        last_sample: the (corrected) sample the previous predictor started from, float32.
        model_outputs: data predictions x0 of the last `solver_order` steps, oldest first, float32. Slots not
            yet filled hold zeros and are never read (the warm-up order keeps the solver inside the history).
    """

    last_sample: Array
    model_outputs: tuple[Array, ...]


def unipc_init(cfg: UniPCConfig, schedule: Schedule, latents: Float[Array, "*x"]) -> UniPCState:
    """The state before the first step: the history length is the (static) solver order."""
    del schedule
    zeros = jnp.zeros(latents.shape, jnp.float32)
    return UniPCState(zeros, (zeros,) * cfg.solver_order)


def _order(k: Array, n: int | Array, cfg: UniPCConfig) -> Array:
    """The UniP order diffusers uses at step k: warm up from 1, and with lower_order_final drop to 1 at the end."""
    order = jnp.minimum(cfg.solver_order, k + 1)
    if cfg.lower_order_final:
        order = jnp.minimum(order, n - k)
    return order


def _alpha_sigma(sigma: Array, cfg: UniPCConfig) -> tuple[Array, Array]:
    """(alpha_t, sigma_t) of a schedule sigma: flow (1 - sigma, sigma) or VP (1 / sqrt(sigma^2 + 1), sigma alpha)."""
    if cfg.use_flow_sigmas:
        return 1 - sigma, sigma
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


def _lambda(sigma: Array, cfg: UniPCConfig) -> Array:
    alpha, sigma_t = _alpha_sigma(sigma, cfg)
    return jnp.log(alpha) - jnp.log(sigma_t)


def _phis(sigma_s0: Array, sigma_t: Array, cfg: UniPCConfig, order: int):
    """Scalars of one B(h) update from sigma_s0 to sigma_t: (alpha_t, h, h_phi_1, B_h, b[order]).

    Written in diffusers' operation order so float32 results agree to the ulp.
    """
    h = _lambda(sigma_t, cfg) - _lambda(sigma_s0, cfg)
    hh = -h  # predict_x0
    h_phi_1 = jnp.expm1(hh)
    b_h = jnp.expm1(hh) if cfg.bh2 else hh
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return _alpha_sigma(sigma_t, cfg)[0], h, h_phi_1, b_h, jnp.stack(b)


def _differences(i: Array, order: int, h: Array, sigmas: Array, history: tuple[Array, ...], cfg: UniPCConfig):
    """rk and D1 of the `order - 1` older predictions; history[-1] is m0 at sigmas[i], history[-1-j] at i - j."""
    lambda_s0 = _lambda(sigmas[i], cfg)
    rks, d1s = [], []
    for j in range(1, order):
        rk = (_lambda(sigmas[i - j], cfg) - lambda_s0) / h
        rks.append(rk)
        d1s.append((history[-1 - j] - history[-1]) / rk)
    return rks, d1s


def _unip(order: int, x, history, i, sigmas, cfg):
    """UniP-order predictor from sigmas[i] to sigmas[i + 1]; history ends with the x0 at sigmas[i]."""
    sigma_s0, sigma_t = sigmas[i], sigmas[i + 1]
    alpha_t, h, h_phi_1, b_h, b = _phis(sigma_s0, sigma_t, cfg, order)
    m0 = history[-1]
    x_t = _alpha_sigma(sigma_t, cfg)[1] / _alpha_sigma(sigma_s0, cfg)[1] * x - alpha_t * h_phi_1 * m0
    if order == 1:
        # diffusers subtracts alpha_t * B_h * 0 here, which is NaN on the last step with bh1 (B_h = -h = -inf
        # at sigma 0); we return the limit, the data prediction m0 (what bh2 returns there too).
        return x_t
    rks, d1s = _differences(i, order, h, sigmas, history, cfg)
    if order == 2:
        rhos = jnp.array([0.5], jnp.float32)
    else:
        r = jnp.stack([jnp.stack(rks) ** k for k in range(order - 1)])
        rhos = jnp.linalg.solve(r, b[:-1])
    pred_res = sum(rhos[k] * d1s[k] for k in range(order - 1))
    return x_t - alpha_t * b_h * pred_res


def _unic(order: int, last_sample, this_sample, model_t, history, i, sigmas, cfg):
    """UniC-order corrector of the sample at sigmas[i]; history ends with the x0 at sigmas[i - 1]."""
    # diffusers rebuilds the corrected sample from last_sample; this_sample only fills the switch signature.
    del this_sample
    sigma_s0, sigma_t = sigmas[i - 1], sigmas[i]
    alpha_t, h, h_phi_1, b_h, b = _phis(sigma_s0, sigma_t, cfg, order)
    m0 = history[-1]
    x_t = (
        _alpha_sigma(sigma_t, cfg)[1] / _alpha_sigma(sigma_s0, cfg)[1] * last_sample - alpha_t * h_phi_1 * m0
    )
    rks, d1s = _differences(i - 1, order, h, sigmas, history, cfg)
    if order == 1:
        rhos = jnp.array([0.5], jnp.float32)
    else:
        r = jnp.stack([jnp.stack([*rks, jnp.ones((), jnp.float32)]) ** k for k in range(order)])
        rhos = jnp.linalg.solve(r, b)
    corr_res = sum(rhos[k] * d1s[k] for k in range(order - 1))
    return x_t - alpha_t * b_h * (corr_res + rhos[-1] * (model_t - m0))


def unipc_step(
    cfg: UniPCConfig,
    schedule: Schedule,
    state: UniPCState,
    i: Int[Array, ""],
    x: Float[Array, "*x"],
    model_output: Float[Array, "*x"],
) -> tuple[Float[Array, "*x"], UniPCState]:
    """One UniPC step (diffusers' `scheduler.step`): correct the current sample with UniC, then predict the next.

    Args:
        cfg: the scheduler config; only solver_order, solver_type, lower_order_final and disable_corrector
            shape the computation (the shift enters through the sigmas).
        schedule: from `unipc_flow_schedule`; N is static (its shape).
        state: the carry (`unipc_init` before the first step).
        i: step index (may be traced), 0 <= i < N.
        x: the sample the model just saw, at sigmas[i].
        model_output: the model's velocity at (x, timesteps[i]), any float dtype.

    Returns:
        (the sample at sigmas[i + 1] in x's dtype, next state). Computed in float32 throughout.
    """
    sigmas = schedule.sigmas.astype(jnp.float32)
    # A schedule padded for continuous batching carries its own length (`slots.pad_schedule`).
    n = schedule.aux.get("num_steps", sigmas.shape[0] - 1)
    sample = x.astype(jnp.float32)
    out = model_output.astype(jnp.float32)
    alpha, sigma_t = _alpha_sigma(sigmas[i], cfg)
    if cfg.prediction_type == "epsilon":
        x0 = (sample - sigma_t * out) / alpha
    elif cfg.prediction_type == "v_prediction":
        x0 = alpha * sample - sigma_t * out
    elif cfg.prediction_type == "sample":
        x0 = out
    else:
        x0 = sample - sigma_t * out

    # The corrector refines the sample this model call saw, using the order of the previous predictor; index 0
    # of the switch is "no correction" (first step, or a step listed in disable_corrector).
    use_corrector = i > 0
    if cfg.disable_corrector:
        use_corrector &= ~jnp.isin(i - 1, jnp.asarray(cfg.disable_corrector))
    correctors = [lambda *a: a[1]] + [
        (lambda *a, q=q: _unic(q, *a, i, sigmas, cfg)) for q in range(1, cfg.solver_order + 1)
    ]
    c_index = jnp.where(use_corrector, _order(i - 1, n, cfg), 0)
    sample = jax.lax.switch(c_index, correctors, state.last_sample, sample, x0, state.model_outputs)

    history = (*state.model_outputs[1:], x0)
    predictors = [(lambda *a, p=p: _unip(p, *a, i, sigmas, cfg)) for p in range(1, cfg.solver_order + 1)]
    prev = jax.lax.switch(_order(i, n, cfg) - 1, predictors, sample, history)
    return prev.astype(x.dtype), UniPCState(sample, history)


# ---- compatibility: the Wan pipeline's current calls, until it calls `sample()` with the table ------------
