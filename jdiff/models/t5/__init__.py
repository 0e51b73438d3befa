"""T5 encoder (transformers `T5EncoderModel`): FLUX.1's T5-v1.1-XXL text encoder."""

from jdiff.models.t5.config import T5Config
from jdiff.models.t5.encoder import T5EncoderModel

__all__ = ["T5Config", "T5EncoderModel"]
