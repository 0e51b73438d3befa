"""Config of diffusers' `UNet2DConditionModel` (SD 1.5, SD 2.x, SDXL); fields are its config.json keys.

Per-level keys (`attention_head_dim`, `cross_attention_dim`, `layers_per_block`, `transformer_layers_per_block`,
`only_cross_attention`) take an int (or bool) for every level or one entry a level, as in diffusers; the
`*_at(i)` helpers resolve them. diffusers' naming quirk is kept: `attention_head_dim` is the number of heads
per transformer (diffusers issue 2011), and `num_attention_heads` must stay null.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset

CROSS_DOWN, DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID = "UNetMidBlock2DCrossAttn"
ACTIVATIONS = ("silu", "swish")
# Bounds of the conversion plan's stacked-transformer prefixes (jdiff/models/unet/plan.py): levels, and
# resnets (hence transformers) per block; SDXL has 3 levels and 3 resnets per up block.
MAX_LEVELS, MAX_ATTENTIONS = 6, 8


def _frozen(value):
    """Nested JSON lists as nested tuples (configs are hashable static data)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def _per_level(value, n: int, key: str) -> tuple:
    if isinstance(value, tuple):
        if len(value) != n:
            raise InputError(
                f"UNet config: {key} has {len(value)} entries for {n} down blocks; give one per block or one value"
            )
        return value
    return (value,) * n


