"""Shared building blocks: linear layers with logical axes, norms, attention, embeddings, RoPE."""

from jdiff.layers.attention import dot_product_attention
from jdiff.layers.linear import Conv, Linear
from jdiff.layers.norms import GroupNorm, LayerNorm, RMSNorm

__all__ = ["Conv", "GroupNorm", "LayerNorm", "Linear", "RMSNorm", "dot_product_attention"]
