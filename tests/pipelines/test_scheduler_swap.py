"""Reading a directory's scheduler and swapping it (INTERFACE.md: `scheduler=`, `scheduler_config=`,
`--scheduler`) as diffusers' `pipe.scheduler = X.from_config(pipe.scheduler.config, **overrides)` does."""

import dataclasses
import json
import math

import diffusers
import pytest

import jdiff
from jdiff.errors import InputError
from jdiff.pipelines.model_dir import ModelDir
from jdiff.sampling.table import SAMPLERS

# Stable Diffusion 1.5's scheduler_config.json (PNDM), plus keys of other classes as real files carry them.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def _model_dir(tmp_path, scheduler=SD15, extra_text=""):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", scheduler["_class_name"]]}
        )
    )
    text = json.dumps(scheduler)
    if (
        extra_text
    ):  # diffusers writes non-standard JSON (-Infinity) for float defaults like lambda_min_clipped
        text = text[:-1] + ", " + extra_text + "}"
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(text)
    return ModelDir.open(tmp_path)


def _same_as_diffusers(cfg, ref_config):
    for f in dataclasses.fields(cfg):
        got, want = getattr(cfg, f.name), ref_config[f.name]
        want = tuple(want) if isinstance(want, list) else want
        if isinstance(want, float) and math.isinf(want):
            assert got == want, f.name
        else:
            assert got == want, (f.name, got, want)


def test_the_directory_scheduler_is_read_whole(tmp_path):
    model = _model_dir(tmp_path)
    sampler, cfg = model.sampler()
    assert sampler is SAMPLERS["PNDMScheduler"] and model.scheduler_class == "PNDMScheduler"
    _same_as_diffusers(cfg, diffusers.PNDMScheduler.from_config(SD15).config)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
        ("DDIMScheduler", {}),  # clip_sample=false from the file, not DDIM's default true
        ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
        ("UniPCMultistepScheduler", {}),
        ("LCMScheduler", {"original_inference_steps": 30}),
    ],
)
def test_swapping_matches_diffusers_from_config(tmp_path, name, overrides):
    model = _model_dir(tmp_path, extra_text='"lambda_min_clipped": -Infinity, "an_unused_float": NaN')
    model.swap_scheduler(name, overrides)
    sampler, cfg = model.sampler()
    assert sampler is SAMPLERS[name] and model.scheduler_class == name
    file = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    pipe_config = diffusers.PNDMScheduler.from_config(file).config
    _same_as_diffusers(cfg, getattr(diffusers, name).from_config(pipe_config, **overrides).config)
    if name == "DDIMScheduler":
        assert cfg.clip_sample is False


def test_non_standard_json_is_read(tmp_path):
    config = {**SD15, "_class_name": "DPMSolverMultistepScheduler"}
    model = _model_dir(tmp_path, config, extra_text='"lambda_min_clipped": -Infinity, "variance_type": null')
    _, cfg = model.sampler()
    assert cfg.lambda_min_clipped == -math.inf
    model.swap_scheduler(None, {"lambda_min_clipped": -5.1})  # overrides on the directory's own class
    assert model.sampler()[1].lambda_min_clipped == -5.1


def test_bad_swaps_are_refused_clearly(tmp_path):
    model = _model_dir(tmp_path)
    with pytest.raises(InputError, match="'KarrasVeScheduler' is not supported") as e:
        model.swap_scheduler("KarrasVeScheduler")
    assert all(name in str(e.value) for name in SAMPLERS)
    with pytest.raises(InputError, match="'steps_offset' must be an integer"):
        model.swap_scheduler("EulerDiscreteScheduler", {"steps_offset": "1"})
    with pytest.raises(InputError, match="scheduler_config must be a dict"):
        model.swap_scheduler("EulerDiscreteScheduler", [("steps_offset", 1)])
    with pytest.raises(InputError, match="DPMSolverMultistepScheduler algorithm_type must be"):
        model.swap_scheduler("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"})


def test_from_pretrained_swaps_before_loading(tiny_flux_dir):
    with pytest.raises(InputError, match="'Nope' is not supported"):
        jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, scheduler="Nope")
    with pytest.raises(InputError, match="FLUX needs a flow-matching scheduler"):
        jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, scheduler="EulerDiscreteScheduler")
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, scheduler_config={"max_shift": 1.2})
    assert gen.pipeline.scheduler.max_shift == 1.2
