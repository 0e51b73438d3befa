"""Per-model presets (sampling defaults) from `jdiff/configs/*.json` (also reachable as top-level `configs/`).

A preset's height and width are the size the model was trained at: the default, and what the size warnings
compare against (`pipelines.base.check_trained_size`). Where they come from, later ones winning:
  1. the family preset (`configs/flux-dev.json`: 1024x1024, ...);
  2. for a small custom model, its own sample size: a FLUX VAE config's `sample_size` (pixels) below the
     family size becomes the default height and width (rounded down to what the model divides by). Real
     FLUX.1 VAEs say 1024, so they keep the family's;
  3. `jdiff_preset.json` in the model directory, whose keys override everything (the embedded default model
     sets its 64x64 size, step count and `trained_size_only`: it draws well at 64x64 alone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jdiff.errors import InputError

CONFIGS = Path(__file__).parent / "configs"
OVERRIDE = "jdiff_preset.json"


def load_preset(
    name: str, model_root: Path | None = None, *, sample_size: Any = None, multiple: int = 1
) -> dict[str, Any]:
    """The preset `name`, adapted to the model (see the module docstring).

    Args:
        name: a file stem in `configs/` (e.g. "flux-dev").
        model_root: the model directory, whose `jdiff_preset.json` (if any) overrides keys.
        sample_size: the model's own training size in pixels (an int, or (height, width)), if it says one.
        multiple: what height and width must divide by, for the size taken from `sample_size`.
    """
    path = CONFIGS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise InputError(f"unknown preset {name!r}; known: {known}")
    preset = json.loads(path.read_text())
    own = _own_size(sample_size, multiple)
    if own is not None and own[0] * own[1] < preset["height"] * preset["width"]:
        preset["height"], preset["width"] = own
    if model_root is not None and (model_root / OVERRIDE).is_file():
        preset.update(json.loads((model_root / OVERRIDE).read_text()))
    return preset


def _own_size(sample_size: Any, multiple: int) -> tuple[int, int] | None:
    """(height, width) from a config's `sample_size`, rounded down to `multiple`; None if it gives none."""
    if isinstance(sample_size, int) and not isinstance(sample_size, bool):
        sample_size = (sample_size, sample_size)
    if not (isinstance(sample_size, list | tuple) and len(sample_size) == 2):
        return None
    if not all(isinstance(v, int) and v >= multiple > 0 for v in sample_size):
        return None
    h, w = sample_size
    return h // multiple * multiple, w // multiple * multiple
