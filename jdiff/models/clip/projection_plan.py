"""Conversion plan for transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`).

The text tower maps as in `jdiff.models.clip.plan` (the same rules, `text_model.` prefix optional); the
bias-free `text_projection.weight` is a default-rule linear. transformers 4 and 5 both save this class with the
`text_model.` prefix.
"""

from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.clip.plan import PLAN
from jdiff.models.clip.text_encoder import CLIPTextModelWithProjection
from jdiff.weights.loading import ComponentSpec

SPEC = ComponentSpec("CLIPTextModelWithProjection", CLIPTextConfig, CLIPTextModelWithProjection, PLAN)