@dataclass(frozen=True)
class UNet2DConditionConfig:
    """diffusers `UNet2DConditionModel` config; defaults are diffusers' constructor defaults.

    Keys this implementation models but supports one value of (class embeddings, encoder_hid_proj, fourier
    time embeddings, scale-shift resnets, ...) are refused by `validate()` naming the key.
    """

    sample_size: int | tuple[int, ...] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, DOWN)
    mid_block_type: str | None = MID
    up_block_types: tuple[str, ...] = (UP, CROSS_UP, CROSS_UP, CROSS_UP)
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple = 1
    reverse_transformer_layers_per_block: tuple | None = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False  # float32 attention in fp16; jdiff's softmax statistics are float32 anyway
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: bool | None = None
    cross_attention_norm: str | None = None

    def __post_init__(self):
        for key in ("transformer_layers_per_block", "reverse_transformer_layers_per_block"):
            object.__setattr__(self, key, _frozen(getattr(self, key)))

    # Named presets: the released unet/config.json files, and a toy size.
    @classmethod
    def sd15(cls) -> UNet2DConditionConfig:
        """Stable Diffusion 1.5 (860M): 8 heads everywhere, CLIP-L text (768), 1x1-conv projections."""
        return cls(sample_size=64, cross_attention_dim=768, attention_head_dim=8)

    @classmethod
    def sd2(cls) -> UNet2DConditionConfig:
        """Stable Diffusion 2.1 (865M, 768px, v-prediction): heads per level, OpenCLIP-H text (1024), linear
        projections, float32 attention upcast."""
        return cls(
            sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
            upcast_attention=True,
        )  # fmt: skip

    @classmethod
    def sdxl(cls) -> UNet2DConditionConfig:
        """SDXL base 1.0 (2.6B): three levels, 1/2/10 transformer layers, two text encoders (2048), and the
        text_time added embedding of pooled text (1280) and six size/crop numbers (6 x 256)."""
        return cls(
            sample_size=128, down_block_types=(DOWN, CROSS_DOWN, CROSS_DOWN), up_block_types=(CROSS_UP, CROSS_UP, UP),
            block_out_channels=(320, 640, 1280), cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> UNet2DConditionConfig:
        """A toy SD 1.5: two levels of 24 and 48 channels, 3 heads, 1 layer per block, cross-attention 32;
        `overrides` replace fields."""
        return preset(
            cls,
            dict(
                sample_size=8, down_block_types=(CROSS_DOWN, DOWN), up_block_types=(UP, CROSS_UP),
                block_out_channels=(24, 48), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                attention_head_dim=3,
            ),
            overrides,
        )  # fmt: skip

    # ---- per-level values ------------------------------------------------------------------------------------

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    def heads_at(self, i: int) -> int:
        """Attention heads of level i's transformers (diffusers reads them from `attention_head_dim`)."""
        return _per_level(self.attention_head_dim, self.levels, "attention_head_dim")[i]

    def cross_dim_at(self, i: int) -> int:
        return _per_level(self.cross_attention_dim, self.levels, "cross_attention_dim")[i]

    def layers_at(self, i: int) -> int:
        return _per_level(self.layers_per_block, self.levels, "layers_per_block")[i]

    def transformer_layers_at(self, i: int) -> tuple[int, ...]:
        """Transformer depth of each attention of down level i (one entry per resnet)."""
        t = _per_level(self.transformer_layers_per_block, self.levels, "transformer_layers_per_block")[i]
        return t if isinstance(t, tuple) else (t,) * self.layers_at(i)

    def up_transformer_layers_at(self, i: int) -> tuple[int, ...]:
        """Transformer depth of each attention of up block i (levels reversed; one more resnet a level)."""
        n = self.layers_at(self.levels - 1 - i) + 1
        if self.reverse_transformer_layers_per_block is not None:
            t = self.reverse_transformer_layers_per_block[i]
        else:
            t = _per_level(self.transformer_layers_per_block, self.levels, "transformer_layers_per_block")
            t = t[self.levels - 1 - i]
        return t if isinstance(t, tuple) else (t,) * n

    @property
    def mid_transformer_layers(self) -> int:
        t = _per_level(self.transformer_layers_per_block, self.levels, "transformer_layers_per_block")[-1]
        return t[0] if isinstance(t, tuple) else t

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    def validate(self) -> None:
        """Rejects values this implementation does not model.

        Raises:
            InputError: naming the key, the value got and what is supported.
        """
        fix = "; jdiff's UNet2DConditionModel runs the SD 1.5 / SD 2.x / SDXL layout"
        n = self.levels
        if n < 1:
            raise InputError("UNet config: block_out_channels is empty; expected one entry per level")
        if n > MAX_LEVELS or any(self.layers_at(i) + 1 > MAX_ATTENTIONS for i in range(n)):
            raise InputError(
                f"UNet config: {n} levels of {_per_level(self.layers_per_block, n, 'layers_per_block')} layers; "
                f"jdiff's UNet plan covers up to {MAX_LEVELS} levels of {MAX_ATTENTIONS - 1} layers"
            )
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise InputError(
                f"UNet config: {len(self.down_block_types)} down and {len(self.up_block_types)} up block types for "
                f"{n} block_out_channels; expected one of each per level"
            )
        bad = sorted({t for t in self.down_block_types if t not in (CROSS_DOWN, DOWN)})
        if bad:
            raise InputError(
                f"UNet config: down_block_types {bad} not supported; expected {CROSS_DOWN} or {DOWN}{fix}"
            )
        bad = sorted({t for t in self.up_block_types if t not in (CROSS_UP, UP)})
        if bad:
            raise InputError(
                f"UNet config: up_block_types {bad} not supported; expected {CROSS_UP} or {UP}{fix}"
            )
        if self.mid_block_type not in (MID, None):
            raise InputError(
                f"UNet config: mid_block_type {self.mid_block_type!r} not supported; expected {MID!r}{fix}"
            )
        if str(self.act_fn).lower() not in ACTIVATIONS:
            raise InputError(
                f"UNet config: act_fn {self.act_fn!r} not supported; expected one of {ACTIVATIONS}"
            )
        if self.num_attention_heads is not None:
            raise InputError(
                "UNet config: num_attention_heads must be null (diffusers refuses it too: heads come from "
                "attention_head_dim)"
            )
        if self.norm_num_groups is None:
            raise InputError(f"UNet config: norm_num_groups null (no output norm) not supported{fix}")
        unsupported = {
            "class_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
            "dual_cross_attention": False, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
            "time_embedding_type": "positional", "time_embedding_act_fn": None, "timestep_post_act": None,
            "time_cond_proj_dim": None, "attention_type": "default", "class_embeddings_concat": False,
            "cross_attention_norm": None, "center_input_sample": False,
        }  # fmt: skip
        for key, want in unsupported.items():
            if getattr(self, key) != want:
                raise InputError(
                    f"UNet config: {key}={getattr(self, key)!r} not supported; expected {want!r}{fix}"
                )
        if self.addition_embed_type not in (None, "text_time"):
            raise InputError(
                f"UNet config: addition_embed_type {self.addition_embed_type!r} not supported; expected null or "
                f"'text_time' (SDXL){fix}"
            )
        if self.addition_embed_type == "text_time" and (
            self.addition_time_embed_dim is None or self.projection_class_embeddings_input_dim is None
        ):
            raise InputError(
                "UNet config: addition_embed_type 'text_time' needs addition_time_embed_dim and "
                "projection_class_embeddings_input_dim"
            )
        if (
            any(_per_level(self.only_cross_attention, n, "only_cross_attention"))
            or self.mid_block_only_cross_attention
        ):
            raise InputError(f"UNet config: only_cross_attention not supported; expected false{fix}")
        for k in (self.conv_in_kernel, self.conv_out_kernel):
            if k % 2 == 0:
                raise InputError(f"UNet config: conv kernels must be odd, got {k}")
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise InputError(
                    f"UNet config: block_out_channels[{i}]={c} does not split into norm_num_groups="
                    f"{self.norm_num_groups} groups"
                )
            if c % self.heads_at(i):
                raise InputError(
                    f"UNet config: block_out_channels[{i}]={c} does not split into {self.heads_at(i)} heads "
                    "(attention_head_dim); fix attention_head_dim"
                )
            self.cross_dim_at(i)
            if len(self.transformer_layers_at(i)) != self.layers_at(i):
                raise InputError(f"UNet config: transformer_layers_per_block[{i}] needs one entry per resnet")
        if self.reverse_transformer_layers_per_block is None and any(
            isinstance(t, tuple)
            for t in _per_level(self.transformer_layers_per_block, n, "transformer_layers_per_block")
        ):
            raise InputError(
                "UNet config: nested transformer_layers_per_block needs reverse_transformer_layers_per_block "
                "(as diffusers requires)"
            )
