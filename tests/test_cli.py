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


def test_generate_with_a_step_cache(tiny_flux_dir, tmp_path, capsys):
    out = tmp_path / "cat.png"
    args = ["--step-cache", "first_block", "--step-cache-threshold", "1e9", "--output", str(out)]
    rc = main(["generate", "--model", str(tiny_flux_dir), "--prompt", "a red circle", *SMALL, *args])
    assert rc == 0 and out.exists()
    assert "steps_skipped 1, steps_computed 1," in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--height", "30"], "height 30 is not divisible by 4"),
        (["--guidance-scale", "nan"], "guidance_scale must be a finite number"),
        (["--steps", "-1"], "num_inference_steps must be a positive integer"),
        (["--output", "x.gif"], "suffix '.gif'"),
        (
            ["--scheduler", "KarrasVeScheduler"],
            "'KarrasVeScheduler' is not supported; jdiff samples with one of",
        ),
        (["--scheduler", "DDIMScheduler"], "FLUX needs a flow-matching scheduler"),
        (
            ["--step-cache", "teacache", "--step-cache-threshold", "-1"],
            "step_cache_threshold must be a finite",
        ),
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
    previous = jax.config.jax_compilation_cache_dir  # the test run's own cache, where a test enabled it
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        monkeypatch.setenv("JDIFF_CACHE_DIR", "")
        assert compilation_cache.enable() is None
        monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "xla"))
        assert compilation_cache.enable() == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


HEAVY = ("jax", "flax", "transformers", "torch", "numpy", "diffusers", "PIL")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["generate", "--help"],
        ["convert", "--help"],
        ["serve", "--help"],
        ["bench", "--help"],
    ],
)
def test_help_and_version_import_nothing_heavy(argv):
    """`jdiff --help` answers at once: no jax, torch or numpy behind it (its time: benchmarks/cli_startup.py)."""
    code = (
        "import sys\nfrom jdiff.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"print('IMPORTED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED []", proc.stdout[-500:]


def test_version(capsys):
    import jdiff

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"jdiff {jdiff.__version__}"


def test_help_shows_defaults(capsys):
    for argv, shown in (
        (
            ["generate", "--help"],
            ["(default: 0)", "(default: 1)", "(default: ulysses)", "(default: the model's"],
        ),
        (["convert", "--help"], ["(default: bfloat16)"]),
        (["serve", "--help"], ["(default: 30000)", "(default: 127.0.0.1)", "(default: 4)"]),
        (["bench", "--help"], ["(default: 520.0)", "Exit codes:"]),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for fragment in shown:
            assert fragment in text, (argv, fragment)


def test_a_normal_run_prints_no_library_warnings(tmp_path):
    """stderr of `jdiff generate` is jdiff's own timing line only, even where transformers has no torch to
    find (its advisory) and after a child process is started (as ffmpeg is for mp4: jax's fork warning)."""
    out = tmp_path / "a.png"
    code = (
        "import os, subprocess, sys\n"
        "sys.modules['torch'] = None  # as on a machine without torch\n"
        "from jdiff.cli import main\n"
        f"rc = main(['generate', '--prompt', 'a red circle', '--steps', '2', '--output', {str(out)!r}])\n"
        "subprocess.run(['true'], preexec_fn=os.setpgrp)  # as imageio-ffmpeg starts ffmpeg\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JDIFF_CACHE_DIR": ""}  # no cache: transformers is imported
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("text_encoding "), proc.stderr
    assert proc.stdout.strip() == str(out)


def test_progress_bar_has_a_compiling_phase():
    """The first step's wait is compilation: it is labelled so and left out of the rate and time left."""
    from jdiff.pipelines import pipeline

    now = [0.0]
    with pipeline.progress_bar(10) as hook:
        bar = hook.bar
        bar._time = lambda: now[0]  # a fake clock: 100 s of compiling, then 1 s per step
        bar.last_print_t = bar.start_t = 0.0
        assert bar.desc.startswith("compiling") and bar.n == 0
        for step in range(3):
            now[0] = 100.0 + step
            hook(step)
        assert bar.desc.startswith("denoising") and bar.n == 3
        left = bar.format_dict["total"] - bar.format_dict["n"]
        rate = (bar.format_dict["n"] - bar.format_dict["initial"]) / bar.format_dict["elapsed"]
        assert rate == pytest.approx(1.0)  # without the restart: 3 steps / 102 s
        assert left / rate == pytest.approx(7.0)
