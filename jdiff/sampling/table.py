"""The sampler table: diffusers scheduler class name -> `Sampler`.

Adding a solver is one function pair and one row: a host-side `schedule` reproducing the class's
`set_timesteps`, a traced `step` reproducing its `step` (plus `init` when it carries history, and the input
scaling for the DDPM family), and its config dataclass, registered below under the class name that
`model_index.json` names. Pipelines look their scheduler up here and never branch on class names.
"""

from __future__ import annotations

from typing import Any

from jdiff.errors import InputError
from jdiff.sampling import ddim, dpm, euler
from jdiff.sampling.config import config_from_dict
from jdiff.sampling.flow_match import FlowMatchEulerConfig, euler_schedule, euler_step
from jdiff.sampling.sampler import PREDICTIONS, Sampler
from jdiff.sampling.unipc import UniPCConfig, unipc_init, unipc_prediction, unipc_schedule, unipc_step

SAMPLERS: dict[str, Sampler] = {
    "FlowMatchEulerDiscreteScheduler": Sampler(FlowMatchEulerConfig, euler_schedule, euler_step),
    "UniPCMultistepScheduler": Sampler(
        UniPCConfig, unipc_schedule, unipc_step, init=unipc_init, prediction=unipc_prediction
    ),
    "EulerDiscreteScheduler": Sampler(
        euler.EulerConfig,
        euler.euler_schedule,
        euler.euler_step,
        prediction=euler.prediction_type,
        scale_model_input=euler.scale_by_sigma,
    ),
    "EulerAncestralDiscreteScheduler": Sampler(
        euler.EulerAncestralConfig,
        euler.ancestral_schedule,
        euler.ancestral_step,
        prediction=euler.prediction_type,
        scale_model_input=euler.scale_by_sigma,
        takes_noise=True,
    ),
    "HeunDiscreteScheduler": Sampler(
        euler.HeunConfig,
        euler.heun_schedule,
        euler.heun_step,
        prediction=euler.prediction_type,
        model_calls=2,
    ),
    "DDIMScheduler": Sampler(
        ddim.DDIMConfig,
        ddim.ddim_schedule,
        ddim.ddim_step,
        prediction=euler.prediction_type,
        takes_noise=True,
    ),
    "LCMScheduler": Sampler(
        ddim.LCMConfig, ddim.lcm_schedule, ddim.lcm_step, prediction=euler.prediction_type, takes_noise=True
    ),
    "DPMSolverMultistepScheduler": Sampler(
        dpm.DPMSolverConfig,
        dpm.dpm_schedule,
        dpm.dpm_step,
        init=dpm.dpm_init,
        prediction=euler.prediction_type,
        takes_noise=True,
    ),
    "PNDMScheduler": Sampler(
        ddim.PNDMConfig,
        ddim.pndm_schedule,
        ddim.pndm_step,
        init=ddim.pndm_init,
        prediction=euler.prediction_type,
    ),
}


def sampler_for(class_name: str, config: dict[str, Any]) -> tuple[Sampler, Any]:
    """The table row for a diffusers scheduler class and its config read from `scheduler_config.json`.

    Args:
        class_name: the scheduler class `model_index.json` names (e.g. "UniPCMultistepScheduler").
        config: the `scheduler_config.json` dict; keys diffusers' class does not take are ignored, as diffusers
            ignores them.

    Returns:
        (sampler, validated config dataclass).

    Raises:
        InputError: an unknown class (the message lists the supported ones), or a config value the solver
            does not implement (the message names the key and what to set instead).
    """
    sampler = SAMPLERS.get(class_name)
    if sampler is None:
        raise InputError(
            f"scheduler {class_name!r} is not supported; jdiff samples with one of {sorted(SAMPLERS)} "
            "(set the scheduler in model_index.json and scheduler/scheduler_config.json to one of them)"
        )
    cfg = config_from_dict(sampler.config, config)
    # A row whose prediction is none of the known kinds is a bug in the row, not in the user's config.
    assert sampler.prediction(cfg) in PREDICTIONS, (class_name, sampler.prediction(cfg))
    return sampler, cfg
