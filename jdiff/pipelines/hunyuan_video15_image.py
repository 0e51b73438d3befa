"""HunyuanVideo-1.5 image-to-video input handling, as diffusers' `HunyuanVideo15ImageProcessor` does it: the
aspect buckets around the model's `target_size`, the resize-and-crop of the input image, its pixel values."""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_sizes(base_size: int, patch_size: int = 16, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """The (width, height) buckets of about base_size^2 pixels in steps of `patch_size`, aspect at most
    `max_ratio` (diffusers' `generate_crop_size_list`), widest first."""
    patches = round((base_size / patch_size) ** 2)
    out, wp, hp = [], patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            out.append((wp * patch_size, hp * patch_size))
        if (hp + 1) * wp <= patches:
            hp += 1
        else:
            wp -= 1
    return out


def bucket_size(height: float, width: float, target_size: int, patch_size: int = 16) -> tuple[int, int]:
    """(height, width) of the bucket closest in aspect to height x width, never crossing to the other side of
    square (diffusers' `calculate_default_height_width`; the bucket list is (w, h) pairs read as (h, w))."""
    sizes = crop_sizes(target_size, patch_size)
    ratios = np.array([round(float(a) / float(b), 5) for a, b in sizes])
    diff = ratios - float(height) / float(width)
    side = diff <= 0 if height >= width else diff >= 0
    candidates = np.flatnonzero(side)
    best = candidates[np.argmin(np.abs(diff[candidates]))]
    return sizes[best]


def resize_and_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale to cover height x width (Lanczos), then centre-crop (diffusers' `resize(resize_mode="crop")`)."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    resized = image.convert("RGB").resize((src_w, src_h), resample=Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


def vae_pixels(image: Image.Image) -> np.ndarray:
    """[1, 1, H, W, 3] float32 in [-1, 1] (diffusers: x / 255, then 2x - 1)."""
    x = np.asarray(image, np.uint8).astype(np.float32) / 255.0
    return (2.0 * x - 1.0)[None, None]
