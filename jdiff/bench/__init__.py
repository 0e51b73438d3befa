"""`jdiff bench`: jdiff against diffusers on one GPU at real sizes (usage: `jdiff.bench.driver`'s docstring).

Files: `workloads` (the table of workloads: sizes, repeat counts), `configs` (the configs they run), `flops`
(FLOP formulas), `spec` (what a workload declares), `pipeline_workloads` (the end-to-end workloads, one
declaration per family), `model_dir` / `tokenizers` (an end-to-end workload's model directory without weights,
tokenizers built offline), `jdiff_engine` / `diffusers_engine` (single-model workloads: FLUX.1, Z-Image,
FLUX.2-klein, SDXL UNet, Qwen-Image, Wan, the VAEs), `jdiff_pipeline` / `diffusers_pipeline` (the end-to-end
workloads: FLUX.1, Z-Image-Turbo, FLUX.2-klein, SDXL, Qwen-Image), `driver` (subprocesses, tables, CLI).
The underscored names are re-exported for `benchmarks/` scripts that reuse the random real-size models.

Names are imported on first use, so `jdiff bench --help` (and each worker's start) imports neither jax nor
torch before it needs them.
"""

from importlib import import_module

_EXPORTS = {
    "main": "jdiff.bench.driver",
    "ENGINES": "jdiff.bench.workloads",
    "WORKLOADS": "jdiff.bench.workloads",
    "Workload": "jdiff.bench.workloads",
    "_resolve": "jdiff.bench.workloads",
    "_jdiff_random": "jdiff.bench.jdiff_engine",
    "_jdiff_setup": "jdiff.bench.jdiff_engine",
    "_torch_random": "jdiff.bench.diffusers_engine",
    "_torch_setup": "jdiff.bench.diffusers_engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jdiff.bench' has no attribute {name!r}")
