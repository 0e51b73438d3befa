"""Per-model presets (sampling defaults) from `jdiff/configs/*.json` (also reachable as top-level `configs/`).

A model directory may carry `jdiff_preset.json` whose keys override the family preset (the embedded default
model uses this for its small size and step count).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jdiff.errors import InputError

CONFIGS = Path(__file__).parent / "configs"
OVERRIDE = "jdiff_preset.json"


def load_preset(name: str, model_root: Path | None = None) -> dict[str, Any]:
    path = CONFIGS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise InputError(f"unknown preset {name!r}; known: {known}")
    preset = json.loads(path.read_text())
    if model_root is not None and (model_root / OVERRIDE).is_file():
        preset.update(json.loads((model_root / OVERRIDE).read_text()))
    return preset
