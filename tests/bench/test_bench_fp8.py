"""`jdiff bench`'s fp8 workloads at tiny sizes on the CPU (the lead runs the real ones on a GPU)."""

import json
from dataclasses import replace

import jax.numpy as jnp
import pytest
from flax import nnx

from jdiff import bench
from jdiff.bench.workloads import FP8_STEPS
from jdiff.cli import main


def test_flux_step_fp8_runs_quantized(tmp_path, capsys):
    from jdiff.bench.jdiff_engine import _jdiff_setup

    _, config, sizes = bench._resolve("flux_step_fp8", tiny=True)
    _, params, _, _ = _jdiff_setup("flux_step_fp8", config, sizes)
    leaves = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(params)}
    assert leaves["transformer_blocks.attn.to_q.kernel_fp8"].dtype == jnp.float8_e4m3fn
    assert "transformer_blocks.norm1.linear.kernel" in leaves  # the modulation stays bf16
    argv = ["bench", "--tiny", "--only", "flux_step_fp8", "--engines", "jdiff", "--out", str(tmp_path)]
    assert main(argv) == 0
    (r,) = json.loads((tmp_path / "compare.json").read_text())
    assert r["finite"] and r["ms"] > 0 and r["out_shape"] == [1, 16, 64], r
    assert "64x64, fp8 linears | jdiff |" in capsys.readouterr().out


def test_fp8_workloads_are_their_base_and_jdiff_only():
    _, cfg, sizes = bench._resolve("flux_step_fp8", tiny=False)
    assert cfg["num_layers"] == 19 and sizes == dict(h=64, w=64, text=512)
    for name in ("flux_pipeline", "z_image_pipeline", "qwen_image_pipeline"):
        fp8, base = bench.WORKLOADS[name + "_fp8"], bench.WORKLOADS[name]
        assert fp8.engines == ("jdiff",) and fp8.pipeline.quantization == "fp8", name
        assert (fp8.config, fp8.sizes) == (base.config, base.sizes)
        assert replace(fp8.pipeline, quantization=base.pipeline.quantization) == base.pipeline
    for name in FP8_STEPS:
        fp8, base = bench.WORKLOADS[name + "_fp8"], bench.WORKLOADS[name]
        assert (fp8.config, fp8.sizes, fp8.tflop, fp8.engines) == (
            base.config,
            base.sizes,
            base.tflop,
            ("jdiff",),
        )


@pytest.mark.parametrize(
    "name,blocks",
    [
        ("z_image_step", ("layers.", "noise_refiner.", "context_refiner.")),
        ("qwen_image_cfg_step", ("transformer_blocks.",)),
    ],
)
def test_other_fp8_steps_quantize_their_blocks(name, blocks):
    from jdiff.bench.jdiff_engine import _jdiff_setup

    _, config, sizes = bench._resolve(name + "_fp8", tiny=True)
    _, params, _, _ = _jdiff_setup(name + "_fp8", config, sizes)
    dtypes = {".".join(map(str, p)): v.dtype for p, v in nnx.to_flat_state(params)}
    fp8 = [k for k, d in dtypes.items() if d == jnp.float8_e4m3fn]
    assert fp8 and all(k.startswith(blocks) for k in fp8), fp8
    assert not any("mod" in k.lower() for k in fp8), fp8  # the modulation stays bf16
