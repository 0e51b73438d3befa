"""The Qwen2.5-VL vision tower (transformers `Qwen2_5_VisionTransformerPretrainedModel`): flat patches of
one or more images -> one feature per 2x2 block of patches, in the language model's width.

Axis letters: P patches (all images), E values per patch, D vision width, N heads, H head dim, M merged
tokens (P / merge_size^2), O output width (the language model's hidden size), G layout rows.

Patches come in 2x2-block order from the image processor. The tower reorders them window by window (windows
of `window_size` pixels), runs its blocks (most attend within a window, `fullatt_block_indexes` within the
whole image; images never see each other), merges each 2x2 block with an MLP and restores the original order.
Everything that depends only on the images' grids (the window permutation, the 2D rotary positions, which
window and image each patch belongs to) is computed on the host by `vision_layout` and enters the jitted call
as arrays; the tower itself is plain array math whose shapes depend only on P.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Linear, RMSNorm, dot_product_attention
from jdiff.layers.stack import scan, stacked
from jdiff.models.llm.decoder import apply_rope_half
from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLVisionConfig

VISION_ROPE_THETA = 10000.0


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class VisionLayout:
    """Host-computed arrays describing how the patches of a request's images are grouped.

    Attributes:
        window_index: [M] merged-token permutation into window order (transformers' `window_index`).
        positions: [P, 2] (row, column) of every patch, already in window order (for the 2D rotary table).
        window_segments: [P] the window each (window-ordered) patch belongs to.
        image_segments: [P] the image each (window-ordered) patch belongs to.
        restore_index: [M] the inverse permutation (argsort of window_index).
    """

    window_index: Int[Array, " m"]
    positions: Int[Array, "p 2"]
    window_segments: Int[Array, " p"]
    image_segments: Int[Array, " p"]
    restore_index: Int[Array, " m"]


def _check_grid(grid_thw: np.ndarray, cfg: Qwen2_5_VLVisionConfig) -> np.ndarray:
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    m = cfg.spatial_merge_size
    if grid.size == 0 or (grid < 1).any() or (grid[:, 1:] % m).any():
        raise InputError(
            f"Qwen2.5-VL image_grid_thw {grid.tolist()}: every (t, h, w) should be positive with h and w multiples "
            f"of spatial_merge_size={m}; use the Qwen2-VL image processor's output"
        )
    return grid


def vision_layout(grid_thw: np.ndarray, cfg: Qwen2_5_VLVisionConfig) -> VisionLayout:
    """The `VisionLayout` of images with patch grids `grid_thw` [num_images, 3] (t, h, w), numpy on the host.

    Follows transformers' `get_vision_window_index` (windows of window_size // merge // patch merged tokens
    per side, the last ones cut at the image edge), `get_vision_position_ids` (block-major (row, column)) and
    `get_vision_attention_seqlens` (one attention segment per frame).

    Raises:
        InputError: a grid that is not positive or whose h, w are not multiples of spatial_merge_size.
    """
    grid = _check_grid(grid_thw, cfg)
    m = cfg.spatial_merge_size
    unit = m * m
    side = cfg.window_size // m // cfg.patch_size  # window side in merged tokens
    window_index, window_sizes, positions, frames = [], [], [], []
    offset = 0
    for t, h, w in grid.tolist():
        gh, gw = h // m, w // m
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        nh, nw = -(-gh // side), -(-gw // side)
        padded = np.full((t, nh * side, nw * side), -1)
        padded[:, :gh, :gw] = index
        padded = (
            padded.reshape(t, nh, side, nw, side).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, side * side)
        )
        for window in padded.reshape(-1, side * side):
            kept = window[window >= 0]
            if kept.size:
                window_index.append(kept + offset)
                window_sizes.append(kept.size * unit)
        offset += t * gh * gw
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (gh, m, gw, m)
        hw = np.stack([rows.reshape(block).transpose(0, 2, 1, 3).ravel(),
                       cols.reshape(block).transpose(0, 2, 1, 3).ravel()], axis=-1)  # fmt: skip
        positions.append(np.tile(hw, (t, 1)))
        frames.extend([h * w] * t)
    window_index = np.concatenate(window_index)
    # Patch p of merged token j (in window order) is patch window_index[j] * unit + (p % unit) originally.
    patch_order = (window_index[:, None] * unit + np.arange(unit)[None]).ravel()
    positions = np.concatenate(positions)[patch_order]
    window_segments = np.repeat(np.arange(len(window_sizes)), window_sizes)
    image_segments = np.repeat(np.arange(len(frames)), frames)[patch_order]
    return VisionLayout(
        window_index=window_index.astype(np.int32),
        positions=positions.astype(np.int32),
        window_segments=window_segments.astype(np.int32),
        image_segments=image_segments.astype(np.int32),
        restore_index=np.argsort(window_index).astype(np.int32),
    )


def vision_rope(positions: Int[Array, "p 2"], head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos, sin [P, H] of the 2D rotary embedding: head_dim // 4 frequencies for the row, the same for the
    column, the pair repeated over both halves (rotate-half form)."""
    spatial = head_dim // 2
    inv = 1.0 / (
        np.float32(VISION_ROPE_THETA) ** (np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial))
    )
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv.astype(np.float32))  # [P, 2, H/4]
    freqs = freqs.reshape(freqs.shape[0], -1)  # [P, H/2]: row frequencies, then column ones
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


