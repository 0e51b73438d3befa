"""T5 / UMT5 encoder configs: the transformers `T5Config` / `UMT5Config` keys that shape the encoder, with
transformers' defaults.

UMT5 (Wan's UMT5-XXL text encoder) has the same keys and the same meaning as T5; the one architectural
difference, a relative position bias table in every layer instead of block 0's shared one, is not a
config.json key but a fact of the model class, so it is a class variable here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jdiff.errors import InputError
from jdiff.weights.config import preset

# transformers ACT2FN names we implement (see `encoder.ACTIVATIONS`); T5-family checkpoints use only these.
ACTIVATION_NAMES = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    is_decoder: bool = False

    # Named presets: the released text encoder config.json files, and a toy size.
    @classmethod
    def xxl(cls) -> T5Config:
        """T5-v1.1-XXL's encoder as FLUX.1 ships it (text_encoder_2, 4.7B parameters)."""
        return cls(
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        )  # fmt: skip

    @classmethod
    def byt5_glyph(cls) -> T5Config:
        """The glyph encoder of HunyuanVideo-1.5 / HunyuanImage-2.1 (text_encoder_2): google/byt5-small's
        encoder with Glyph-SDXL-v2's weights and its color / font tokens (vocabulary 384 -> 1510). Its attention
        width (6 heads x 64) is narrower than its model width."""
        return cls(
            vocab_size=1510, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> T5Config:
        """A toy encoder: 3 layers, 4 heads of 8, d_ff 37, 8 buckets; `overrides` replace fields."""
        return preset(
            cls,
            dict(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
            overrides,
        )  # fmt: skip

    # Facts of the model class, not config.json keys (`from_dict` never reads class variables).
    model_name: ClassVar[str] = "T5"
    # transformers' T5 gives block 0 the only relative_attention_bias and shares its output with every layer;
    # UMT5 gives each layer its own.
    per_layer_relative_attention_bias: ClassVar[bool] = False

    # config.json files also carry `dense_act_fn` and `is_gated_act`, but transformers' T5Config recomputes
    # both from `feed_forward_proj` on load (so do we): the written values are never read.
    @property
    def dense_act_fn(self) -> str:
        # transformers keeps "gated-gelu" on the tanh approximation for backwards compatibility (T5 v1.1).
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def validate(self) -> None:
        sizes = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
        bad = [f"{k}={getattr(self, k)}" for k in sizes if not getattr(self, k) > 0]
        if bad:
            raise InputError(
                f"{self.model_name} config: {', '.join(bad)} must be positive; fix the text encoder's config.json"
            )
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise InputError(
                f"{self.model_name} config: feed_forward_proj {self.feed_forward_proj!r} should be 'ACT' or 'gated-ACT' "
                "(e.g. 'relu', 'gated-gelu')"
            )
        if self.dense_act_fn not in ACTIVATION_NAMES:
            raise InputError(
                f"{self.model_name} config: activation {self.dense_act_fn!r} (from feed_forward_proj "
                f"{self.feed_forward_proj!r}) is not supported; supported: {', '.join(ACTIVATION_NAMES)}"
            )
        if self.is_decoder:
            raise InputError(
                f"{self.model_name} config: is_decoder=true describes a decoder stack; jdiff implements the encoder"
            )
        # Bidirectional bucketing halves the buckets, then gives half of those to exact offsets: at least one
        # exact bucket, and a log range (max_exact, max_distance) that is not empty.
        max_exact = self.relative_attention_num_buckets // 4
        if max_exact < 1 or self.relative_attention_max_distance <= max_exact:
            raise InputError(
                f"{self.model_name} config: relative_attention_num_buckets={self.relative_attention_num_buckets} must be "
                f">= 4 and relative_attention_max_distance={self.relative_attention_max_distance} must "
                f"exceed num_buckets // 4 = {max_exact}"
            )


@dataclass(frozen=True)
class UMT5Config(T5Config):
    """transformers `UMT5Config`: T5's keys with UMT5's defaults (google/umt5-small); every layer has its own
    relative position bias table."""

    vocab_size: int = 250112
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    feed_forward_proj: str = "gated-gelu"

    # Named presets: the released text encoder config.json files, and a toy size.
    @classmethod
    def xxl(cls) -> UMT5Config:
        """UMT5-XXL's encoder as the Wan2.1 / Wan2.2 checkpoints ship it (text_encoder)."""
        return cls(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> UMT5Config:
        """A toy encoder: 3 layers, 4 heads of 8, d_ff 37, 8 buckets; `overrides` replace fields."""
        return preset(
            cls,
            dict(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
            overrides,
        )  # fmt: skip

    model_name: ClassVar[str] = "UMT5"
    per_layer_relative_attention_bias: ClassVar[bool] = True
