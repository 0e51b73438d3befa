"""The Qwen2.5-VL config: transformers' `Qwen2_5_VLConfig` keys, read from either layout.

Published checkpoints (Qwen2.5-VL-7B-Instruct, Qwen-Image's text_encoder) write the language model's keys at
the top level, with RoPE as `rope_theta` + `rope_scaling: {type: "mrope", mrope_section: [...]}` and the vision
tower under `vision_config`. transformers 5 saves `text_config` (with `rope_parameters`) and `vision_config`
nested. Both are read; a nested `text_config` wins over top-level keys. Once read, the config holds only
hashable values: RoPE is folded into `rope_theta` + `mrope_section`, `text_config` is merged into the
top-level fields and dropped, and `vision_config` becomes a `Qwen2_5_VLVisionConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.models.llm.config import DecoderConfig, rope_theta_of
from jdiff.weights.config import preset


@dataclass(frozen=True)
class Qwen2_5_VLVisionConfig:
    """transformers `Qwen2_5_VLVisionConfig` keys (`in_chans` is the published spelling of in_channels)."""

    depth: int = 32
    hidden_size: int = 3584
    hidden_act: str = "silu"
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    in_chans: int | None = None
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    tokens_per_second: int = 4
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)

    def __post_init__(self):
        if self.in_chans is not None:
            object.__setattr__(self, "in_channels", self.in_chans)
            object.__setattr__(self, "in_chans", None)
        object.__setattr__(self, "fullatt_block_indexes", tuple(self.fullatt_block_indexes))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: channels x temporal patch x patch x patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def validate(self) -> None:
        for key in ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size", "spatial_merge_size",
                    "temporal_patch_size", "window_size", "out_hidden_size", "in_channels"):  # fmt: skip
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(
                    f"Qwen2.5-VL vision config: {key} should be a positive integer, got {value!r}"
                )
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise InputError(
                f"Qwen2.5-VL vision config: hidden_size {self.hidden_size} should split into {self.num_heads} "
                "heads whose width is a multiple of 4 (2D rotary embedding)"
            )
        if self.hidden_act != "silu":
            raise InputError(
                f"Qwen2.5-VL vision config: hidden_act {self.hidden_act!r} is not supported (silu)"
            )
        unit = self.spatial_merge_size * self.patch_size
        if self.window_size < unit:
            raise InputError(
                f"Qwen2.5-VL vision config: window_size {self.window_size} should be at least "
                f"spatial_merge_size * patch_size = {unit} (one merged token)"
            )
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise InputError(
                f"Qwen2.5-VL vision config: fullatt_block_indexes {bad} outside 0..{self.depth - 1}"
            )


@dataclass(frozen=True)
class Qwen2_5_VLConfig:
    # The language model's keys (top level in published checkpoints; `text_config` in transformers 5).
    vocab_size: int = 152064
    hidden_size: int = 8192
    intermediate_size: int = 29568
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int | None = 8
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    use_sliding_window: bool = False
    rope_theta: float | None = None
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None
    # Not a config.json key: read from rope_scaling / rope_parameters (transformers' default when absent).
    mrope_section: tuple[int, ...] = (16, 24, 24)
    tie_word_embeddings: bool = False
    text_config: dict | None = None
    vision_config: Qwen2_5_VLVisionConfig | dict | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    def __post_init__(self):
        if self.text_config is not None:
            names = {f.name for f in dataclasses.fields(self)} - {"text_config", "vision_config"}
            for k, v in self.text_config.items():
                if k in names:
                    object.__setattr__(self, k, tuple(v) if isinstance(v, list) else v)
            object.__setattr__(self, "text_config", None)
        theta, params = rope_theta_of(
            "Qwen2.5-VL", self.rope_theta, self.rope_parameters, self.rope_scaling, 1000000.0
        )
        object.__setattr__(self, "rope_theta", theta)
        object.__setattr__(self, "mrope_section", tuple(params.get("mrope_section", self.mrope_section)))
        object.__setattr__(self, "rope_scaling", None)
        object.__setattr__(self, "rope_parameters", None)
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        vision = self.vision_config
        if vision is None or isinstance(vision, dict):
            names = {f.name for f in dataclasses.fields(Qwen2_5_VLVisionConfig)}
            vision = Qwen2_5_VLVisionConfig(**{k: v for k, v in (vision or {}).items() if k in names})
            object.__setattr__(self, "vision_config", vision)

    # Named presets: the released config.json files, and a toy size.
    @classmethod
    def qwen_image_7b(cls) -> Qwen2_5_VLConfig:
        """Qwen2.5-VL-7B-Instruct: the text encoder of Qwen-Image and Qwen-Image-Edit (all releases)."""
        return cls(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_theta=1000000.0, mrope_section=(16, 24, 24),
            vision_config=Qwen2_5_VLVisionConfig(
                depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                fullatt_block_indexes=(7, 15, 23, 31),
            ),
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> Qwen2_5_VLConfig:
        """A toy Qwen2.5-VL: language model of 3 layers, 9 query heads over 3 key/value heads of 8, mrope
        (1, 1, 2); vision tower of 4 blocks (1 and 3 full attention), 3 heads of 8, patch 4, merge 2,
        windows of 16 pixels (2x2 merged tokens); `overrides` replace top-level fields."""
        return preset(
            cls,
            dict(vocab_size=1000, hidden_size=72, intermediate_size=37, num_hidden_layers=3, num_attention_heads=9,
                 num_key_value_heads=3, rope_theta=10000.0, mrope_section=(1, 1, 2), max_position_embeddings=512,
                 rms_norm_eps=1e-6, image_token_id=999, video_token_id=998, vision_start_token_id=997,
                 vision_end_token_id=996,
                 vision_config=Qwen2_5_VLVisionConfig(
                     depth=4, hidden_size=24, intermediate_size=29, num_heads=3, out_hidden_size=72, patch_size=4,
                     spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=(1, 3),
                 )),
            overrides,
        )  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def decoder_config(self) -> DecoderConfig:
        """The language model: q/k/v bias, no o bias, head_dim = hidden_size // heads, mrope."""
        return DecoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            qkv_bias=True,
            mrope_section=self.mrope_section,
            hidden_act=self.hidden_act,
            name="Qwen2.5-VL",
        )

    def validate(self) -> None:
        """Raises InputError naming the first value jdiff does not implement."""
        if self.use_sliding_window:
            raise InputError(
                "Qwen2.5-VL config: use_sliding_window=true is not implemented; the released checkpoints set it false"
            )
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"Qwen2.5-VL config: hidden_size {self.hidden_size} does not split into "
                f"{self.num_attention_heads} attention heads"
            )
        self.decoder_config().validate()
        self.vision_config.validate()
        if self.vision_config.out_hidden_size != self.hidden_size:
            raise InputError(
                f"Qwen2.5-VL config: vision_config.out_hidden_size {self.vision_config.out_hidden_size} should equal "
                f"the language model's hidden_size {self.hidden_size} (image features replace token embeddings)"
            )
