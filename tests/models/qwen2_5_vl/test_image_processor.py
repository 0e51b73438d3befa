"""Qwen2.5-VL image preprocessing: pixel_values and image_grid_thw equal to transformers' PIL image processor
for non-square images (resized down, up, and to the default max_pixels), without torchvision."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from jdiff.errors import InputError
from jdiff.models.qwen2_5_vl.image_processor import Qwen2VLImageProcessorConfig, preprocess, smart_resize
from jdiff.weights.config import from_dict


def _image(w, h, seed, mode="RGB"):
    data = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(data).convert(mode)


@pytest.mark.parametrize(
    "raw",
    [
        {},  # Qwen2.5-VL's defaults
        {"min_pixels": 3136, "max_pixels": 64 * 28 * 28, "patch_size": 14, "merge_size": 2},  # scaled down
        {"size": {"shortest_edge": 40 * 28 * 28, "longest_edge": 100 * 28 * 28}},  # scaled up
    ],
)
def test_matches_transformers(raw):
    images = [_image(173, 97, 0), _image(61, 150, 1, mode="RGBA")]
    ours = preprocess(images, from_dict(Qwen2VLImageProcessorConfig, raw))
    theirs = Qwen2VLImageProcessorPil(**raw)(images=images, return_tensors="np")
    np.testing.assert_array_equal(ours[1], theirs["image_grid_thw"])
    assert ours[0].dtype == np.float32 and ours[0].shape == theirs["pixel_values"].shape
    np.testing.assert_allclose(ours[0], theirs["pixel_values"], rtol=0, atol=1e-6)


def test_smart_resize_and_errors():
    assert smart_resize(97, 173, 28, 3136, 12845056) == (84, 168)
    with pytest.raises(InputError, match="aspect ratio"):
        smart_resize(10, 2500, 28, 3136, 12845056)
    with pytest.raises(InputError, match="expected PIL images"):
        preprocess([np.zeros((4, 4, 3))])
    with pytest.raises(InputError, match="min_pixels"):
        from_dict(Qwen2VLImageProcessorConfig, {"min_pixels": 100, "max_pixels": 10})


def test_from_folder_both_files(tmp_path):
    raw = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
           "image_processor_type": "Qwen2VLImageProcessor"}  # fmt: skip
    want = Qwen2VLImageProcessorConfig(min_pixels=3136, max_pixels=12845056)
    with pytest.raises(InputError, match="no preprocessor_config.json"):
        Qwen2VLImageProcessorConfig.from_folder(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": raw}))  # transformers 5
    assert Qwen2VLImageProcessorConfig.from_folder(tmp_path) == want
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))  # the published layout
    assert Qwen2VLImageProcessorConfig.from_folder(tmp_path) == want
