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


@dataclass(frozen=True)
class HunyuanVideo15VAEConfig:
    """diffusers `AutoencoderKLHunyuanVideo15` config (defaults: diffusers' defaults, the released VAE)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 32
    block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)
    layers_per_block: int = 2
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 4
    downsample_match_channel: bool = True
    upsample_match_channel: bool = True
    scaling_factor: float = 1.03682

    @classmethod
    def hunyuan_video15(cls) -> HunyuanVideo15VAEConfig:
        """The HunyuanVideo-1.5 VAE (every released size): 16x spatial, 4x temporal, 32 latent channels."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> HunyuanVideo15VAEConfig:
        """A toy VAE: widths (8, 16, 16), 1 block per level, 4x spatial and temporal, 4 latent channels."""
        return preset(
            cls,
            dict(
                latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1, spatial_compression_ratio=4,
                temporal_compression_ratio=4,
            ),
            overrides,
        )  # fmt: skip

    @property
    def spatial_levels(self) -> int:
        return self.spatial_compression_ratio.bit_length() - 1

    @property
    def temporal_levels(self) -> int:
        return self.temporal_compression_ratio.bit_length() - 1

    def validate(self) -> None:
        def bad(what: str) -> InputError:
            return InputError(f"HunyuanVideo-1.5 VAE config: {what}; fix the VAE's config.json")

        ch = self.block_out_channels
        for name in ("spatial_compression_ratio", "temporal_compression_ratio"):
            r = getattr(self, name)
            if r < 1 or r & (r - 1):
                raise bad(f"{name} must be a power of two, got {r}")
        if self.temporal_levels > self.spatial_levels:
            raise bad("temporal_compression_ratio must not exceed spatial_compression_ratio")
        if len(ch) <= self.spatial_levels:
            raise bad(
                f"block_out_channels {ch} needs more than log2(spatial_compression_ratio) = "
                f"{self.spatial_levels} levels"
            )
        if self.layers_per_block < 1 or min(ch) < 1 or self.latent_channels < 1:
            raise bad("layers_per_block, block_out_channels and latent_channels must be positive")
        if not (self.downsample_match_channel and self.upsample_match_channel):
            raise bad(
                "downsample_match_channel / upsample_match_channel false is not supported (no released VAE)"
            )
        if ch[-1] % (2 * self.latent_channels):
            raise bad(f"block_out_channels[-1] ({ch[-1]}) must be a multiple of 2 * latent_channels")
        # The resamplers fold 2x2(x2) blocks into channels and average or repeat channel groups.
        for c_in, c_out, factor in self.resamplers():
            if c_out % factor or (factor * c_in) % c_out or c_in % factor or (factor * c_out) % c_in:
                raise bad(
                    f"block_out_channels {ch}: a {factor}x resampler cannot map {c_in} to {c_out} channels"
                )

    def resamplers(self) -> list[tuple[int, int, int]]:
        """(in, out, folding factor) of every encoder and decoder resampler."""
        ch, out = self.block_out_channels, []
        for i in range(self.spatial_levels):
            down_t = i >= self.spatial_levels - self.temporal_levels
            out.append((ch[i], ch[i + 1], 8 if down_t else 4))
            out.append((ch[::-1][i], ch[::-1][i + 1], 8 if i < self.temporal_levels else 4))
        return out
