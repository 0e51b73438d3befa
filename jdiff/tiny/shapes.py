"""A procedural dataset: one shape (circle, square, triangle) in one of seven colours on a background.

Captions are "a {colour} {shape}" (black background) or "a {colour} {shape} on a {colour} background" (any of
the seven colours or black, never the shape's own). Images are rendered on the device from a PRNG key, so
training needs no data files and every batch is fresh. `judge` reads an image back with plain pixel
statistics: the background from the border, the shape's colour by nearest palette colour, the shape from how
much of its bounding box it fills (circle pi/4, square 1, triangle 1/2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
BACKGROUNDS = (*COLOURS, "black")
SHAPES = ("circle", "square", "triangle")
PALETTE = (
    np.array(
        [
            (220, 40, 40),  # red
            (40, 170, 60),  # green
            (40, 80, 225),  # blue
            (235, 215, 40),  # yellow
            (145, 55, 195),  # purple
            (245, 135, 25),  # orange
            (240, 240, 240),  # white
            (0, 0, 0),  # black
        ],
        np.float32,
    )
    / 255.0
)
BLACK = len(COLOURS)


@dataclass(frozen=True)
class Caption:
    colour: int  # index into COLOURS
    shape: int  # index into SHAPES
    background: int  # index into BACKGROUNDS
    named_background: bool  # whether the caption names the background

    @property
    def text(self) -> str:
        base = f"a {COLOURS[self.colour]} {SHAPES[self.shape]}"
        return f"{base} on a {BACKGROUNDS[self.background]} background" if self.named_background else base


def all_captions() -> list[Caption]:
    """Every caption, in a fixed order: 7 colours x 3 shapes x (unnamed + 7 named backgrounds) = 168."""
    out = []
    for c, s in itertools.product(range(len(COLOURS)), range(len(SHAPES))):
        out.append(Caption(c, s, BLACK, False))
        out.extend(Caption(c, s, b, True) for b in range(len(BACKGROUNDS)) if b != c)
    return out


def caption_arrays(captions: list[Caption]) -> dict[str, np.ndarray]:
    return {
        "colour": np.array([c.colour for c in captions], np.int32),
        "shape": np.array([c.shape for c in captions], np.int32),
        "background": np.array([c.background for c in captions], np.int32),
    }


def render(key: jax.Array, colour, shape, background, size: int = 64) -> jax.Array:
    """Renders a batch [B, size, size, 3] in [0, 1] for index arrays colour/shape/background [B].

    Shape sizes and positions are random: the half-extent r is 18%-38% of the image, and the shape lies fully
    inside it.
    """
    b = colour.shape[0]
    k1, k2, k3 = jax.random.split(key, 3)
    r = jax.random.uniform(k1, (b,), minval=0.18, maxval=0.38) * size
    cx = jax.random.uniform(k2, (b,)) * (size - 2 * r - 2) + r + 1
    cy = jax.random.uniform(k3, (b,)) * (size - 2 * r - 2) + r + 1
    yy, xx = jnp.meshgrid(jnp.arange(size) + 0.5, jnp.arange(size) + 0.5, indexing="ij")
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    rr = r[:, None, None]
    circle = dx**2 + dy**2 <= rr**2
    square = (jnp.abs(dx) <= rr * 0.85) & (jnp.abs(dy) <= rr * 0.85)
    # An upward isosceles triangle: apex at the top, base at the bottom of the r-box.
    triangle = (dy <= rr) & (jnp.abs(dx) <= (dy + rr) / 2)
    mask = jnp.select([shape[:, None, None] == 0, shape[:, None, None] == 1], [circle, square], triangle)
    palette = jnp.asarray(PALETTE)
    fg, bg = palette[colour][:, None, None], palette[background][:, None, None]
    return jnp.where(mask[..., None], fg, bg)


def judge(image: np.ndarray) -> tuple[int, int, int]:
    """(colour, shape, background) indices read from an image [H, W, 3] in [0, 1] by pixel statistics.

    Each pixel takes the label of its nearest palette colour. The background is the most common label on the
    border; the shape's colour the most common other label (never black); the shape comes from the fraction
    of its bounding box (robust percentiles of its pixels) that it fills. Returns -1 for colour and shape
    when fewer than 12 pixels differ from the background.
    """
    img = np.asarray(image, np.float32)
    labels = ((img[..., None, :] - PALETTE) ** 2).sum(-1).argmin(-1)  # [H, W]
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = int(np.bincount(border, minlength=len(BACKGROUNDS)).argmax())
    counts = np.bincount(labels[labels != background], minlength=len(BACKGROUNDS))[: len(COLOURS)]
    if counts.sum() < 12:
        return -1, -1, background
    colour = int(counts.argmax())
    ys, xs = np.nonzero(labels == colour)
    (y0, y1), (x0, x1) = np.percentile(ys, [1, 99]), np.percentile(xs, [1, 99])
    box = (y1 - y0 + 1) * (x1 - x0 + 1)
    inside = ((ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)).sum()
    fill = inside / box
    shape = 1 if fill > 0.88 else 0 if fill > 0.64 else 2
    return colour, shape, background
