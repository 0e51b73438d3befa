"""Spatial tiling for the HunyuanVideo-1.5 VAE, as diffusers' `AutoencoderKLHunyuanVideo15.enable_tiling()`.

Axis letters: B batch, T frames, H W height / width, C channels, N tiles of one shape.

diffusers' algorithm (`tiled_decode` / `tiled_encode`), kept exactly, quirks included:
  * tiles start every `stride = int(tile_in * (1 - overlap))` rows / columns of the input (`range(0, H,
    stride)`) and are `tile_in` wide, cut short at the edge (the last one or two are smaller: "ragged");
  * each tile is decoded (encoded) alone, the whole video at once;
  * tile (i, j) is blended into its top neighbour's last rows, then its left neighbour's last columns, over
    `blend = int(tile_out * overlap)` rows / columns (fewer where either tile is smaller): weight y / blend on
    its own row y. diffusers blends in place, so each neighbour is the already blended tile, and the left
    neighbour's top rows were blended with the row above first;
  * each tile keeps its first `limit = tile_out - blend` rows and columns, concatenated.

Tiles of equal shape run through one `lax.map`: one compiled body per tile shape (3 x 3 at most for overlaps up
to 0.5; 2 x 2 at 480p and 720p), and the device holds one tile's activations at a time plus the stacked tile
outputs. A ragged tile is computed at its own size, never padded: the causal convs replicate edges and the
mid-block attention spans the whole tile, so padding would change it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jdiff.errors import InputError


@dataclass(frozen=True)
class VAETiling:
    """diffusers' `enable_tiling()` settings (its names and defaults).

    Attributes:
        tile_sample_min_height / tile_sample_min_width: a tile's size in pixels (encode input, decode output).
        tile_latent_min_height / tile_latent_min_width: a tile's size in latents; None: the pixel size over
            the spatial compression ratio. (diffusers fixes these at construction, so its `enable_tiling(
            tile_sample_min_height=...)` alone leaves them at 256 / ratio: give both to match it.)
        tile_overlap_factor: the fraction of a tile shared with its neighbour.
    """

    tile_sample_min_height: int = 256
    tile_sample_min_width: int = 256
    tile_latent_min_height: int | None = None
    tile_latent_min_width: int | None = None
    tile_overlap_factor: float = 0.25

    def __post_init__(self):
        sizes = (self.tile_sample_min_height, self.tile_sample_min_width)
        sizes += tuple(s for s in (self.tile_latent_min_height, self.tile_latent_min_width) if s is not None)
        if min(sizes) < 1 or not 0 < self.tile_overlap_factor < 1:
            raise InputError(
                f"VAE tiling: tile sizes must be positive and tile_overlap_factor in (0, 1), got {self}; "
                "use e.g. VAETiling(256, 256, tile_overlap_factor=0.25)"
            )

    def latent(self, ratio: int) -> tuple[int, int]:
        """(tile height, tile width) in latents for a VAE of spatial compression `ratio`."""
        h, w = self.tile_latent_min_height, self.tile_latent_min_width
        return (self.tile_sample_min_height // ratio if h is None else h), (
            self.tile_sample_min_width // ratio if w is None else w
        )


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """diffusers `blend_v` / `blend_h`: b's first rows along `axis` faded in from a's last ones."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    shape = [1] * b.ndim
    shape[axis] = extent
    y = np.arange(extent).reshape(shape) / extent  # float64, as diffusers' Python floats
    tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
    mixed = tail * (1 - y).astype(b.dtype) + head * y.astype(b.dtype)
    return jnp.concatenate([mixed, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis=axis)


def tiled(
    fn: Callable[[jax.Array], jax.Array],
    x: Float[Array, "b t h w c"],
    *,
    tile: tuple[int, int],
    overlap: float,
    tile_out: tuple[int, int],
) -> Float[Array, "b t2 h2 w2 c2"]:
    """`fn` (a VAE encoder or decoder on [B, T, H, W, C]) over overlapping spatial tiles of `x`, blended.

    Args:
        fn: maps a tile [B, T, th, tw, C] to its output; traced once per distinct tile shape.
        x: the input, channels-last.
        tile: (height, width) of an input tile (diffusers' `tile_latent_min_*` to decode, `tile_sample_min_*`
            to encode).
        overlap: `tile_overlap_factor`.
        tile_out: (height, width) of a whole tile's output (`tile_sample_min_*` to decode, `tile_latent_min_*`
            to encode), which sets the blend and the kept rows as diffusers sets them.

    Returns:
        the blended output, as diffusers' `tiled_decode` / `tiled_encode` (channels-last).
    """
    h, w = x.shape[2:4]
    stride = [int(t * (1 - overlap)) for t in tile]
    if min(stride) < 1:
        raise InputError(
            f"VAE tiling: tiles of {tile[0]}x{tile[1]} with overlap {overlap} advance by less than one row; "
            "use larger tiles or a smaller tile_overlap_factor"
        )
    blend = [int(t * overlap) for t in tile_out]
    limit = [t - e for t, e in zip(tile_out, blend, strict=True)]
    rows, cols = range(0, h, stride[0]), range(0, w, stride[1])

    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in rows:
        for j in cols:
            groups.setdefault((min(tile[0], h - i), min(tile[1], w - j)), []).append((i, j))
    out: dict[tuple[int, int], jax.Array] = {}
    for (th, tw), where in groups.items():
        stack = jnp.stack([x[:, :, i : i + th, j : j + tw] for i, j in where])  # [N, B, T, th, tw, C]
        ys = jax.lax.map(fn, stack)
        out.update({p: ys[k] for k, p in enumerate(where)})

    result_rows = []
    for a, i in enumerate(rows):
        row = []
        for b, j in enumerate(cols):
            t = out[i, j]
            if a > 0:
                t = _blend(out[rows[a - 1], j], t, blend[0], axis=2)
            if b > 0:
                t = _blend(out[i, cols[b - 1]], t, blend[1], axis=3)
            out[i, j] = t  # diffusers blends in place: later neighbours see this blended tile
            row.append(t[:, :, : limit[0], : limit[1]])
        result_rows.append(jnp.concatenate(row, axis=3))
    return jnp.concatenate(result_rows, axis=2)


# Live [B, r, H, W, c0] tensors (one frame chunk at full resolution, the last level's width c0) at the untiled
# decoder's peak. Calibrated on the one measurement there is (H200, bfloat16, 480p: 31 x 30 x 53 latents to
# 121 x 480 x 848, `jdiff bench` hunyuan_video15_vae_decode: 10.4 GiB peak with about 2.4 GiB of weights), so
# an estimate, not a floor: about 19 such tensors besides the output.
DECODE_FACTOR = 20


def decode_activation_bytes(cfg, batch: int, frames: int, height: int, width: int, itemsize: int) -> int:
    """Device bytes beyond the weights that an untiled decode of [batch, frames, height, width] latents
    needs: `DECODE_FACTOR` full-resolution tensors of one frame chunk, the mid-block attention's keys and
    values of every frame, and the video out (in `itemsize`, plus the pipeline's two float32 copies)."""
    s, r = cfg.spatial_compression_ratio, cfg.temporal_compression_ratio
    pixels = height * s * width * s
    chunk = DECODE_FACTOR * r * pixels * cfg.block_out_channels[0] * itemsize
    keys_values = 2 * frames * height * width * cfg.block_out_channels[-1] * itemsize
    video = (1 + r * (frames - 1)) * pixels * cfg.out_channels * (2 * itemsize + 8)
    return batch * (chunk + keys_values + video)
