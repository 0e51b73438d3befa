"""The `jdiff` command line: outputs, exit codes, and one-line errors."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from jdiff.cli import main

SMALL = ["--height", "32", "--width", "48", "--steps", "2"]


def test_generate_writes_the_image(tiny_flux_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "cat.jpg"
    rc = main(
        ["generate", "--model", str(tiny_flux_dir), "--prompt", "a red circle", *SMALL, "--output", str(out)]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert Image.open(out).size == (48, 32)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--height", "30"], "height 30 is not divisible by 4"),
        (["--guidance-scale", "nan"], "guidance_scale must be a finite number"),
        (["--steps", "-1"], "num_inference_steps must be a positive integer"),
        (["--output", "x.gif"], "suffix '.gif'"),
    ],
)
def test_bad_input_exit_2(tiny_flux_dir, args, message, capsys):
    rc = main(["generate", "--model", str(tiny_flux_dir), "--prompt", "x", *SMALL, *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.startswith("jdiff: error:")


def test_subprocess_exit_codes(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    missing = subprocess.run(
        [sys.executable, "-m", "jdiff", "generate", "--model", str(tmp_path / "nope"), "--prompt", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0, missing.stderr  # one line, no traceback
    assert "does not exist" in missing.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "jdiff", "generate"], capture_output=True, text=True, env=env
    )
    assert usage.returncode == 2 and "--prompt" in usage.stderr


def test_compilation_cache_dir(tmp_path, monkeypatch):
    import jax

    from jdiff import compilation_cache

    monkeypatch.setattr(compilation_cache, "_enabled", False)
    monkeypatch.setenv("JDIFF_CACHE_DIR", "")
    assert compilation_cache.enable() is None
    monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "xla"))
    previous = jax.config.jax_compilation_cache_dir
    try:
        assert compilation_cache.enable() == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
