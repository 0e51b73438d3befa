"""`jdiff bench` at tiny sizes on the CPU: runs, writes its JSON, and compares with diffusers when asked."""

import json
import math

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
    assert "| FLUX.1-dev transformer step, 1024x1024 | jdiff |" in table


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
    assert "| FLUX.1-dev text-to-image, 1024x1024, 28 steps | jdiff |" in out
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
