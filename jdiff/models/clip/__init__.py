"""CLIP text encoder (transformers `CLIPTextModel`), FLUX.1's pooled-prompt encoder."""

from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.clip.text_encoder import CLIPTextModel, pool_eos

__all__ = ["CLIPTextConfig", "CLIPTextModel", "pool_eos"]
