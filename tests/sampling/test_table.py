"""The sampler table: lookup and config errors, a new solver in one function pair plus one row, the loop with
the DDPM-family hooks, the compatibility wrappers, and that samplers import no model."""

import dataclasses
import inspect
from dataclasses import dataclass

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jdiff.errors import InputError
from jdiff.sampling import progress
from jdiff.sampling.config import check_types
from jdiff.sampling.loop import sample
from jdiff.sampling.sampler import Sampler, Schedule
from jdiff.sampling.table import SAMPLERS, sampler_for

RNG = np.random.default_rng(0)
X0 = RNG.standard_normal((2, 5, 4)).astype(np.float32)
W = (RNG.standard_normal((4, 4)) * 0.7).astype(np.float32)
WAN_UNIPC = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def _model(x, t, extra=None):
    v = jnp.tanh(x @ W) * (1 + t / 1000)
    return v if extra is None else v + extra


# ---- the table -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_config_keys_are_the_diffusers_constructor_arguments(name):
    """Every key diffusers' class takes is modelled (so validate() sees it); keys it does not take are ignored."""
    params = set(inspect.signature(getattr(diffusers, name).__init__).parameters) - {"self"}
    assert {f.name for f in dataclasses.fields(SAMPLERS[name].config)} == params


def test_rows_predict_flow_and_leave_the_input_alone():
    for name, config in [("FlowMatchEulerDiscreteScheduler", {}), ("UniPCMultistepScheduler", WAN_UNIPC)]:
        sampler, cfg = sampler_for(name, config)
        sched = sampler.schedule(cfg, 3)
        assert sampler.prediction(cfg) == "flow"
        assert sched.init_noise_sigma == 1.0
        assert sampler.scale_model_input(cfg, sched, 0, X0) is X0


def test_unknown_scheduler_lists_the_supported_ones():
    with pytest.raises(InputError, match="'KDPM2DiscreteScheduler' is not supported") as e:
        sampler_for("KDPM2DiscreteScheduler", {})
    assert all(name in str(e.value) for name in SAMPLERS)


@pytest.mark.parametrize(
    "name, config, match",
    [
        (
            "FlowMatchEulerDiscreteScheduler",
            {"stochastic_sampling": True},
            r"sets stochastic_sampling=true, .* set stochastic_sampling=false in scheduler/scheduler_config.json",
        ),
        (
            "FlowMatchEulerDiscreteScheduler",
            {"invert_sigmas": True, "use_beta_sigmas": True},
            r"sets invert_sigmas=true, use_beta_sigmas=true.* set invert_sigmas=false, use_beta_sigmas=false",
        ),
        ("FlowMatchEulerDiscreteScheduler", {"shift": "3.0"}, r"'shift' must be a number, got '3.0'"),
        ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": 1}, r"'use_dynamic_shifting' must be"),
        ("FlowMatchEulerDiscreteScheduler", {"base_shift": [0.5]}, r"'base_shift' must be a number or null"),
        ("UniPCMultistepScheduler", {**WAN_UNIPC, "disable_corrector": [0.5]}, r"a list of an integer"),
        (
            "UniPCMultistepScheduler",
            {**WAN_UNIPC, "solver_p": "DDIM"},
            r"sets solver_p=\"DDIM\".*solver_p=null",
        ),
        ("FlowMatchEulerDiscreteScheduler", [1.0], "must be a JSON object"),
    ],
)
def test_unsupported_or_mistyped_options_are_refused_by_name(name, config, match):
    with pytest.raises(InputError, match=match):
        sampler_for(name, config)


def test_keys_diffusers_ignores_are_ignored():
    config = {"_class_name": "X", "_diffusers_version": "0.30.0", "clip_sample": True, "shift": 3}
    _, cfg = sampler_for("FlowMatchEulerDiscreteScheduler", config)
    assert cfg.shift == 3 and not hasattr(cfg, "clip_sample")


# ---- a new solver: one function pair plus one row ------------------------------------------------------------


@dataclass(frozen=True)
class ToyFlowConfig:
    shift: float = 1.0

    def validate(self):
        check_types(self)


