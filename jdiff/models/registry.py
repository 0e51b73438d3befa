"""Reference class names (as `model_index.json` names them) -> jdiff component specs."""

from __future__ import annotations

import importlib

from jdiff.errors import InputError
from jdiff.models.loading import ComponentSpec

# class name -> module holding its SPEC (imported lazily: loading FLUX need not import Wan).
_SPECS = {
    "FluxTransformer2DModel": "jdiff.convert.flux",
    "CLIPTextModel": "jdiff.convert.clip",
    "T5EncoderModel": "jdiff.convert.t5",
    "AutoencoderKL": "jdiff.convert.autoencoder_kl",
    "WanTransformer3DModel": "jdiff.convert.wan",
    "AutoencoderKLWan": "jdiff.convert.wan_vae",
    "UMT5EncoderModel": "jdiff.convert.umt5",
    "CLIPVisionModel": "jdiff.convert.clip_vision",
}


def spec_for(class_name: str, *, component: str) -> ComponentSpec:
    if class_name not in _SPECS:
        raise InputError(
            f"component {component!r} is a {class_name}, which jdiff does not support; supported: {sorted(_SPECS)}"
        )
    return importlib.import_module(_SPECS[class_name]).SPEC
