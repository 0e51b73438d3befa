"""Qwen2-VL / Qwen2.5-VL image preprocessing with numpy and PIL only, as transformers' PIL image processor
(`Qwen2VLImageProcessorPil`) does it: each image is converted to RGB, resized with PIL (bicubic) to the
`smart_resize` size (sides multiples of patch_size * merge_size, area within [min_pixels, max_pixels], aspect
kept), rescaled by 1/255, normalized with the CLIP mean and std, and cut into flat patches in the vision
tower's order.

Axis letters: P patches (all images), E values per patch (channels x temporal patch x patch x patch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jdiff.errors import InputError
from jdiff.weights.config import from_dict, read_json

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Qwen2VLImageProcessorConfig:
    """`preprocessor_config.json` keys of `Qwen2VLImageProcessor` (Qwen2.5-VL uses it), with its defaults.

    `size` ({"shortest_edge": min pixels, "longest_edge": max pixels}) and the older `min_pixels` /
    `max_pixels` keys are both read; the explicit min/max keys win, as in transformers.
    """

    min_pixels: int | None = None
    max_pixels: int | None = None
    size: dict | None = None
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    do_resize: bool = True
    resample: int = 3  # PIL bicubic
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD

    def __post_init__(self):
        size = dict(self.size or {})
        low = self.min_pixels if self.min_pixels is not None else size.get("shortest_edge", 56 * 56)
        high = self.max_pixels if self.max_pixels is not None else size.get("longest_edge", 28 * 28 * 1280)
        object.__setattr__(self, "min_pixels", int(low))
        object.__setattr__(self, "max_pixels", int(high))
        object.__setattr__(self, "size", None)
        object.__setattr__(self, "image_mean", tuple(self.image_mean))
        object.__setattr__(self, "image_std", tuple(self.image_std))

    @classmethod
    def from_folder(cls, folder) -> Qwen2VLImageProcessorConfig:
        """From a processor folder (a Qwen-Image-Edit directory's `processor/`): its `preprocessor_config.json`,
        or, as transformers 5 saves processors, the `image_processor` entry of `processor_config.json`.

        Raises:
            InputError: neither file is there, or the values are not supported.
        """
        folder = Path(folder)
        if (folder / "preprocessor_config.json").is_file():
            return from_dict(cls, read_json(folder / "preprocessor_config.json"))
        if (folder / "processor_config.json").is_file():
            raw = read_json(folder / "processor_config.json")
            if isinstance(raw.get("image_processor"), dict):
                return from_dict(cls, raw["image_processor"])
        raise InputError(
            f"{folder} has no preprocessor_config.json (nor a processor_config.json with an image_processor "
            "entry); is the processor folder complete?"
        )

    def validate(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise InputError(
                f"Qwen2-VL image processor: min_pixels {self.min_pixels} and max_pixels {self.max_pixels} should "
                "satisfy 0 < min_pixels <= max_pixels"
            )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) transformers' `smart_resize` picks: multiples of `factor`, area in range.

    Raises:
        InputError: an aspect ratio above 200.
    """
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"image of {width}x{height}: absolute aspect ratio must be smaller than 200; crop the image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _patchify(image: np.ndarray, cfg: Qwen2VLImageProcessorConfig) -> tuple[np.ndarray, int, int]:
    """[C, H, W] -> ([gh * gw, E] patches ordered by 2x2 merge blocks, gh, gw); the still image is repeated
    over the temporal patch."""
    c, h, w = image.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    patches = image.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return patches.reshape(gh * gw, c * t * p * p), gh, gw


def preprocess(
    images: Sequence[Image.Image], cfg: Qwen2VLImageProcessorConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """PIL images -> (pixel_values [P, E] float32, image_grid_thw [num_images, 3] int64), as transformers'
    `Qwen2VLImageProcessorPil` returns them (each image's patches follow the previous image's).

    Raises:
        InputError: no images, something that is not a PIL image, or an aspect ratio above 200.
    """
    cfg = cfg or Qwen2VLImageProcessorConfig()
    if not images:
        raise InputError("Qwen2-VL image processor: no images given")
    all_patches, grids = [], []
    mean = np.asarray(cfg.image_mean, np.float32)
    std = np.asarray(cfg.image_std, np.float32)
    for image in images:
        if not isinstance(image, Image.Image):
            raise InputError(f"Qwen2-VL image processor: expected PIL images, got {type(image).__name__}")
        image = image.convert("RGB")
        if cfg.do_resize:
            factor = cfg.patch_size * cfg.merge_size
            h, w = smart_resize(image.height, image.width, factor, cfg.min_pixels, cfg.max_pixels)
            image = image.resize((w, h), resample=cfg.resample)
        array = np.asarray(image).transpose(2, 0, 1)  # [C, H, W] uint8
        if cfg.do_rescale:
            # float64 product, then float32, as transformers' `rescale`.
            array = (array.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
        if cfg.do_normalize:
            array = array.astype(np.float32, copy=False)
            array = ((array.T - mean) / std).T
        patches, gh, gw = _patchify(np.asarray(array, np.float32), cfg)
        all_patches.append(patches)
        grids.append((1, gh, gw))
    return np.concatenate(all_patches, axis=0), np.asarray(grids, np.int64)
