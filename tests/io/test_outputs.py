"""Outputs: everything checkable is checked before the work, write failures are one line, modes follow umask."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jdiff.api import DiffGenerator
from jdiff.cli import main
from jdiff.errors import OutputError
from jdiff.io import outputs
from jdiff.io.outputs import IMAGE_SUFFIXES, check_output_file, default_output_name
from jdiff.pipelines.base import save_images, save_video

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_model_load(monkeypatch):
    """Makes loading any model fail loudly: what a test runs must have stopped before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(DiffGenerator, "from_pretrained", refuse)


@pytest.fixture
def wan_dir(tmp_path):
    """Just enough of a Wan directory for the CLI to know it makes videos (no weights)."""
    d = tmp_path / "wan"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return d


@pytest.fixture
def umask():
    """Sets the process umask for a test and restores it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _one_error_line(err: str, fragment: str) -> None:
    assert err.startswith("jdiff: error:") and err.strip().count("\n") == 0, err
    assert fragment in err, err


def test_unwritable_output_fails_before_the_model_loads(tmp_path, no_model_load, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("in the way")
    rc = main(["generate", "--prompt", "x", "--output", str(blocker / "out.png")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_directory_fails_before_the_model_loads(tmp_path, no_model_load, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert main(["generate", "--prompt", "x", "--output", str(ro / "a.png")]) == 2
    _one_error_line(capsys.readouterr().err, "cannot create files in")


@pytest.mark.parametrize(
    "output, fragment",
    [("out.gif", "suffix '.gif'"), ("out.mp4", "this model makes images"), ("sub", "suffix ''")],
)
def test_bad_suffix_fails_before_the_model_loads(tmp_path, no_model_load, capsys, output, fragment):
    assert main(["generate", "--prompt", "x", "--output", str(tmp_path / output)]) == 2
    _one_error_line(capsys.readouterr().err, fragment)


def test_output_that_is_a_directory(tmp_path):
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path / "taken.png", IMAGE_SUFFIXES)


def test_missing_mp4_writer_fails_before_the_model_loads(
    wan_dir, tmp_path, monkeypatch, no_model_load, capsys
):
    import imageio_ffmpeg

    def no_ffmpeg():
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_ffmpeg)
    rc = main(["generate", "--model", str(wan_dir), "--prompt", "x", "--output", str(tmp_path / "v.mp4")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "imageio-ffmpeg")
    assert not (tmp_path / "v.mp4").exists()


def test_missing_imageio_ffmpeg_package_in_a_fresh_process(wan_dir, tmp_path):
    """Without the package at all; the process exits before importing jax (so before any model call)."""
    code = (
        "import sys; sys.modules['imageio_ffmpeg'] = None\n"
        "from jdiff.cli import main\n"
        f"rc = main(['generate', '--model', {str(wan_dir)!r}, '--prompt', 'x', '--output', {str(tmp_path / 'v.mp4')!r}])\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, "pip install imageio imageio-ffmpeg")


def test_video_model_refuses_an_image_suffix(wan_dir, tmp_path, no_model_load, capsys):
    rc = main(["generate", "--model", str(wan_dir), "--prompt", "x", "--output", str(tmp_path / "v.png")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "this model makes videos")


def test_python_api_checks_the_output_before_any_model_call(tiny_flux_dir, tmp_path, monkeypatch):
    gen = DiffGenerator.from_pretrained(tiny_flux_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoders ran before the output was checked")

    monkeypatch.setattr(gen.pipeline, "encode_prompts", refuse)
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        gen.generate("x", height=32, width=32, num_inference_steps=1, output_path=blocker / "a.png")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_images_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    paths = save_images(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "a.png")
    for p in paths:
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~mask, (p, oct(os.stat(p).st_mode))


def test_videos_respect_the_umask(tmp_path, umask):
    umask(0o027)
    (path,) = save_video(np.zeros((1, 5, 16, 16, 3), np.float32), tmp_path / "v.mp4", fps=4)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.path.getsize(path) > 0


def test_umask_is_read_without_changing_it(umask):
    umask(0o037)
    assert outputs.umask() == 0o037
    assert outputs.file_mode() == 0o640 and outputs.dir_mode() == 0o740
    assert os.umask(0o037) == 0o037  # still what the test set


def test_a_failing_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(self, fp, format=None, **params):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OutputError, match="cannot write .*a.png: No space left on device"):
        save_images(np.zeros((1, 8, 8, 3), np.float32), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_default_output_names_are_distinct():
    prompts = [
        "一只猫",
        "一只狗",
        "кот",
        "a red circle",
        "a red circle " + "x" * 60,
        "a red circle " + "y" * 60,
    ]
    names = [default_output_name(p, 0, ".png") for p in prompts]
    assert len(set(names)) == len(prompts), names
    assert names[3] == Path("outputs/a-red-circle-0.png")
    assert all(n.name.isascii() for n in names)
    assert default_output_name("一只猫", 0, ".png") == names[0]  # stable