def toy_schedule(cfg, num_steps, *, mu=None, sigmas=None):
    s = np.linspace(1, 0, num_steps + 1, dtype=np.float32)
    s = (cfg.shift * s / (1 + (cfg.shift - 1) * s)).astype(np.float32)
    return Schedule(timesteps=s[:-1] * np.float32(1000), sigmas=s)


def toy_step(cfg, sched, state, i, x, v):
    return x + (sched.sigmas[i + 1] - sched.sigmas[i]) * v, state


def test_a_toy_solver_is_a_function_pair_and_a_row(monkeypatch):
    with pytest.raises(InputError, match="not supported"):
        sampler_for("ToyFlowScheduler", {})
    monkeypatch.setitem(SAMPLERS, "ToyFlowScheduler", Sampler(ToyFlowConfig, toy_schedule, toy_step))

    sampler, cfg = sampler_for("ToyFlowScheduler", {"shift": 2.0})
    sched = sampler.schedule(cfg, 5)
    extra = RNG.standard_normal((5, 4)).astype(np.float32)  # a per-step input, one row per step
    run = jax.jit(lambda x, s, e, tok: sample(sampler, cfg, _model, x, s, per_step=e, progress=tok))
    ticks = []
    with progress.track(ticks.append) as token:
        got = np.asarray(run(X0, sched, extra, np.int32(token)))
        jax.effects_barrier()

    x = X0.copy()
    for i in range(5):
        v = np.tanh(x @ W) * (1 + sched.timesteps[i] / 1000) + extra[i]
        x = x + (sched.sigmas[i + 1] - sched.sigmas[i]) * v
    np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6)
    assert sorted(ticks) == [0, 1, 2, 3, 4]  # the per-step hook comes with the loop, not the solver


# ---- the DDPM-family hooks: an epsilon-prediction Euler (diffusers' EulerDiscreteScheduler) --------------------


@dataclass(frozen=True)
class ToyEulerEpsConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps_offset: int = 1

    def validate(self):
        check_types(self)


def euler_eps_schedule(cfg, num_steps, *, mu=None, sigmas=None):
    """set_timesteps with "leading" spacing and a linear beta schedule (Stable Diffusion 1.x's config)."""
    n = cfg.num_train_timesteps
    betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32).numpy()
    alphas_cumprod = np.cumprod(1 - betas, dtype=np.float32)
    t = (np.arange(num_steps) * (n // num_steps)).round()[::-1].astype(np.float32) + cfg.steps_offset
    s = np.interp(t, np.arange(n), ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
    s = np.concatenate([s, [0]]).astype(np.float32)
    return Schedule(timesteps=t, sigmas=s, init_noise_sigma=np.float32((s.max() ** 2 + 1) ** 0.5))


def euler_eps_step(cfg, sched, state, i, x, eps):
    sigma, sigma_next = sched.sigmas[i], sched.sigmas[i + 1]
    x0 = x - sigma * eps
    return x + (x - x0) / sigma * (sigma_next - sigma), state


def euler_eps_input(cfg, sched, i, x):
    return x / (sched.sigmas[i] ** 2 + 1) ** 0.5


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
def test_the_ddpm_family_fits_the_loop(monkeypatch):
    row = Sampler(
        ToyEulerEpsConfig,
        euler_eps_schedule,
        euler_eps_step,
        prediction=lambda cfg: "epsilon",
        scale_model_input=euler_eps_input,
    )
    monkeypatch.setitem(SAMPLERS, "EulerDiscreteScheduler", row)
    sampler, cfg = sampler_for("EulerDiscreteScheduler", {"beta_schedule": "linear"})
    assert sampler.prediction(cfg) == "epsilon"
    got = jax.jit(lambda x, s: sample(sampler, cfg, _model, x, s))(X0, sampler.schedule(cfg, 8))

    ref = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    )
    ref.set_timesteps(8)
    x = torch.from_numpy(X0) * ref.init_noise_sigma
    for t in ref.timesteps:
        eps = torch.tanh(ref.scale_model_input(x, t) @ torch.from_numpy(W)) * (1 + t / 1000)
        x = ref.step(eps, t, x).prev_sample
    assert ref.init_noise_sigma > 10  # the scaling matters: skipping it would miss by far
    np.testing.assert_allclose(np.asarray(got), x.numpy(), rtol=1e-4, atol=1e-4)
