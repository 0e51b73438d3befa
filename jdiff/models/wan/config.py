"""WanTransformer3DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset


@dataclass(frozen=True)
class WanTransformerConfig:
    """diffusers `WanTransformer3DModel` config (defaults: diffusers' defaults, i.e. Wan2.1-T2V-14B).

    `qk_norm` is accepted only as "rms_norm_across_heads": diffusers ignores the key and always normalises
    q and k over all heads, which is what every released Wan checkpoint was trained with.
    """

    patch_size: tuple[int, ...] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    # Named presets: the released transformer/config.json files (diffusers' convert_wan_to_diffusers.py), and
    # a toy size. Wan2.2-T2V-A14B's two experts are both `t2v_14b`, Wan2.2-I2V-A14B's both `i2v_a14b`.
    @classmethod
    def t2v_1_3b(cls) -> WanTransformerConfig:
        """Wan2.1-T2V-1.3B."""
        return cls(num_attention_heads=12, num_layers=30, ffn_dim=8960)

    @classmethod
    def t2v_14b(cls) -> WanTransformerConfig:
        """Wan2.1-T2V-14B (and each expert of Wan2.2-T2V-A14B)."""
        return cls()

    @classmethod
    def i2v_14b(cls) -> WanTransformerConfig:
        """Wan2.1-I2V-14B-480P / 720P: image latents concatenated, CLIP image tokens cross-attended."""
        return cls(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)

    @classmethod
    def i2v_a14b(cls) -> WanTransformerConfig:
        """Each expert of Wan2.2-I2V-A14B: image latents concatenated, no image encoder."""
        return cls(in_channels=36)

    @classmethod
    def ti2v_5b(cls) -> WanTransformerConfig:
        """Wan2.2-TI2V-5B (48-channel latents of the Wan2.2 VAE)."""
        return cls(num_attention_heads=24, num_layers=30, ffn_dim=14336, in_channels=48, out_channels=48)

    @classmethod
    def tiny(cls, **overrides) -> WanTransformerConfig:
        """A toy Wan2.1: 2 layers, 2 heads of 12, 4 latent channels; `overrides` replace fields."""
        return preset(
            cls,
            dict(
                num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
                ffn_dim=32, num_layers=2, rope_max_seq_len=32,
            ),
            overrides,
        )  # fmt: skip

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        """Latent channels out (diffusers: `out_channels or in_channels`)."""
        return self.out_channels or self.in_channels

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head-dim split of the rotary embedding over (frames, height, width), as diffusers' WanRotaryPosEmbed."""
        h = w = 2 * (self.attention_head_dim // 6)
        return self.attention_head_dim - h - w, h, w

    def validate(self) -> None:
        def bad(what: str) -> InputError:
            return InputError(f"Wan transformer config: {what}; fix the transformer's config.json")

        if len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size):
            raise bad(f"patch_size must be 3 positive ints (t, h, w), got {self.patch_size}")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "text_dim", "ffn_dim"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise bad(f"num_layers must be >= 0, got {self.num_layers}")
        if self.freq_dim < 2 or self.freq_dim % 2:
            raise bad(f"freq_dim must be even and >= 2, got {self.freq_dim}")
        if self.attention_head_dim % 2:
            # The rotary split (t, h, w) = (H - 4*(H//6), 2*(H//6), 2*(H//6)) needs an even frame part.
            raise bad(
                f"attention_head_dim must be even for the (t, h, w) rotary split, got {self.attention_head_dim}"
            )
        if self.qk_norm != "rms_norm_across_heads":
            raise bad(f"qk_norm {self.qk_norm!r} is not supported, expected 'rms_norm_across_heads'")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise bad(
                f"image_dim ({self.image_dim}) and added_kv_proj_dim ({self.added_kv_proj_dim}) must be both set "
                "(I2V image conditioning) or both null"
            )
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            raise bad(
                f"added_kv_proj_dim must equal num_attention_heads * attention_head_dim = {self.inner_dim} "
                f"(it projects the image embedder's output), got {self.added_kv_proj_dim}"
            )
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            raise bad(f"pos_embed_seq_len ({self.pos_embed_seq_len}) needs the image branch (image_dim)")
        if self.pos_embed_seq_len is not None and self.pos_embed_seq_len % 2:
            raise bad(f"pos_embed_seq_len must be even (two images' tokens), got {self.pos_embed_seq_len}")
        if self.rope_max_seq_len < 1:
            raise bad(f"rope_max_seq_len must be positive, got {self.rope_max_seq_len}")
