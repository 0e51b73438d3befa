"""DPMSolverMultistep (DPM-Solver++ 1-3, SDE) and UniPC on DDPM sigmas against diffusers: timesteps exactly,
sigmas to float32 rounding, whole trajectories of a fake model from the same latents (SDE: the same noise)."""

import numpy as np
import pytest

from jdiff.errors import InputError
from jdiff.sampling.noise import noise_keys
from jdiff.sampling.table import sampler_for
from tests.sampling.ddpm_reference import ours, reference

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SIGMA_RTOL = 3e-6


def _check(name, config, steps, *, keys=None, tol=2e-5):
    ref, want = reference(name, config, steps, keys=keys)
    sched, got = ours(name, config, steps, keys=keys)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())  # Karras ones too: rounded
    np.testing.assert_allclose(sched.sigmas, ref.sigmas.numpy(), rtol=SIGMA_RTOL)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "config, steps",
    [
        (dict(SD, solver_order=2, timestep_spacing="leading", steps_offset=1), 8),  # SD's DPM++ 2M
        (dict(SD, solver_order=2, use_karras_sigmas=True), 7),  # DPM++ 2M Karras
        (dict(SD, solver_order=3, prediction_type="v_prediction", timestep_spacing="trailing"), 6),
        (
            dict(solver_order=3, solver_type="heun", final_sigmas_type="sigma_min", lower_order_final=False),
            16,
        ),
        (dict(SD, solver_order=1, prediction_type="sample", euler_at_final=True), 3),
        (
            dict(
                SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"
            ),
            5,
        ),
        (dict(beta_schedule="squaredcos_cap_v2", solver_order=2, timestep_spacing="leading"), 5),
        (dict(SD, lambda_min_clipped=-5.1, solver_order=2), 6),
    ],
)
def test_dpm_solver_pp_matches_diffusers(config, steps):
    tol = 1e-4 if config.get("rescale_betas_zero_snr") else 2e-5
    _check("DPMSolverMultistepScheduler", config, steps, tol=tol)


@pytest.mark.parametrize(
    "config, steps",
    [
        (dict(SD, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), 6),  # DPM++ 2M SDE Karras
        (dict(SD, algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun"), 5),
    ],
)
def test_sde_dpm_solver_pp_matches_diffusers_given_the_same_noise(config, steps):
    keys = noise_keys([7, 8])
    _check("DPMSolverMultistepScheduler", config, steps, keys=keys)
    _, a = ours("DPMSolverMultistepScheduler", config, steps, keys=keys)
    _, b = ours("DPMSolverMultistepScheduler", config, steps, keys=noise_keys([9, 8]))
    assert not np.allclose(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_karras_timesteps_of_the_cosine_schedule_are_truncated_not_rounded():
    import diffusers

    config = dict(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    ref = diffusers.DPMSolverMultistepScheduler.from_config(config)
    ref.set_timesteps(9)
    sampler, cfg = sampler_for("DPMSolverMultistepScheduler", config)
    sched = sampler.schedule(cfg, 9)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())
    np.testing.assert_allclose(sched.sigmas, ref.sigmas.numpy(), rtol=SIGMA_RTOL)


def test_the_ode_solver_needs_no_noise_keys():
    ours("DPMSolverMultistepScheduler", SD, 3)  # no ValueError: nothing drawn


@pytest.mark.parametrize(
    "config, match",
    [
        (
            {"algorithm_type": "dpmsolver"},
            "algorithm_type must be 'dpmsolver\\+\\+' or 'sde-dpmsolver\\+\\+'",
        ),
        ({"solver_order": 4}, "solver_order must be 1, 2 or 3"),
        ({"use_lu_lambdas": True}, "use_lu_lambdas=true"),
        ({"variance_type": "learned_range"}, 'variance_type="learned_range"'),
        ({"final_sigmas_type": "one"}, "final_sigmas_type must be"),
    ],
)
def test_dpm_bad_values_are_refused_by_key(config, match):
    with pytest.raises(InputError, match=match):
        sampler_for("DPMSolverMultistepScheduler", config)


@pytest.mark.parametrize(
    "config, steps",
    [
        (dict(SD, timestep_spacing="leading", steps_offset=1), 8),  # what SD pipelines swap in
        ({}, 5),  # diffusers' defaults: linspace, linear betas, bh2, order 2
        (dict(SD, solver_order=3, prediction_type="v_prediction", use_karras_sigmas=True), 7),
        (dict(SD, prediction_type="sample", timestep_spacing="trailing", disable_corrector=[1]), 4),
        (
            dict(
                SD, final_sigmas_type="sigma_min", lower_order_final=False, solver_order=3, solver_type="bh1"
            ),
            6,
        ),
    ],
)
def test_unipc_on_ddpm_sigmas_matches_diffusers(config, steps):
    _check("UniPCMultistepScheduler", config, steps)
    sampler, cfg = sampler_for("UniPCMultistepScheduler", config)
    assert sampler.prediction(cfg) == config.get("prediction_type", "epsilon")


def test_unipc_flow_and_ddpm_forms_are_told_apart():
    with pytest.raises(InputError, match="needs both prediction_type='flow_prediction' and use_flow_sigmas"):
        sampler_for("UniPCMultistepScheduler", {"use_flow_sigmas": True})
    with pytest.raises(InputError, match="needs both"):
        sampler_for("UniPCMultistepScheduler", {"prediction_type": "flow_prediction"})
    with pytest.raises(InputError, match="use_karras_sigmas=true"):
        sampler_for(
            "UniPCMultistepScheduler",
            {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "use_karras_sigmas": True},
        )
