"""EulerDiscrete, EulerAncestralDiscrete, Heun and DDIM rows against diffusers: timesteps exactly, sigmas to
float32 rounding, whole trajectories of a fake model from the same latents, stochastic ones per seed."""

import jax
import numpy as np
import pytest

from jdiff.errors import InputError
from jdiff.sampling.noise import noise_keys
from jdiff.sampling.table import sampler_for
from tests.sampling.ddpm_reference import ours, reference

# Stable Diffusion 1.5's betas; SDXL's EulerDiscreteScheduler config (leading, steps_offset 1).
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SDXL_EULER = dict(**SD, timestep_spacing="leading", steps_offset=1, interpolation_type="linear")
SIGMA_RTOL = 3e-6  # diffusers' float32 torch kernels vs numpy (see jdiff/sampling/ddpm.py)


def _close(got, want, tol=2e-5):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "config, steps",
    [
        (SDXL_EULER, 7),
        (
            dict(
                SD, timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True
            ),
            5,
        ),
        (dict(SD, use_karras_sigmas=True, final_sigmas_type="sigma_min"), 6),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="leading"), 4),
        (dict(SD, prediction_type="v_prediction", timestep_type="continuous"), 4),
    ],
)
def test_euler_matches_diffusers(config, steps):
    ref, want = reference("EulerDiscreteScheduler", config, steps)
    sched, got = ours("EulerDiscreteScheduler", config, steps)
    if config.get("use_karras_sigmas") or config.get("timestep_type") == "continuous":
        np.testing.assert_allclose(sched.timesteps, ref.timesteps.numpy(), rtol=1e-5, atol=1e-4)
    else:
        np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())
    np.testing.assert_allclose(sched.sigmas, ref.sigmas.numpy(), rtol=SIGMA_RTOL)
    np.testing.assert_allclose(sched.init_noise_sigma, float(ref.init_noise_sigma), rtol=SIGMA_RTOL)
    # Zero terminal SNR starts from sigma 4096: float32 latents of that size carry ~1e-4 absolute rounding.
    _close(got, want, 1e-4 if config.get("rescale_betas_zero_snr") else 2e-5)


@pytest.mark.parametrize(
    "config, steps, eta",
    [
        (dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 6, 0.0),  # SD 1.5's DDIM
        (
            dict(
                SD, timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction"
            ),
            5,
            0,
        ),
        (dict(timestep_spacing="linspace", prediction_type="sample", clip_sample_range=0.8), 4, 0.0),
        (dict(SD, clip_sample=True, set_alpha_to_one=True), 3, 0.0),
    ],
)
def test_ddim_matches_diffusers(config, steps, eta):
    ref, want = reference("DDIMScheduler", config, steps, step_kwargs={"eta": eta})
    sched, got = ours("DDIMScheduler", config, steps, eta=eta)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())
    _close(got, want)


def test_ddim_with_eta_is_deterministic_per_seed_and_adds_the_right_noise():
    config = dict(SD, clip_sample=False, steps_offset=1)
    keys = noise_keys([3, 4])
    _, want = reference("DDIMScheduler", config, 4, keys=keys, step_kwargs={"eta": 0.7})
    _close(ours("DDIMScheduler", config, 4, keys=keys, eta=0.7)[1], want)
    _, a = ours("DDIMScheduler", config, 4, keys=keys, eta=1.0)
    _, b = ours("DDIMScheduler", config, 4, keys=keys, eta=1.0)
    _, c = ours("DDIMScheduler", config, 4, keys=noise_keys([5, 4]), eta=1.0)
    _, det = ours("DDIMScheduler", config, 4, keys=keys, eta=0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], c[0]) and np.array_equal(a[1], c[1])  # per-sample keys
    assert not np.allclose(a, det)
    # Without keys, eta=0 runs (no noise needed); eta > 0 cannot pass unnoticed.
    _, no_keys = ours("DDIMScheduler", config, 4, eta=0.0)
    np.testing.assert_array_equal(no_keys, det)
    _, nan = ours("DDIMScheduler", config, 4, eta=0.5)
    assert np.isnan(nan).all()


