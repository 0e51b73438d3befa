"""`jdiff bench` at tiny sizes on the CPU: runs, writes its JSON, and compares with diffusers when asked."""

import json
import math
import sys

import pytest

from jdiff import bench
from jdiff.cli import main


def test_bench_tiny_with_diffusers(tmp_path, capsys):
    assert (
        main(["bench", "--tiny", "--only", "flux_step", "--compare", "diffusers", "--out", str(tmp_path)])
        == 0
    )
    results = json.loads((tmp_path / "compare.json").read_text())
    by_engine = {r["engine"]: r for r in results}
    assert set(by_engine) == {"jdiff", "diffusers", "diffusers-compile"}
    assert all(r.get("finite") and r["ms"] > 0 for r in results), results
    table = capsys.readouterr().out
    # The rows name what ran: a toy config at 64x64, not FLUX.1-dev at 1024x1024.
    assert "| tiny FLUX transformer step (toy config), 64x64 | jdiff |" in table
    assert "1024x1024" not in table and "FLUX.1-dev" not in table


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_bench_tiny_flux_pipeline_cold_and_warm(tmp_path, capsys):
    # torch.compile of the pipeline is left out: on CPU it alone takes longer than the rest of this file.
    argv = ["bench", "--tiny", "--only", "flux_pipeline", "--engines", "jdiff", "diffusers"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "compare.json").read_text())
    by_engine = {r["engine"]: r for r in results}
    assert set(by_engine) == {"jdiff", "diffusers"}, results
    for r in results:
        assert r.get("finite") and r["out_shape"] == [1, 64, 64, 3], r
        assert _positive(r["ms"]) and _positive(r["first_s"]), r
    j = by_engine["jdiff"]
    for key in ("warm_start_s", "construct_s", "compile_s", "xla_compile_s", "warm_first_s"):
        assert _positive(j[key]), (key, j)
    assert j["warm_finite"], j
    # The cold worker started on an empty cache and filled it; the warm one found it and was served from it.
    assert j["cache_entries_before"] == 0 and j["cache_hits"] == 0, j
    assert j["warm_cache_entries_before"] == j["cache_entries_after"] > 0, j
    assert j["warm_cache_hits"] > 0 and j["warm_cache_misses"] == 0, j
    # One trace per stage: the steady calls reused the first call's programs.
    assert j["trace_counts"] == {"encode": 1, "denoise": 1, "decode": 1}, j
    assert set(j["stage_compile_s"]) >= {"text_encoding", "denoising", "decoding"}, j
    out = capsys.readouterr().out
    assert "| tiny FLUX text-to-image (toy config), 64x64, 2 steps | jdiff |" in out
    assert "1024x1024" not in out
    assert "| workload | engine | cold start s | warm start s |" in out


def test_flux_pipeline_configs():
    wl, real, sizes = bench._resolve("flux_pipeline", tiny=False)
    assert (wl.tflop, sizes["steps"], sizes["height"]) == (28 * 74.4, 28, 1024)
    t5, clip = real["text_encoder_2"], real["text_encoder"]
    assert (t5["d_model"], t5["d_ff"], t5["num_layers"], t5["num_heads"]) == (4096, 10240, 24, 64)
    assert (clip["hidden_size"], clip["num_hidden_layers"]) == (768, 12)
    _, tiny, _ = bench._resolve("flux_pipeline", tiny=True)
    # Toy overrides apply per component; what they leave alone stays real.
    assert tiny["transformer"]["num_layers"] == 1 and tiny["transformer"]["in_channels"] == 64
    assert tiny["text_encoder_2"]["vocab_size"] == 32128
    assert tiny["scheduler"] == real["scheduler"]
    # Pooled CLIP width and T5 width feed the transformer's projections.
    assert tiny["text_encoder"]["hidden_size"] == tiny["transformer"]["pooled_projection_dim"]
    assert tiny["text_encoder_2"]["d_model"] == tiny["transformer"]["joint_attention_dim"]


def test_warm_needs_a_pipeline_workload():
    with pytest.raises(SystemExit) as e:
        main(["bench", "--engine", "jdiff", "--workload", "flux_step", "--warm"])
    assert e.value.code == 2


# Pixels per unit of a workload's h / w: the transformer steps count 2x2 patches of 8x latents.
PIXELS_PER_UNIT = {
    "flux_step": 16,
    "flux_step_fp8": 16,
    "z_image_step": 16,
    "flux2_klein_step": 16,
    "flux2_dev_step": 16,
    "qwen_image_step": 16,
}
PIXELS_PER_UNIT["qwen_image_cfg_step"] = 16
PIXELS_PER_UNIT |= {f"{n}_fp8": PIXELS_PER_UNIT[n] for n in ("z_image_step", "qwen_image_cfg_step")}
PIXELS_PER_UNIT |= dict.fromkeys(
    ("hunyuan_video15_step", "hunyuan_video15_vae_decode", "hunyuan_video15_vae_decode_720p_tiled"), 4
)  # the toy VAE: 4x
PIXELS_PER_UNIT |= dict.fromkeys(("flux_lora_step", "flux_lora_batch4_one", "flux_lora_batch4_mixed"), 16)


