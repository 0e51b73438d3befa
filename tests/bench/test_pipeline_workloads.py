"""The end-to-end workloads of the newer families (Z-Image-Turbo, FLUX.2-klein, SDXL, Qwen-Image, Wan2.1) and
of FLUX.1 with a step cache: their declarations, FLOP counts, offline tokenizers, memory at real size, and tiny
runs through `jdiff bench`."""

import json
import math

import pytest

from jdiff import bench
from jdiff.bench import configs, flops
from jdiff.cli import main

NEW = ["z_image_pipeline", "flux2_klein_pipeline", "sdxl_pipeline", "qwen_image_pipeline", "wan_pipeline"]
PIPELINES = ["flux_pipeline", "flux_pipeline_fbcache", *NEW]


@pytest.mark.parametrize("name", PIPELINES)
def test_declaration_names_what_both_engines_run(name):
    import diffusers
    import transformers

    from jdiff.bench.tokenizers import RECIPES
    from jdiff.registry import family_for
    from jdiff.sampling.table import sampler_for
    from jdiff.weights.config import from_dict

    wl = bench.WORKLOADS[name]
    spec = wl.pipeline
    family = family_for(spec.pipeline_class)  # jdiff runs the class, and diffusers has it
    assert hasattr(diffusers, spec.pipeline_class) and wl.engines == bench.ENGINES
    assert spec.denoiser in spec.models and set(spec.tokenizers) <= set(spec.components)
    assert set(spec.models) | set(spec.tokenizers) | {"scheduler"} == set(spec.components), spec.components
    assert all(recipe in RECIPES for recipe in spec.tokenizers.values())
    for tiny in (False, True):
        _, config, sizes = bench._resolve(name, tiny)
        for model in spec.models:
            library, cls = spec.components[model]
            assert hasattr(diffusers if library == "diffusers" else transformers, cls), cls
            from_dict(family.spec_for(cls, component=model).config_cls, config[model])  # validates
        sampler_for(spec.components["scheduler"][1], config["scheduler"])
        call = spec.call(sizes)
        assert call["num_inference_steps"] == sizes["steps"], call


def test_tflop_is_steps_times_denoiser_calls_times_the_step_formula():
    w = bench.WORKLOADS
    z, k = configs.Z_IMAGE_PRESET, configs.KLEIN_PRESET
    assert (z["num_inference_steps"], z["guidance_scale"], k["num_inference_steps"]) == (9, 0.0, 4)
    image = dict(h=64, w=64)
    want = {
        "z_image_pipeline": 9 * flops.z_image_tflop(configs.Z_IMAGE_TURBO, dict(image, text=32)),
        "flux2_klein_pipeline": 4 * flops.flux2_tflop(configs.FLUX2_KLEIN_4B, dict(image, text=512)),
        "sdxl_pipeline": 30 * flops.unet_tflop(configs.SDXL_UNET, dict(h=128, w=128, text=77, batch=2)),
        # True CFG: the prompt's and the negative prompt's calls.
        "qwen_image_pipeline": 50 * 2 * flops.qwen_image_tflop(configs.QWEN_IMAGE, dict(image, text=19)),
        # CFG: two calls a step, each wan_forward's.
        "wan_pipeline": 50 * 2 * w["wan_forward"].tflop,
    }
    for name, tflop in want.items():
        assert w[name].tflop == pytest.approx(tflop), name
    sd, qwen = w["sdxl_pipeline"].pipeline.call(w["sdxl_pipeline"].sizes), w["qwen_image_pipeline"].pipeline
    assert sd["guidance_scale"] == 5.0 and sd["negative_prompt"] == configs.NEGATIVE_PROMPT
    assert qwen.call(w["qwen_image_pipeline"].sizes)["true_cfg_scale"] == 4.0


