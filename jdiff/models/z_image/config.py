"""ZImageTransformer2DModel config: the diffusers config.json keys."""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.weights.config import preset

# diffusers' module constants: the AdaLN input width cap and the length every token group is padded to.
ADALN_EMBED_DIM = 256
SEQ_MULTI_OF = 32


@dataclass(frozen=True)
class ZImageConfig:
    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    n_kv_heads: int = 30  # unused by diffusers' attention (as many key/value heads as query heads)
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    siglip_feat_dim: int | None = None
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: tuple[int, ...] = (32, 48, 48)
    axes_lens: tuple[int, ...] = (1024, 512, 512)

    # Named presets: the released transformer/config.json, and a toy size for tests.
    @classmethod
    def turbo(cls) -> ZImageConfig:
        """Z-Image-Turbo (6.15B parameters; the undistilled Z-Image has the same transformer shape)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> ZImageConfig:
        """A toy Z-Image: 2 main + 1 + 1 refiner blocks, 3 heads of 16, rope axes (4, 6, 6)."""
        return preset(
            cls,
            dict(
                in_channels=4, dim=48, n_layers=2, n_refiner_layers=1, n_heads=3, n_kv_heads=3, cap_feat_dim=24,
                axes_dims=(4, 6, 6), axes_lens=(256, 64, 64),
            ),
            overrides,
        )  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_EMBED_DIM)

    @property
    def ffn_dim(self) -> int:
        return int(self.dim / 3 * 8)

    @property
    def patch_dim(self) -> int:
        """Channels of one latent token: a 2x2 patch of `in_channels`."""
        return self.all_patch_size[0] ** 2 * self.all_f_patch_size[0] * self.in_channels

    def validate(self) -> None:
        fix = "; fix the transformer's config.json"
        if tuple(self.all_patch_size) != (2,) or tuple(self.all_f_patch_size) != (1,):
            raise InputError(
                f"Z-Image config: all_patch_size {self.all_patch_size} / all_f_patch_size "
                f"{self.all_f_patch_size} not supported; jdiff implements the released (2,) / (1,)"
            )
        if self.siglip_feat_dim is not None:
            raise InputError(
                "Z-Image config: siglip_feat_dim is set (the Omni variant's image conditioning), which jdiff "
                "does not implement; use a text-to-image Z-Image (siglip_feat_dim null)"
            )
        if not self.qk_norm:
            raise InputError("Z-Image config: qk_norm false is not implemented; the released models use true")
        if self.dim % self.n_heads:
            raise InputError(
                f"Z-Image config: dim {self.dim} is not a multiple of n_heads {self.n_heads}{fix}"
            )
        if sum(self.axes_dims) != self.head_dim or any(d % 2 for d in self.axes_dims):
            raise InputError(
                f"Z-Image config: axes_dims {self.axes_dims} must be even and sum to the head dim "
                f"{self.head_dim}{fix}"
            )
        if len(self.axes_lens) != len(self.axes_dims) or len(self.axes_dims) != 3:
            raise InputError(
                f"Z-Image config: expected 3 rope axes, got axes_dims {self.axes_dims}, axes_lens "
                f"{self.axes_lens}{fix}"
            )
