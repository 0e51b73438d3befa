"""Response encoding: images as base64 PNG / JPEG / WebP (videos are the mp4 file the pipeline wrote)."""

from __future__ import annotations

import base64
import io

import numpy as np

from jdiff.pipelines.base import to_uint8

# output_format -> (PIL format, media type)
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


def encode_images(images: np.ndarray, output_format: str, quality: int | None) -> list[str]:
    """Base64 strings of `images` ([B, H, W, 3] float in [0, 1]) in `output_format` (a `FORMATS` key).

    `quality` (0..100) applies to the lossy formats; default 95.
    """
    from PIL import Image

    fmt = FORMATS[output_format][0]
    kw = {} if fmt == "PNG" else {"quality": 95 if quality is None else quality}
    out = []
    for im in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format=fmt, **kw)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


__all__ = ["FORMATS", "encode_images"]
