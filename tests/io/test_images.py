"""Input images: every accepted form becomes an RGB PIL image; bad ones fail in one line before any model."""

import numpy as np
import pytest
from PIL import Image

from jdiff.errors import InputError
from jdiff.io.images import read_images


def test_every_form_reads_the_same_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    forms = [
        pixels,
        pixels / 255.0,
        Image.fromarray(pixels).convert("RGBA"),
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
    ]
    for form in forms:
        (img,) = read_images(form, most=1)
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), pixels), type(form)
    two = read_images([pixels, Image.new("RGB", (3, 2))], most=2)
    assert [im.size for im in two] == [(7, 5), (3, 2)]


@pytest.mark.parametrize(
    ("image", "most", "match"),
    [
        ([], 1, "empty list"),
        ([np.zeros((2, 2, 3))] * 3, 2, "at most 2 images, got 3"),
        ([np.zeros((2, 2, 3))] * 2, 1, "at most 1 image, got 2"),
        (np.zeros((2, 2)), 1, r"array \[H, W, 3\], got shape \[2, 2\]"),
        (np.full((2, 2, 3), 2.0), 1, r"in \[0, 1\]"),
        (np.full((2, 2, 3), np.nan), 1, r"finite values in \[0, 1\]"),
        (np.zeros((2, 2, 3), np.int32), 1, "float in"),
        ("no/such/file.png", 1, "cannot read image 'no/such/file.png'"),
        (3, 1, "must be a PIL image, a path or an array"),
        ([np.zeros((2, 2, 3)), "missing.png"], 2, r"cannot read image\[1\]"),
    ],
)
def test_bad_images_are_one_line_errors(image, most, match):
    with pytest.raises(InputError, match=match) as e:
        read_images(image, most=most)
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read image"):
        read_images(tmp_path / "x.png", most=1)
