"""Scheduler configs: diffusers `scheduler_config.json` dicts read into frozen dataclasses, checked.

A solver's config dataclass names every keyword argument of the diffusers class's constructor (a test holds
each one to diffusers' signature), so nothing diffusers would honour is silently dropped: keys diffusers
ignores (`_class_name`, `_diffusers_version`, keys of other scheduler classes) are ignored here too, and a
modelled key that jdiff does not implement is refused when it is set to anything but the value jdiff does.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from jdiff.errors import InputError

C = TypeVar("C")

FIX_IN = "in scheduler/scheduler_config.json"


def config_from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Builds the scheduler config `cls` from a `scheduler_config.json` dict and validates it.

    Lists become tuples so configs stay hashable (they are static arguments of jitted functions). This is
    `jdiff.weights.config.from_dict` for samplers, which import nothing from the models.

    Raises:
        InputError: `d` is not a dict, or `cls.validate()` refuses a value.
    """
    if not isinstance(d, dict):
        raise InputError(f"a scheduler config must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg


def check_types(cfg) -> None:
    """Refuses config values of the wrong JSON type (a string shift would fail deep inside numpy instead).

    Raises:
        InputError: naming the key, the expected type and the value.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _conforms(value, hints[f.name]):
            raise InputError(
                f"scheduler config key {f.name!r} must be {_describe(hints[f.name])}, got {value!r}; fix it "
                f"{FIX_IN}"
            )


def refuse_unsupported(cfg, scheduler: str, supported: dict[str, Any]) -> None:
    """Refuses keys set to anything but the one value jdiff implements for them.

    Args:
        cfg: the config dataclass.
        scheduler: the diffusers class name, for the message.
        supported: key -> the value jdiff implements (diffusers' default for every key so far).

    Raises:
        InputError: naming every offending key, its value and the value to set instead.
    """
    bad = [k for k, want in supported.items() if getattr(cfg, k) != want]
    if bad:
        got = ", ".join(f"{k}={_json(getattr(cfg, k))}" for k in bad)
        fix = ", ".join(f"{k}={_json(supported[k])}" for k in bad)
        raise InputError(
            f"scheduler config sets {got}, which jdiff's {scheduler} does not support; set {fix} {FIX_IN}"
        )


def _json(value) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _conforms(value, tp) -> bool:
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(_conforms(value, t) for t in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # JSON writes 1.0 as 1
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is tuple:
        (item, _) = typing.get_args(tp)  # tuple[X, ...]: configs hold homogeneous lists only
        return isinstance(value, tuple) and all(_conforms(v, item) for v in value)
    raise TypeError(f"config field type {tp} is not one check_types knows")


def _describe(tp) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }.get(tp, str(tp))
