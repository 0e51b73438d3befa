"""Conversion spec of HunyuanVideo-1.5's `text_encoder/` (transformers `Qwen2_5_VLTextModel`), under the name
`SPEC` that a family's components map reads."""

from jdiff.models.hunyuan_video15.text import TEXT_SPEC as SPEC

__all__ = ["SPEC"]
