"""The model families jdiff runs: one line each.

Each line names the module whose `FAMILY` (a `jdiff.pipelines.family.Family`) declares the family: the
`model_index.json` class names it runs, its pipeline, its component classes and its preset rule. Adding a
family is its folder(s) and one line here (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from functools import cache

from jdiff.errors import InputError

FAMILY_MODULES = (
    "jdiff.pipelines.flux",
    "jdiff.pipelines.wan",
    "jdiff.pipelines.z_image",
    "jdiff.pipelines.flux2",
    "jdiff.pipelines.flux2_klein",
    "jdiff.pipelines.stable_diffusion",
    "jdiff.pipelines.qwen_image",
    "jdiff.pipelines.hunyuan_video15",
)


@cache
def families() -> dict[str, object]:
    """`model_index.json` `_class_name` -> its Family (the family modules imported once)."""
    out = {}
    for module in FAMILY_MODULES:
        family = importlib.import_module(module).FAMILY
        for name in family.pipeline_classes:
            if name in out:
                raise RuntimeError(f"{name} is claimed by both {out[name].name} and {family.name}")
            out[name] = family
    return out


def family_for(class_name: str, root=None):
    """The family running a `model_index.json` `_class_name`.

    Raises:
        InputError: a class name no family runs, listing the supported ones.
    """
    table = families()
    if class_name not in table:
        where = f"{root} holds a " if root is not None else ""
        raise InputError(
            f"{where}{class_name or 'pipeline without _class_name'}, which jdiff does not support; "
            f"supported: {sorted(table)}"
        )
    return table[class_name]


def open_model(path):
    """A model directory (`jdiff.pipelines.model_dir.ModelDir`) with its family resolved from model_index.json.

    Raises:
        InputError: a missing or malformed directory, or a pipeline class no family runs.
    """
    from jdiff.pipelines.model_dir import ModelDir

    model = ModelDir.open(path)
    model.family = family_for(model.pipeline_class, model.root)
    return model
