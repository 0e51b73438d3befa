"""T5 encoders: transformers `T5EncoderModel` (FLUX.1's T5-v1.1-XXL) and `UMT5EncoderModel` (Wan's UMT5-XXL)."""

from jdiff.models.t5.config import T5Config, UMT5Config
from jdiff.models.t5.encoder import T5EncoderModel, UMT5EncoderModel

__all__ = ["T5Config", "T5EncoderModel", "UMT5Config", "UMT5EncoderModel"]
