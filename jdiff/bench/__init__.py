"""`jdiff bench`: jdiff against diffusers on one GPU at real sizes (usage: `jdiff.bench.driver`'s docstring).

Files: `workloads` (configs, sizes, repeat counts), `jdiff_engine` / `diffusers_engine` (single-model
workloads), `jdiff_pipeline` / `diffusers_pipeline` (end-to-end FLUX.1), `driver` (subprocesses, tables, CLI).
The underscored names are re-exported for `benchmarks/` scripts that reuse the random real-size models.
"""

from jdiff.bench.diffusers_engine import _torch_random, _torch_setup
from jdiff.bench.driver import main
from jdiff.bench.jdiff_engine import _jdiff_random, _jdiff_setup
from jdiff.bench.workloads import ENGINES, WORKLOADS, Workload, _resolve

__all__ = [
    "ENGINES",
    "WORKLOADS",
    "Workload",
    "_jdiff_random",
    "_jdiff_setup",
    "_resolve",
    "_torch_random",
    "_torch_setup",
    "main",
]
