"""Test-wide settings: float32 with the highest matmul precision, one thread per worker (xdist runs two)."""

import os

# 8 fake CPU devices for the sharding tests (STYLE.md 18); everything else runs on device 0.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JDIFF_CACHE_DIR", "")  # hermetic: no persistent compilation cache in tests

import jax
import pytest
import torch

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)


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
