"""HunyuanVideo15Transformer3DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset


@dataclass(frozen=True)
class HunyuanVideo15Config:
    """diffusers `HunyuanVideo15Transformer3DModel` config (defaults: diffusers' defaults, the 480p I2V model).

    `target_size` (the pixel size the pipeline's aspect buckets are built around) and `task_type` ("t2v" or
    "i2v") are pipeline settings stored with the transformer; the module does not read them.
    """

    in_channels: int = 65
    out_channels: int | None = 32
    num_attention_heads: int = 16
    attention_head_dim: int = 128
    num_layers: int = 54
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 1
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    text_embed_dim: int = 3584
    text_embed_2_dim: int = 1472
    image_embed_dim: int = 1152
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, ...] = (16, 56, 56)
    target_size: int = 640
    task_type: str = "i2v"
    use_meanflow: bool = False

    # Named presets: the released transformer/config.json files (diffusers'
    # scripts/convert_hunyuan_video1_5_to_diffusers.py `TRANSFORMER_CONFIGS`); every released size is the same
    # 8.3B network, they differ in the pipeline settings only. The step-distilled checkpoints share these.
    @classmethod
    def t2v_480p(cls) -> HunyuanVideo15Config:
        """HunyuanVideo-1.5 480p text-to-video (and its step-distilled variant)."""
        return cls(target_size=640, task_type="t2v")

    @classmethod
    def i2v_480p(cls) -> HunyuanVideo15Config:
        """HunyuanVideo-1.5 480p image-to-video."""
        return cls(target_size=640, task_type="i2v")

    @classmethod
    def t2v_720p(cls) -> HunyuanVideo15Config:
        """HunyuanVideo-1.5 720p text-to-video."""
        return cls(target_size=960, task_type="t2v")

    @classmethod
    def i2v_720p(cls) -> HunyuanVideo15Config:
        """HunyuanVideo-1.5 720p image-to-video."""
        return cls(target_size=960, task_type="i2v")

    @classmethod
    def tiny(cls, **overrides) -> HunyuanVideo15Config:
        """A toy model: 2 layers, 3 heads of 16 (rope axes 4, 6, 6), 4-channel latents (+ 4 + 1 condition
        channels); `overrides` replace fields."""
        return preset(
            cls,
            dict(
                in_channels=9, out_channels=4, num_attention_heads=3, attention_head_dim=16, num_layers=2,
                num_refiner_layers=1, text_embed_dim=20, text_embed_2_dim=12, image_embed_dim=14,
                rope_axes_dim=(4, 6, 6),
            ),
            overrides,
        )  # fmt: skip

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        """FFN hidden width (diffusers' `FeedForward`: int(D * mlp_ratio))."""
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def output_channels(self) -> int:
        """Latent channels out (diffusers: `out_channels or in_channels`)."""
        return self.out_channels or self.in_channels

    @property
    def patch(self) -> tuple[int, int, int]:
        """(pt, ph, pw)."""
        return self.patch_size_t, self.patch_size, self.patch_size

    def validate(self) -> None:
        def bad(what: str) -> InputError:
            return InputError(
                f"HunyuanVideo-1.5 transformer config: {what}; fix the transformer's config.json"
            )

        for name in (
            "in_channels", "num_attention_heads", "attention_head_dim", "patch_size", "patch_size_t",
            "text_embed_dim", "text_embed_2_dim", "image_embed_dim",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_layers < 0 or self.num_refiner_layers < 0:
            raise bad(f"num_layers ({self.num_layers}) and num_refiner_layers must be >= 0")
        if len(self.rope_axes_dim) != 3 or any(d < 2 or d % 2 for d in self.rope_axes_dim):
            raise bad(f"rope_axes_dim must be 3 positive even sizes (t, h, w), got {self.rope_axes_dim}")
        if sum(self.rope_axes_dim) != self.attention_head_dim:
            raise bad(
                f"rope_axes_dim {self.rope_axes_dim} must sum to attention_head_dim {self.attention_head_dim}"
            )
        if self.qk_norm != "rms_norm":
            raise bad(f"qk_norm {self.qk_norm!r} is not supported, expected 'rms_norm'")
        if self.mlp_ratio <= 0:
            raise bad(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.task_type not in ("t2v", "i2v"):
            raise bad(f"task_type must be 't2v' or 'i2v', got {self.task_type!r}")
