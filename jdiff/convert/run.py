"""`jdiff convert`: a diffusers-format directory -> a jdiff checkpoint (orbax params + configs + tokenizers).

The dry run reads only safetensors headers and configs; the real run loads one component at a time, so peak
host memory is about the largest component in the target dtype.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jdiff.errors import ConversionError, InputError, OutputError
from jdiff.pipelines.model_dir import ModelDir
from jdiff.registry import open_model
from jdiff.weights import checkpoint
from jdiff.weights.config import read_json
from jdiff.weights.safetensors import open_weights


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _model_components(model: ModelDir) -> list[str]:
    return [name for name, (_, cls) in model.components().items() if cls in model.family.components]


# Components copied as they are: tokenizers, schedulers, image processors (their Pil / Fast variants), guiders
# (jdiff reads them from the copy).
_COPIED = re.compile(
    r".*(Tokenizer|TokenizerFast|Scheduler|ImageProcessor|Processor|FeatureExtractor|Guidance)(Pil|Fast)?"
)


def dry_run(src: str | Path) -> Report:
    """Checks every component against jdiff's family for `src`, from configs and headers only.

    Every problem is collected (a component jdiff does not map, a missing folder, every key and shape
    problem of every model component) and reported at once, with one line per component.
    """
    model = open_model(src)
    if model.is_checkpoint:
        raise InputError(f"{src} is already a jdiff checkpoint; convert its diffusers-format source instead")
    report = Report()
    family = model.family
    for name, (_, cls) in model.components().items():
        if cls in family.unused:
            report.lines.append(f"{name:16s} {cls}: left out (jdiff does not run it)")
            continue
        if not (model.root / name).is_dir():
            report.problems.append(f"{name}: component folder {model.root / name} is missing")
            report.lines.append(f"{name:16s} {cls}: missing")
            continue
        if cls not in family.components:
            if _COPIED.fullmatch(cls):
                report.lines.append(f"{name:16s} {cls}: copied as is")
            else:
                report.problems.append(
                    f"{name}: a {cls}, which jdiff's {family.name} family does not map "
                    f"(it maps {sorted(family.components)})"
                )
                report.lines.append(f"{name:16s} {cls}: not mapped")
            continue
        try:
            assignments = model.check(name)
        except (ConversionError, InputError) as e:
            problems = e.problems if isinstance(e, ConversionError) else [str(e)]
            report.problems.extend(f"{name}: {p}" for p in problems)
            report.lines.append(f"{name:16s} {cls}: {len(problems)} problem(s)")
            continue
        n_src = sum(len(keys) for a in assignments for keys in a.sources)
        line = f"{name:16s} {cls}: {n_src} tensors -> {len(assignments)} parameters, all mapped"
        unread = _unread_config_keys(model, name)
        if unread:
            line += f"; config keys jdiff does not read: {', '.join(unread)}"
        report.lines.append(line)
    return report


def _unread_config_keys(model: ModelDir, name: str) -> list[str]:
    """The keys of a component's config.json that its jdiff config class has no field for (bookkeeping keys,
    `_...`, aside): what a variant of the model may set that jdiff would not honour."""
    import dataclasses

    from jdiff.weights.config import read_json

    fields = {f.name for f in dataclasses.fields(model.spec(name).config_cls)}
    config = read_json(model.root / name / "config.json")
    return sorted(k for k in config if k not in fields and not k.startswith("_"))


def convert(
    src: str | Path, dst: str | Path, *, dtype: str = "bfloat16", report: Callable[[str], None] | None = None
) -> Path:
    """Converts `src` to a jdiff checkpoint at `dst`, atomically (a failure leaves nothing at `dst`).

    Before any tensor is read: every key and shape is checked from the headers, `dst` must not exist, its
    parent must be writable, and the file system must have room for the converted weights.

    Args:
        src: the diffusers-format directory.
        dst: where the checkpoint goes (a new directory).
        dtype: "bfloat16" (the default: half the size of float32; images then differ from a float32 run by
            up to a few 1/255 steps) or "float32" (exact).
        report: called with one line per component as it is written, e.g.
            "transformer: FluxTransformer2DModel -> bfloat16".

    Raises:
        InputError: bad dtype, problems in `src`, an existing `dst`. OutputError: `dst` cannot be written or
            the disk is too full.
    """
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if dtype not in dtypes:
        raise InputError(f"--dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    report = report or (lambda line: None)
    checked = dry_run(src)  # fail fast, naming every problem, before any tensor is read
    if checked.problems:
        raise ConversionError(str(src), checked.problems)
    model = open_model(src)
    dst = Path(dst)
    if dst.exists():
        raise InputError(f"{dst} already exists; choose a new destination or remove it first")
    check_free_space(dst, estimated_bytes(model, np.dtype(dtypes[dtype]).itemsize))

    unused = {name for name, (_, cls) in model.components().items() if cls in model.family.unused}

    def build(tmp: Path) -> None:
        index = read_json(model.root / "model_index.json")
        index = {k: [None, None] if k in unused else v for k, v in index.items()}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        for extra in ("jdiff_preset.json",):
            if (model.root / extra).is_file():
                shutil.copy2(model.root / extra, tmp / extra)
        models = set(_model_components(model))
        for name, (_, cls) in model.components().items():
            if name in unused:
                report(f"{name}: {cls} (left out: jdiff does not run it)")
                continue
            folder = model.folder(name)
            if name not in models:
                shutil.copytree(folder, tmp / name)
                report(f"{name}: {cls} (copied)")
                continue
            (tmp / name).mkdir()
            shutil.copy2(folder / "config.json", tmp / name / "config.json")
            _, module = model.load(name, dtype=dtypes[dtype])
            checkpoint.save_params(module, tmp / name)
            del module
            report(f"{name}: {cls} -> {dtype}")
        checkpoint.write_marker(tmp, dtypes[dtype])

    checkpoint.write_atomically(dst, build)
    return dst


def estimated_bytes(model: ModelDir, float_bytes: int) -> int:
    """About what the converted `model` takes on disk: every floating tensor at `float_bytes` per element,
    other tensors as stored, and the copied folders (tokenizers, scheduler) as they are."""
    models = set(_model_components(model))
    total = 0
    for name, (_, cls) in model.components().items():
        if cls in model.family.unused:
            continue
        folder = model.folder(name)
        if name not in models:
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            continue
        weights = open_weights(folder)
        for key in weights.keys():
            info = weights.info(key)
            size = math.prod(info.shape)
            total += size * (info.dtype.itemsize if info.dtype.kind in "biu" else float_bytes)
    return total


def check_free_space(dst: Path, need: int) -> None:
    """Fails when the file system that will hold `dst` has less than `need` bytes (+5%) free."""
    where = dst.absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # cannot tell: the write itself will say
    need = int(need * 1.05)
    if free < need:
        gib = 2**30
        raise OutputError(
            f"{where} has {free / gib:.2f} GiB free; the converted model needs about {need / gib:.2f} GiB; "
            "free some space or choose another destination (or --dtype bfloat16, half of float32)"
        )