def test_bench_tokenizers_count_as_the_real_ones(tmp_path):
    from jdiff.bench import tokenizers
    from jdiff.models.z_image.transformer import padded
    from jdiff.pipelines.chat_template import read_template, render
    from jdiff.pipelines.model_dir import _read_with_transformers
    from jdiff.pipelines.qwen_image_text import T2I_DROP, T2I_TEMPLATE
    from jdiff.pipelines.tokenizer import load_tokenizer

    texts = (configs.PROMPT, configs.NEGATIVE_PROMPT)
    tokenizers.write("qwen2_5_vl", tmp_path / "vl", texts)
    vl = load_tokenizer(tmp_path / "vl", _read_with_transformers)
    # Qwen's tokenizer has the words of the template and the prompt whole: 34 template tokens (what Qwen-Image
    # drops), 14 of the prompt (13 words and a comma) and the template's 5 closing ones.
    prefix = T2I_TEMPLATE.split("{}")[0]
    assert vl.lengths([prefix]) == [T2I_DROP]
    assert vl.lengths([T2I_TEMPLATE.format(configs.PROMPT)]) == [T2I_DROP + configs.QWEN_IMAGE_PIPELINE_TEXT]
    assert configs.QWEN_IMAGE_PIPELINE_TEXT == 14 + 5
    tokenizers.write("qwen3", tmp_path / "qwen3", texts)
    qwen3 = load_tokenizer(tmp_path / "qwen3", _read_with_transformers)
    chat = render(
        read_template(tmp_path / "qwen3"),
        [{"role": "user", "content": configs.PROMPT}],
        add_generation_prompt=True,
        enable_thinking=True,
    )
    (n,) = qwen3.lengths([chat])
    assert n == 3 + 14 + 5 and padded(n) == configs.Z_IMAGE_PIPELINE_TEXT  # user turn, prompt, closing


def test_qwen_vl_config_reads_the_same_on_both_sides():
    import transformers

    from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
    from jdiff.weights.config import from_dict

    assert from_dict(Qwen2_5_VLConfig, configs.QWEN_VL_7B) == Qwen2_5_VLConfig.qwen_image_7b()
    ref = transformers.Qwen2_5_VLConfig(**configs.QWEN_VL_7B)
    text, vision = ref.text_config, ref.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (3584, 28, 4)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (32, 1280, 3584)


def test_qwen_image_vae_configs_are_the_presets():
    # Written out in jdiff.bench.configs (the VAE's module imports jax; `jdiff bench --help` must not).
    from jdiff.models.qwen_image.vae import QwenImageVAEConfig
    from jdiff.weights.config import from_dict

    for tiny, preset in ((False, QwenImageVAEConfig.qwen_image()), (True, QwenImageVAEConfig.tiny())):
        _, config, _ = bench._resolve("qwen_image_pipeline", tiny)
        assert from_dict(QwenImageVAEConfig, config["vae"]) == preset, tiny


def _weights_gb(name: str) -> dict[str, float]:
    """GB (1e9 bytes) of each model's weights as jdiff's loader keeps them in bf16, from abstract shapes."""
    import jax.numpy as jnp
    from flax import nnx

    from jdiff.registry import family_for
    from jdiff.weights.config import from_dict
    from jdiff.weights.loading import path_str

    wl, config, _ = bench._resolve(name, tiny=False)
    family = family_for(wl.pipeline.pipeline_class)
    out = {}
    for model in wl.pipeline.models:
        spec = family.spec_for(wl.pipeline.components[model][1], component=model)
        _, state = spec.abstract(from_dict(spec.config_cls, config[model]))
        out[model] = (
            sum(
                math.prod(v.shape) * jnp.dtype(spec.plan.target_dtype(path_str(p), jnp.bfloat16)).itemsize
                for p, v in nnx.to_flat_state(state)
            )
            / 1e9
        )
    return out


def test_qwen_image_pipeline_weights_fit_one_h200():
    gb = _weights_gb("qwen_image_pipeline")
    # The workload's note: 40.9 GB transformer, 15.5 GB Qwen2.5-VL-7B with its vision tower, 0.25 GB VAE.
    assert gb["transformer"] == pytest.approx(40.9, abs=0.1), gb
    assert gb["text_encoder"] == pytest.approx(15.5, abs=0.1), gb
    assert sum(gb.values()) < 60 < 141, gb


