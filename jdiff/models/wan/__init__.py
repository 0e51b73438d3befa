"""Wan2.1 / Wan2.2 video DiT (diffusers `WanTransformer3DModel`): T2V 1.3B/14B, I2V-14B, TI2V-5B, A14B."""

from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan.rope import wan_rope_tables
from jdiff.models.wan.transformer import WanTransformer3DModel

__all__ = ["WanTransformer3DModel", "WanTransformerConfig", "wan_rope_tables"]
