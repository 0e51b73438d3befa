"""Test-wide settings: float32 with the highest matmul precision, one thread per worker (xdist runs two), one
persistent compilation cache per test run."""

import os
import shutil
import tempfile

# 8 fake CPU devices for the sharding tests (STYLE.md 18); everything else runs on device 0.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import pytest
import torch

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)

# One compilation cache for the whole run, empty at its start and removed at its end: the many tests that build
# the same tiny models load each other's programs instead of compiling them again (about 12% of the suite's
# time, one run each). Set here, on import, so that xdist's workers, started after the controller imports this file, share
# it. Tests of the cache itself set their own directories.
_RUN_CACHE = None
if "JDIFF_CACHE_DIR" not in os.environ:
    _RUN_CACHE = os.environ["JDIFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="jdiff-test-cache-")


def pytest_sessionfinish(session):
    if _RUN_CACHE is not None:  # this process made it (xdist's workers inherit the controller's)
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A saved tiny dev-like FLUX.1 diffusers directory (built once per test worker)."""
    from tests.fixtures import tiny_flux_pipeline

    path = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline(guidance_embeds=True).save_pretrained(path)
    return path
