"""`jdiff generate --image A --image B` on a tiny Qwen-Image-Edit-Plus directory: two input images of different
sizes reach the pipeline in order; one image too many is a one-line error (exit 2)."""

import json

import pytest
from PIL import Image

from jdiff.cli import main
from tests.fixtures_qwen_image import saved, tiny_qwen_image_pipeline


@pytest.fixture(scope="module")
def edit_plus_dir(tmp_path_factory):
    path = saved(tiny_qwen_image_pipeline("edit_plus"), tmp_path_factory.mktemp("edit-plus"))
    # Small image areas (the real 384^2 / 1024^2 would make a slow test).
    (path / "jdiff_preset.json").write_text(
        json.dumps({"vae_image_area": 48 * 48, "condition_image_area": 40 * 40})
    )
    return path


def _images(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.new("RGB", (56, 40), (200, 30, 30)).save(a)
    Image.new("RGB", (30, 64), (30, 30, 200)).save(b)
    return a, b


def test_repeated_image_flag(edit_plus_dir, tmp_path, capsys):
    a, b = _images(tmp_path)
    out = tmp_path / "edit.png"
    argv = ["generate", "--model", str(edit_plus_dir), "--prompt", "a red circle", "--image", str(a), "--image",
            str(b), "--negative-prompt", "blue", "--true-cfg-scale", "2.0", "--steps", "2", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert Image.open(out).size == (32, 64)  # no size given: about 48^2 pixels at the last image's 30:64


def test_too_many_images(edit_plus_dir, tmp_path, capsys):
    a, b = _images(tmp_path)
    argv = ["generate", "--model", str(edit_plus_dir), "--prompt", "x", "--steps", "1"]
    assert main([*argv, *[x for p in (a, b, a, b) for x in ("--image", str(p))]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdiff: error:") and "at most 3 images, got 4" in err and err.count("\n") == 1, err