@pytest.mark.parametrize("name", [*NEW, "flux_pipeline_fbcache"])
def test_tiny_pipeline_runs_on_both_engines(name, tmp_path, monkeypatch):
    # Each engine's worker called in this process (the driver's subprocesses, and jdiff's warm phase, are
    # what the FLUX.1 test in test_bench.py covers, for any family: the driver is family-agnostic): the
    # model directory written here, jdiff's compilation cache in tmp_path.
    from jdiff.bench import diffusers_pipeline, jdiff_pipeline, model_dir

    def write_here(name, tiny):
        _, config, _ = bench._resolve(name, tiny)
        return model_dir.write_model_dir(name, config, tmp_path / "model")

    monkeypatch.setattr(jdiff_pipeline, "write_in_subprocess", write_here)
    monkeypatch.setattr(jdiff_pipeline, "_enable_cache", lambda tiny, warm: tmp_path / "jax")
    rows = {
        "jdiff": jdiff_pipeline.run_jdiff_pipeline(name, tiny=True, warm=False),
        "diffusers": diffusers_pipeline.run_diffusers_pipeline(name, tiny=True, compiled=False),
    }
    repeats = bench.WORKLOADS[name].repeats
    sizes = bench.WORKLOADS[name].tiny_sizes
    shape = [1, *([sizes["frames"]] if "frames" in sizes else []), sizes["height"], sizes["width"], 3]
    for engine, r in rows.items():
        assert r["finite"] and r["out_shape"] == shape, (engine, r)
        assert r["first_s"] > 0 and len(r["times_ms"]) == repeats and min(r["times_ms"]) > 0, (engine, r)
    j = rows["jdiff"]
    assert set(j["trace_counts"].values()) == {1}, j  # one trace per stage: the steady calls reused them
    assert {"text_encoding", "denoising", "decoding"} <= set(j["stage_ms"]), j
    # Nothing the call asks for is dropped (a negative prompt ignored would mean no CFG); the tiny FLUX.1
    # workloads read 8 T5 tokens of the prompt on purpose.
    dropped = [w for w in j["warnings"] if "ignored" in w or "truncat" in w.lower()]
    assert not dropped or (name.startswith("flux_pipeline") and all("T5 reads" in w for w in dropped)), (
        dropped
    )
    if bench.WORKLOADS[name].pipeline.step_cache:
        cache = j["step_cache"]
        assert cache["steps_skipped"] + cache["steps_computed"] == 2 and cache["steps_computed"] >= 1, j
    else:
        assert j["step_cache"] is None, j


def test_model_dir_is_the_same_every_time(tmp_path):
    # jdiff's warm phase reads the tokenizers from its cache only if the folder it writes again is identical.
    from jdiff.bench.model_dir import write_model_dir
    from jdiff.pipelines.tokenizer import fingerprint

    for name in NEW:
        _, config, _ = bench._resolve(name, tiny=True)
        a, b = (write_model_dir(name, config, tmp_path / name / x) for x in "ab")
        for folder in bench.WORKLOADS[name].pipeline.tokenizers:
            assert fingerprint(a / folder) == fingerprint(b / folder), (name, folder)
        assert (a / "model_index.json").read_text() == (b / "model_index.json").read_text()


@pytest.mark.slow
def test_tables_of_several_runs_compare_across_them(tmp_path, capsys):
    row = dict(workload="sdxl_pipeline", tiny=False, finite=True)
    (tmp_path / "a.json").write_text(
        json.dumps([dict(row, engine="jdiff", ms=2000.0), dict(row, engine="diffusers", ms=4000.0)])
    )
    (tmp_path / "b.json").write_text(json.dumps([dict(row, engine="diffusers-compile", ms=3000.0)]))
    assert main(["bench", "--tables", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    title = bench.WORKLOADS["sdxl_pipeline"].title
    assert f"| {title} | jdiff | 2000.0 | 2.00 | 1.50 |" in out, out
