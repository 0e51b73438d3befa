"""Helpers shared by the tests: error measures and header-only (sparse) safetensors files at real sizes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

_TORCH_DTYPES = {
    "torch.float32": "F32",
    "torch.bfloat16": "BF16",
    "torch.float16": "F16",
    "torch.int64": "I64",
}


# Tests over a mesh of 8 devices: the CPU suite fakes them (tests/conftest.py); a GPU machine may have fewer.
needs_8_devices = pytest.mark.skipif(
    len(jax.devices()) < 8, reason="needs 8 devices (the CPU suite fakes them)"
)


def rel_err(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    assert np.isfinite(a).all(), "non-finite values in actual"
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def write_sparse_safetensors(path: str | Path, tensors: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Writes a safetensors file whose header declares `tensors` (key -> (shape, dtype code)) and whose data
    region is a sparse hole: real-size layouts for dry runs and key-coverage tests, with no memory or disk."""
    itemsize = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8}
    header, offset = {}, 0
    for key, (shape, dtype) in tensors.items():
        n = int(np.prod(shape, dtype=np.int64)) * itemsize[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)


def meta_state_shapes(build) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype code) of a torch model built on the meta device by `build()` (no memory)."""
    import torch

    with torch.device("meta"):
        model = build()
    return {k: (tuple(v.shape), _TORCH_DTYPES[str(v.dtype)]) for k, v in model.state_dict().items()}