@pytest.mark.parametrize(
    "name, config, steps",
    [
        ("EulerAncestralDiscreteScheduler", dict(SD, timestep_spacing="leading", steps_offset=1), 5),
        ("EulerAncestralDiscreteScheduler", dict(SD, prediction_type="v_prediction"), 3),
        ("LCMScheduler", {}, 4),
        (
            "LCMScheduler",
            dict(prediction_type="v_prediction", clip_sample=True, original_inference_steps=30),
            3,
        ),
    ],
)
def test_stochastic_solvers_match_diffusers_given_the_same_noise_and_are_deterministic_per_seed(
    name, config, steps
):
    keys = noise_keys([11, 12])
    ref, want = reference(name, config, steps, keys=keys)
    sched, got = ours(name, config, steps, keys=keys)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())
    _close(got, want)
    np.testing.assert_array_equal(ours(name, config, steps, keys=keys)[1], got)
    _, other = ours(name, config, steps, keys=noise_keys([13, 12]))
    assert not np.allclose(other[0], got[0]) and np.array_equal(other[1], got[1])  # one stream per sample
    with pytest.raises(ValueError, match="pass noise_keys"):
        ours(name, config, steps)


def test_ancestral_noise_is_standard_normal():
    """A cheap statistical check: the per-step noise over many samples is N(0, 1) and independent per step."""
    from jdiff.sampling.noise import step_noise

    keys = noise_keys(list(range(64)))
    a, b = np.asarray(step_noise(keys, 0, (32,))), np.asarray(step_noise(keys, 1, (32,)))
    for n in (a, b):
        assert abs(n.mean()) < 0.1 and abs(n.std() - 1) < 0.1
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.1


def test_heun_two_model_calls_per_step_match_diffusers():
    for config, steps in [
        (dict(SD, timestep_spacing="leading", steps_offset=1), 5),
        (dict(SD, use_karras_sigmas=True, prediction_type="v_prediction"), 4),
    ]:
        ref, want = reference("HeunDiscreteScheduler", config, steps)
        sched, got = ours("HeunDiscreteScheduler", config, steps)
        ts = ref.timesteps.numpy()
        tol = dict(rtol=1e-5, atol=1e-4) if config.get("use_karras_sigmas") else dict(rtol=0, atol=0)
        np.testing.assert_allclose(sched.timesteps, np.concatenate([ts[:1], ts[1::2]]), **tol)
        s = ref.sigmas.numpy()
        np.testing.assert_allclose(sched.sigmas, np.concatenate([s[:1], s[1::2]]), rtol=SIGMA_RTOL)
        _close(got, want)


@pytest.mark.parametrize(
    "config, steps",
    [
        (dict(SD, skip_prk_steps=True, steps_offset=1), 6),  # Stable Diffusion 1.5's scheduler
        (dict(SD, skip_prk_steps=True, timestep_spacing="trailing", prediction_type="v_prediction"), 5),
        (dict(skip_prk_steps=True, timestep_spacing="linspace", set_alpha_to_one=True), 4),
        (dict(SD, skip_prk_steps=True), 2),
        (dict(SD, skip_prk_steps=True), 1),
    ],
)
def test_pndm_plms_matches_diffusers(config, steps):
    ref, want = reference("PNDMScheduler", config, steps)
    sched, got = ours("PNDMScheduler", config, steps)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps.numpy())  # N + 1 model calls
    _close(got, want)


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("EulerDiscreteScheduler", {"beta_schedule": "cosine"}, "beta_schedule must be one of"),
        ("EulerDiscreteScheduler", {"prediction_type": "flow"}, "prediction_type must be one of"),
        ("EulerDiscreteScheduler", {"timestep_spacing": "even"}, "timestep_spacing must be one of"),
        ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}, "interpolation_type="),
        ("EulerAncestralDiscreteScheduler", {"prediction_type": "sample"}, "prediction_type must be one of"),
        ("DDIMScheduler", {"thresholding": True}, "thresholding=true"),
        ("DDIMScheduler", {"trained_betas": [0.1, 0.2]}, "trained_betas holds 2 values"),
        ("HeunDiscreteScheduler", {"steps_offset": 1.5}, "'steps_offset' must be an integer"),
        ("PNDMScheduler", {}, "set skip_prk_steps=true"),
        ("LCMScheduler", {"original_inference_steps": 0}, "original_inference_steps must be"),
    ],
)
def test_bad_values_are_refused_by_key(name, config, match):
    with pytest.raises(InputError, match=match):
        sampler_for(name, config)


def test_sdxl_style_foreign_keys_are_ignored():
    config = {
        **SDXL_EULER,
        "clip_sample": False,
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "sample_max_value": 1.0,
        "_class_name": "EulerDiscreteScheduler",
    }
    _, cfg = sampler_for("EulerDiscreteScheduler", config)
    assert cfg.timestep_spacing == "leading" and not hasattr(cfg, "clip_sample")
    jax.clear_caches()
