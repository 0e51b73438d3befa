"""Frozen config dataclasses read from reference `config.json` files.

Field names are the reference keys. Keys we do not model are ignored (transformers configs carry dozens of
training-only keys); keys we model but whose value we do not support must be rejected by the family's
`validate()`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from jdiff.errors import InputError

C = TypeVar("C")


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Builds `cls` from a config dict, keeping known keys; lists become tuples so configs stay hashable."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; is the model directory complete?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def to_dict(cfg) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def preset(cls: type[C], fields: dict[str, Any], overrides: dict[str, Any]) -> C:
    """A named preset of a config class: `fields` with `overrides` on top, validated like a config.json."""
    return from_dict(cls, {**fields, **overrides})
