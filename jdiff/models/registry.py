"""Reference class names (as `model_index.json` names them) -> jdiff component specs."""

from __future__ import annotations

import importlib

from jdiff.errors import InputError
from jdiff.weights.loading import ComponentSpec

# class name -> module holding its SPEC (imported lazily: loading FLUX need not import Wan).
_SPECS = {
    "FluxTransformer2DModel": "jdiff.models.flux.plan",
    "CLIPTextModel": "jdiff.models.clip.plan",
    "T5EncoderModel": "jdiff.models.t5.plan",
    "AutoencoderKL": "jdiff.models.autoencoder_kl.plan",
    "WanTransformer3DModel": "jdiff.models.wan.plan",
    "AutoencoderKLWan": "jdiff.models.wan_vae.plan",
    "UMT5EncoderModel": "jdiff.models.t5.umt5_plan",
    "CLIPVisionModel": "jdiff.models.clip.vision_plan",
}


def spec_for(class_name: str, *, component: str) -> ComponentSpec:
    if class_name not in _SPECS:
        raise InputError(
            f"component {component!r} is a {class_name}, which jdiff does not support; supported: {sorted(_SPECS)}"
        )
    return importlib.import_module(_SPECS[class_name]).SPEC
