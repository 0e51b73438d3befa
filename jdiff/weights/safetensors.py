"""A small safetensors reader: header parsing with validation, and zero-copy tensor reads.

We parse the format ourselves (8-byte little-endian header length, JSON header, raw data) rather than go
through `safetensors.safe_open` because:
  * numpy has no bfloat16, and real FLUX/Wan checkpoints are bf16: `ml_dtypes` gives us the dtype and a
    memory map gives us the bytes without a copy;
  * a dry run must read only headers, and a truncated or corrupt file must fail with a message naming the
    file and the fix, before any tensor is touched;
  * sharded loading (multi-host) reads slices of a tensor, which a memory map does natively.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import ml_dtypes
import numpy as np

from jdiff.errors import InputError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and byte range inside the data region."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsFile:
    """One `.safetensors` file: its validated header, and tensors read through a memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tensors, self.metadata, self._data_offset = _read_header(self.path)

    def keys(self) -> list[str]:
        return list(self.tensors)

    @cached_property
    def _mmap(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.uint8, mode="r")

    def read(self, key: str) -> np.ndarray:
        """The tensor `key` as a read-only numpy array backed by the file (no copy)."""
        info = self.tensors[key]
        raw = self._mmap[self._data_offset + info.start : self._data_offset + info.end]
        return raw.view(info.dtype).reshape(info.shape)


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    if not path.is_file():
        raise InputError(f"weight file {path} does not exist")
    size = path.stat().st_size
    fix = "the file is corrupt or incomplete; download or convert it again"
    if size < 8:
        raise InputError(f"{path}: {size} bytes is too short for a safetensors file; {fix}")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(_MAX_HEADER, size - 8):
            raise InputError(f"{path}: header length {n} does not fit a {size}-byte file; {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: the safetensors header is not valid JSON ({e}); {fix}") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: the safetensors header is not a JSON object; {fix}")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    end_max = 0
    for key, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{path}: tensor {key!r} has a malformed header entry {entry!r}; {fix}"
            ) from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - start != nbytes or start < 0:
            raise InputError(
                f"{path}: tensor {key!r} declares {end - start} bytes but shape {shape} "
                f"of {entry['dtype']} needs {nbytes}; {fix}"
            )
        end_max = max(end_max, end)
        tensors[key] = TensorInfo(path, dtype, shape, start, end)
    if end_max > data_size:
        raise InputError(
            f"{path}: truncated: the header declares {end_max} bytes of tensor data but the file holds "
            f"{data_size}; {fix}"
        )
    return tensors, metadata, 8 + n


class WeightSet:
    """All tensors of one model component, possibly spread over several files (a sharded checkpoint)."""

    def __init__(self, files: list[SafetensorsFile]):
        self.files = files
        self.index: dict[str, SafetensorsFile] = {}
        for f in files:
            for k in f.tensors:
                if k in self.index:
                    raise InputError(f"tensor {k!r} appears in both {self.index[k].path} and {f.path}")
                self.index[k] = f

    def keys(self) -> list[str]:
        return list(self.index)

    def info(self, key: str) -> TensorInfo:
        return self.index[key].tensors[key]

    def read(self, key: str) -> np.ndarray:
        return self.index[key].read(key)


def open_weights(folder: str | os.PathLike) -> WeightSet:
    """Opens the safetensors weights of a component folder (diffusers or transformers layout).

    Accepts a single `*.safetensors` file, or a sharded set described by `*.safetensors.index.json`.

    Raises:
        InputError: no weights, only PyTorch pickles, an index naming missing shards, or corrupt files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"component folder {folder} does not exist; is the model directory complete?")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise InputError(f"{folder} has several weight indexes {[p.name for p in indexes]}; keep one")
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise InputError(f"{indexes[0]} is not a valid safetensors index ({e})") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise InputError(f"{indexes[0]} names shard(s) {missing} that are not in {folder}; download them")
        return WeightSet([SafetensorsFile(folder / n) for n in names])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = (
            f" (found PyTorch pickles {pickles}: re-save them with safetensors)"
            if pickles
            else "; is the model directory complete?"
        )
        raise InputError(f"no .safetensors weights in {folder}{hint}")
    if len(files) > 1:
        raise InputError(
            f"{folder} has several .safetensors files {[p.name for p in files]} and no index.json to say "
            "which belong together; remove the extra variants"
        )
    return WeightSet([SafetensorsFile(p) for p in files])