def test_every_tiny_workload_is_labelled_as_what_runs():
    for name, wl in bench.WORKLOADS.items():
        assert wl.label(tiny=True).startswith("tiny ") and wl.label(tiny=False) == wl.title, name
        _, _, sizes = bench._resolve(name, tiny=True)
        unit = PIXELS_PER_UNIT.get(name, 8)
        h = sizes.get("height") or sizes["h"] * unit
        w = sizes.get("width") or sizes.get("w", sizes["h"]) * unit
        assert f"{w}x{h}" in wl.label(tiny=True), (name, sizes)


@pytest.mark.parametrize("argv", [["--compare", "diffusers"], ["--engines", "diffusers-compile"]])
def test_an_engine_that_cannot_import_exits_2_with_a_hint(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setitem(sys.modules, "torch", None)  # as where torch is not installed
    assert main(["bench", "--tiny", "--only", "flux_step", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdiff: error:") and err.count("\n") == 1, err
    assert "need torch" in err and "pip install torch diffusers" in err
    assert not (tmp_path / "compare.json").exists()  # nothing ran


def test_a_run_that_could_not_run_exits_1(tmp_path, capsys):
    # A budget below the 10 s a run needs skips it: the table says so and the exit code is not 0.
    assert main(["bench", "--tiny", "--only", "flux_step", "--budget", "1", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert (
        "| tiny FLUX transformer step (toy config), 64x64 | jdiff | failed: skipped: budget spent |"
        in captured.out
    )
    assert "1 of 1 run(s) failed or were skipped" in captured.err


# The newer families' steps, each engine's worker called in this process (the subprocess path is the one
# test_bench_tiny_with_diffusers covers): same setup, timed call and result row as `jdiff bench`.
STEPS = ["z_image_step", "flux2_klein_step", "sdxl_unet_step", "qwen_image_step", "qwen_image_cfg_step"]
STEPS += ["hunyuan_video15_step", "hunyuan_video15_vae_decode", "hunyuan_video15_vae_decode_720p_tiled"]


@pytest.mark.parametrize("name", STEPS)
def test_tiny_step_runs_on_both_engines(name):
    from jdiff.bench.diffusers_engine import run_diffusers
    from jdiff.bench.jdiff_engine import run_jdiff

    wl = bench.WORKLOADS[name]
    assert {"jdiff", "diffusers"} <= set(wl.engines)
    rows = {"jdiff": run_jdiff(name, tiny=True), "diffusers": run_diffusers(name, tiny=True, compiled=False)}
    for engine, r in rows.items():
        assert r["finite"] and len(r["times_ms"]) == wl.repeats and all(t > 0 for t in r["times_ms"]), (
            engine,
            r,
        )
    # Same output size (Z-Image: jdiff returns [B, C, h, w], diffusers the list's one [C, 1, h, w]; the UNet
    # is channels-last in jdiff).
    j, d = rows["jdiff"]["out_shape"], rows["diffusers"]["out_shape"]
    assert math.prod(j) == math.prod(d) > 0, (j, d)


# One block of each kind at the real widths and sizes, lowered with abstract weights (no memory): XLA's count of
# its FLOPs must match the workload's formula at the same config (XLA also counts the elementwise work and the
# AdaLN linears the formula leaves out, and counts only a padded convolution's taps inside the image: 0.8% fewer
# than the dense count for the SDXL UNet at 128^2). With one block per scan the loop bodies are counted once, as
# they run.
@pytest.mark.parametrize(
    ("name", "one_block"),
    [
        ("z_image_step", dict(n_layers=1, n_refiner_layers=1)),
        ("flux2_klein_step", dict(num_layers=1, num_single_layers=1)),
        ("sdxl_unet_step", dict(transformer_layers_per_block=1)),
        ("qwen_image_step", dict(num_layers=1)),
    ],
)
def test_tflop_formula_matches_xla_count(name, one_block, monkeypatch):
    import jax
    from flax import nnx

    from jdiff.bench import jdiff_engine, workloads

    formula = {
        "z_image_step": workloads.z_image_tflop,
        "flux2_klein_step": workloads.flux2_tflop,
        "sdxl_unet_step": workloads.unet_tflop,
        "qwen_image_step": workloads.qwen_image_tflop,
    }[name]
    wl, config, sizes = bench._resolve(name, tiny=False)
    assert wl.tflop == formula(config, sizes)
    config = {**config, **one_block}

    def abstract(spec, cfg, dtype):
        graphdef, state = spec.abstract(cfg)
        return graphdef, jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, dtype), state)

    monkeypatch.setattr(jdiff_engine, "_jdiff_random", abstract)
    graphdef, params, apply, inputs = jdiff_engine._jdiff_setup(name, config, sizes)
    lowered = jax.jit(lambda p, *xs: apply(nnx.merge(graphdef, p), *xs)).lower(params, *inputs)
    cost = lowered.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e12
    assert xla == pytest.approx(formula(config, sizes), rel=0.01), (xla, formula(config, sizes))


def test_attention_label_reads_each_workloads_own_head_dim():
    """The table's attention column comes from the workload's head dim (a workload missing from the lookup fell
    through to the Wan VAE's and was labelled "xla" while running cuDNN)."""
    from jdiff.bench.jdiff_engine import _attention_head_dim

    for name, wl in bench.WORKLOADS.items():
        head_dim = wl.config.get("attention_head_dim")
        if wl.pipeline is None and isinstance(head_dim, int):
            assert _attention_head_dim(name, wl.config) == head_dim, name
