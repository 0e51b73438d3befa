"""`jdiff bench`'s fp8 workloads at tiny sizes on the CPU (the lead runs the real ones on a GPU)."""

import json

import jax.numpy as jnp
from flax import nnx

from jdiff import bench
from jdiff.cli import main


def test_flux_step_fp8_runs_quantized(tmp_path, capsys):
    from jdiff.bench.jdiff_engine import _jdiff_setup

    _, config, sizes = bench._resolve("flux_step_fp8", tiny=True)
    _, params, _, _ = _jdiff_setup("flux_step_fp8", config, sizes)
    leaves = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(params)}
    assert leaves["transformer_blocks.attn.merged_qkv.kernel_fp8"].dtype == jnp.float8_e4m3fn
    assert "transformer_blocks.norm1.linear.kernel" in leaves  # the modulation stays bf16
    argv = ["bench", "--tiny", "--only", "flux_step_fp8", "--engines", "jdiff", "--out", str(tmp_path)]
    assert main(argv) == 0
    (r,) = json.loads((tmp_path / "compare.json").read_text())
    assert r["finite"] and r["ms"] > 0 and r["out_shape"] == [1, 16, 64], r
    assert "64x64, fp8 linears | jdiff |" in capsys.readouterr().out


def test_fp8_workloads_are_flux_dev_and_jdiff_only():
    _, cfg, sizes = bench._resolve("flux_step_fp8", tiny=False)
    assert cfg["num_layers"] == 19 and sizes == dict(h=64, w=64, text=512)
    wl = bench.WORKLOADS["flux_pipeline_fp8"]
    assert wl.engines == ("jdiff",) and wl.pipeline.quantization == "fp8"
    assert wl.sizes == bench.WORKLOADS["flux_pipeline"].sizes
    for name in ("flux_step", "wan_forward"):
        fp8, base = bench.WORKLOADS[name + "_fp8"], bench.WORKLOADS[name]
        assert (fp8.config, fp8.sizes, fp8.tflop, fp8.engines) == (
            base.config,
            base.sizes,
            base.tflop,
            ("jdiff",),
        )
