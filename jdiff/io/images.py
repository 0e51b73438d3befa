"""Reading input images: `generate(..., image=...)` for image-to-video, edit and reference-image models.

An image is a PIL image, a path, or an `np.ndarray` [H, W, 3] (float in [0, 1], or uint8); models that take
several references get a list of these. Every one becomes an RGB PIL image here, checked, before any model
runs; the families resize and normalise them as their reference pipelines do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jdiff.errors import InputError


def read_images(image, *, most: int) -> tuple:
    """`image` (one image or a list of them) as a tuple of RGB PIL images.

    Args:
        image: a PIL image, a path, an array [H, W, 3] (float in [0, 1] or uint8), or a list of these.
        most: how many images the model takes.

    Raises:
        InputError: an empty list, more images than `most`, an unreadable file, or a bad array.
    """
    items = list(image) if isinstance(image, list | tuple) else [image]
    if not items:
        raise InputError("image is an empty list; pass at least one image or leave image out")
    if len(items) > most:
        raise InputError(
            f"this model takes at most {most} image{'s' if most > 1 else ''}, got {len(items)}; pass fewer"
        )
    return tuple(_one(x, f"image[{i}]" if len(items) > 1 else "image") for i, x in enumerate(items))


def _one(image, name: str):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | Path):
        try:
            with Image.open(image) as f:
                return f.convert("RGB")
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {name} {str(image)!r}: {e}") from None
    if isinstance(image, np.ndarray):
        return Image.fromarray(_uint8(image, name))
    raise InputError(f"{name} must be a PIL image, a path or an array [H, W, 3], got {type(image).__name__}")


def _uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim != 3 or a.shape[-1] != 3 or 0 in a.shape:
        raise InputError(f"{name} must be an array [H, W, 3], got shape {list(a.shape)}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{name} must be float in [0, 1] or uint8, got {a.dtype}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise InputError(f"{name} must hold finite values in [0, 1] (uint8 arrays hold 0-255)")
    return np.round(a * 255.0).astype(np.uint8)
