"""The examples run as a new user runs them: defaults that work, one-line errors, distinct output names."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image

from jdiff.io.outputs import default_output_name

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def _run(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=timeout,
    )


def test_client_without_a_server_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run("client.py", "--url", f"http://127.0.0.1:{port}", "--prompt", "x", cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # no traceback
    assert proc.stderr.startswith("client: cannot reach") and "jdiff serve" in proc.stderr


def test_flux_example_runs_on_the_embedded_model_with_distinct_names(tmp_path):
    prompts = ["a red circle", "一只红色的圆"]
    for prompt in prompts:
        proc = _run("flux_text_to_image.py", "--prompt", prompt, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        want = default_output_name(prompt, 0, ".png")
        assert proc.stdout.split()[0] == str(want), proc.stdout
        assert Image.open(tmp_path / want).size == (64, 64)
    assert len(list((tmp_path / "outputs").iterdir())) == 2  # no second prompt overwrote the first


def test_flux_example_bad_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = _run("flux_text_to_image.py", "--output", "file/a.png", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("flux_text_to_image: error: cannot write") and proc.stderr.count("\n") == 1


def test_train_tiny_needs_a_run_folder_to_train(tmp_path):
    proc = _run("train_tiny.py", "--phase", "train", "--quick", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "needs --out" in proc.stderr
