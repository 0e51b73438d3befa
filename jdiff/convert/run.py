"""`jdiff convert`: a diffusers-format directory -> a jdiff checkpoint (orbax params + configs + tokenizers).

The dry run reads only safetensors headers and configs; the real run loads one component at a time, so peak
host memory is about the largest component in the target dtype.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp

from jdiff.errors import ConversionError, InputError
from jdiff.pipelines.model_dir import ModelDir
from jdiff.registry import open_model
from jdiff.weights import checkpoint


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _model_components(model: ModelDir) -> list[str]:
    return [name for name, (_, cls) in model.components().items() if cls in model.family.components]


def dry_run(src: str | Path) -> Report:
    """Checks every model component's keys and shapes against its plan, from headers only."""
    model = open_model(src)
    if model.is_checkpoint:
        raise InputError(f"{src} is already a jdiff checkpoint; convert its diffusers-format source instead")
    report = Report()
    for name, (_, cls) in model.components().items():
        if cls not in model.family.components:
            model.folder(name)  # tokenizers and schedulers must at least be present
            report.lines.append(f"{name:16s} {cls}: copied as is")
            continue
        try:
            assignments = model.check(name)
        except ConversionError as e:
            report.problems.extend(f"{name}: {p}" for p in e.problems)
            report.lines.append(f"{name:16s} {cls}: {len(e.problems)} problem(s)")
            continue
        n_src = sum(len(keys) for a in assignments for keys in a.sources)
        report.lines.append(f"{name:16s} {cls}: {n_src} tensors -> {len(assignments)} parameters, all mapped")
    return report


def convert(src: str | Path, dst: str | Path, *, dtype: str = "bfloat16") -> Path:
    """Converts `src` to a jdiff checkpoint at `dst`, atomically (a failure leaves nothing at `dst`)."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if dtype not in dtypes:
        raise InputError(f"--dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    report = dry_run(src)  # fail fast, naming every problem, before any tensor is read
    if report.problems:
        raise ConversionError(str(src), report.problems)
    model = open_model(src)
    dst = Path(dst)

    def build(tmp: Path) -> None:
        shutil.copy2(model.root / "model_index.json", tmp / "model_index.json")
        for extra in ("jdiff_preset.json",):
            if (model.root / extra).is_file():
                shutil.copy2(model.root / extra, tmp / extra)
        models = set(_model_components(model))
        for name in model.components():
            folder = model.folder(name)
            if name not in models:
                shutil.copytree(folder, tmp / name)
                continue
            (tmp / name).mkdir()
            shutil.copy2(folder / "config.json", tmp / name / "config.json")
            _, module = model.load(name, dtype=dtypes[dtype])
            checkpoint.save_params(module, tmp / name)
            del module
        checkpoint.write_marker(tmp, dtypes[dtype])

    checkpoint.write_atomically(dst, build)
    return dst