class _Conv3dKernel(nnx.Module):
    def __init__(self, shape: tuple[int, ...], *, rngs: nnx.Rngs):
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, None, None, sh.EMBED),
                                     eager_sharding=False)  # fmt: skip
        self.kernel = nnx.Param(init(rngs.params(), shape, jnp.float32))


class Qwen2_5_VisionPatchEmbed(nnx.Module):
    """A Conv3d whose kernel equals its stride: one linear map of each flat patch."""

    def __init__(self, cfg: Qwen2_5_VLVisionConfig, *, rngs: nnx.Rngs):
        self.shape = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        c, t, p, _ = self.shape
        # [T, p, p, C, D]: the torch Conv3d weight [D, C, T, p, p] under the default kernel transform.
        self.proj = _Conv3dKernel((t, p, p, c, cfg.hidden_size), rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "p e"]) -> Float[Array, "p d"]:
        kernel = self.proj.kernel[...]
        x = pixel_values.astype(kernel.dtype).reshape(-1, *self.shape)  # [P, C, T, p, p]
        return jnp.einsum("pctyx,tyxcd->pd", x, kernel)


class Qwen2_5_VLVisionAttention(nnx.Module):
    def __init__(self, cfg: Qwen2_5_VLVisionConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.qkv = Linear(d, 3 * d, axes=(sh.EMBED, sh.HEADS), bias_epilogue=True, rngs=rngs)
        self.proj = Linear(d, d, axes=(sh.HEADS, sh.EMBED), rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        p, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(1, p, 3, self.num_heads, -1).transpose(2, 0, 1, 3, 4)
        )  # [1, P, N, H] each
        q, k = apply_rope_half(q, cos[None], sin[None]), apply_rope_half(k, cos[None], sin[None])
        out = dot_product_attention(q, k, v, mask=mask)  # [1, P, N, H]
        return self.proj(out.reshape(p, d))


class Qwen2_5_VLMLP(nnx.Module):
    """SwiGLU with biases."""

    def __init__(self, cfg: Qwen2_5_VLVisionConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, axes=(sh.EMBED, sh.MLP), rngs=rngs)
        self.up_proj = Linear(d, f, axes=(sh.EMBED, sh.MLP), rngs=rngs)
        self.down_proj = Linear(f, d, axes=(sh.MLP, sh.EMBED), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2_5_VLVisionBlock(nnx.Module):
    def __init__(self, cfg: Qwen2_5_VLVisionConfig, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = RMSNorm(cfg.hidden_size, eps=1e-6)
        self.attn = Qwen2_5_VLVisionAttention(cfg, rngs=rngs)
        self.mlp = Qwen2_5_VLMLP(cfg, rngs=rngs)

    def __call__(self, x, full_attention, cos, sin, window_mask, image_mask):
        mask = jnp.where(full_attention, image_mask, window_mask)
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class _GELU(nnx.Module):
    """The parameterless `nn.GELU()` between the merger's linears (position 1 of torch's Sequential)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x, approximate=False)


class Qwen2_5_VLPatchMerger(nnx.Module):
    """RMSNorm, then each 2x2 block of patches (concatenated) through Linear -> GELU -> Linear."""

    def __init__(self, cfg: Qwen2_5_VLVisionConfig, *, rngs: nnx.Rngs):
        wide = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = RMSNorm(cfg.hidden_size, eps=1e-6)
        self.mlp = nnx.List(
            [
                Linear(wide, wide, axes=(sh.EMBED, sh.MLP), rngs=rngs),
                _GELU(),
                Linear(wide, cfg.out_hidden_size, axes=(sh.MLP, sh.EMBED), rngs=rngs),
            ]
        )
        self.wide = wide

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(-1, self.wide)  # [M, D * merge^2]
        for layer in self.mlp:
            x = layer(x)
        return x


class Qwen2_5_VisionTransformer(nnx.Module):
    """The vision tower; transformers' attribute names (`patch_embed`, `blocks`, `merger`)."""

    def __init__(self, cfg: Qwen2_5_VLVisionConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.unit = cfg.spatial_merge_size**2
        self.head_dim = cfg.head_dim
        self.full_attention = tuple(i in cfg.fullatt_block_indexes for i in range(cfg.depth))
        self.patch_embed = Qwen2_5_VisionPatchEmbed(cfg, rngs=rngs)
        self.blocks = stacked(lambda r: Qwen2_5_VLVisionBlock(cfg, rngs=r), cfg.depth, rngs)
        self.merger = Qwen2_5_VLPatchMerger(cfg, rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "p e"], layout: VisionLayout) -> Float[Array, "m o"]:
        """Image features, one per merged token, in the order of the image processor's patches.

        Args:
            pixel_values: [P, E] flat patches (`image_processor.preprocess`), any float dtype.
            layout: `vision_layout(image_grid_thw, cfg)` of the same images.

        Returns:
            [M, O] features in the parameters' dtype: the image-pad tokens' replacement embeddings.
        """
        x = self.patch_embed(pixel_values)  # [P, D]
        p, d = x.shape
        x = x.reshape(p // self.unit, self.unit, d)[layout.window_index].reshape(p, d)
        cos, sin = vision_rope(layout.positions, self.head_dim)
        window_mask = (layout.window_segments[:, None] == layout.window_segments[None, :])[None, None]
        image_mask = (layout.image_segments[:, None] == layout.image_segments[None, :])[None, None]
        full = jnp.asarray(self.full_attention)
        x = scan(self.blocks, x, cos, sin, window_mask, image_mask, per_layer=full)
        return self.merger(x)[layout.restore_index]
