"""Two local processes x 4 CPU devices through the CLI: the same image as one process; only process 0 writes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from jdiff.cli import main

REPO = Path(__file__).resolve().parents[1]

ARGS = ["--prompt", "a red circle", "--height", "32", "--width", "48", "--steps", "3", "--seed", "5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(argv: list[list[str]], *, env=None, cwd=(None, None), timeout=300):
    """Runs `python -m jdiff <argv[i]>` as process i of a two-process run (4 CPU devices each).

    Returns [(returncode, stdout, stderr)] per process. Processes still running at `timeout` are killed
    (SIGKILL: jax's runtime catches SIGTERM) and the test fails.
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JDIFF_COORDINATOR": f"127.0.0.1:{_free_port()}",
        "JDIFF_NUM_PROCESSES": "2",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jdiff", *args],
            env=_env_for(env, i),
            cwd=cwd[i],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, args in enumerate(argv)
    ]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate() for p in procs]
        raise AssertionError(
            f"processes still running after {timeout} s: {[e[-1500:] for _, e in outs]}"
        ) from None
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, results, strict=True)]


def _env_for(env: dict, i: int) -> dict:
    """Process i's environment: JDIFF_CACHE_DIR_<i>, when given, is its own cache directory."""
    per_process = env.get(f"JDIFF_CACHE_DIR_{i}")
    out = {k: v for k, v in env.items() if not k.startswith("JDIFF_CACHE_DIR_")}
    out["JDIFF_PROCESS_ID"] = str(i)
    if per_process is not None:
        out["JDIFF_CACHE_DIR"] = per_process
    return out


def _generate_args(model, output, mesh: str, prompt: str = "a red circle") -> list[str]:
    return [
        "generate",
        "--model",
        str(model),
        "--prompt",
        prompt,
        *ARGS[2:],
        "--output",
        str(output),
        "--mesh",
        mesh,
    ]


def test_two_processes_match_one(tiny_flux_dir, tmp_path, capsys):
    single = tmp_path / "single.png"
    assert main(["generate", "--model", str(tiny_flux_dir), *ARGS, "--output", str(single)]) == 0
    capsys.readouterr()

    out = tmp_path / "multi.png"
    # Process 1 is started with another prompt and output: process 0's request must win.
    results = _two_processes(
        [
            _generate_args(tiny_flux_dir, out, "fsdp=4,data=2"),
            _generate_args(tiny_flux_dir, tmp_path / "other.png", "fsdp=4,data=2", prompt="ignored"),
        ]
    )
    for code, _, err in results:
        assert code == 0, err[-2000:]
    # Gloo logs its connections to stdout; the path is the last line, and only process 0 prints one.
    assert results[0][1].strip().splitlines()[-1] == str(out)
    assert not any(line.endswith(".png") for line in results[1][1].splitlines())
    assert not (tmp_path / "other.png").exists()
    a = np.asarray(Image.open(single), np.int16)
    b = np.asarray(Image.open(out), np.int16)
    assert np.abs(a - b).max() <= 1  # uint8 rounding of float32 results that agree to ~1e-6


def test_restart_on_a_warm_compilation_cache(tiny_flux_dir, tmp_path, capsys):
    """Cold, then warm on the same cache, then warm with process 1 on an empty cache of its own (another
    host's disk): every run gives the one-process image, and in the warm runs every process loads the
    denoising program from process 0's cache (jax keys each process's entries differently and writes only
    process 0's; before the fix, process 1 never found a program, and restarted runs could hang)."""
    single = tmp_path / "single.png"
    assert main(["generate", "--model", str(tiny_flux_dir), *ARGS, "--output", str(single)]) == 0
    capsys.readouterr()
    want = np.asarray(Image.open(single), np.int16)
    cache, other_host = tmp_path / "cache", tmp_path / "cache-1"
    runs = [
        ("cold", {"JDIFF_CACHE_DIR": str(cache)}),
        ("warm", {"JDIFF_CACHE_DIR": str(cache), "JAX_LOG_COMPILES": "1"}),
        (
            "warm, separate caches",
            {"JDIFF_CACHE_DIR": str(cache), "JDIFF_CACHE_DIR_1": str(other_host), "JAX_LOG_COMPILES": "1"},
        ),
    ]
    for label, env in runs:
        out = tmp_path / f"{label}.png"
        results = _two_processes([_generate_args(tiny_flux_dir, out, "fsdp=4,context=2")] * 2, env=env)
        for i, (code, _, err) in enumerate(results):
            assert code == 0, f"{label}, process {i}: {err[-2000:]}"
            if label != "cold":
                assert "Persistent compilation cache hit for 'jit__denoise_fn'" in err, (
                    f"{label}: process {i} compiled the denoising program instead of loading it"
                )
        got = np.asarray(Image.open(out), np.int16)
        assert np.abs(got - want).max() <= 1, label
    # Process 1 was warm from process 0's entries alone: jax writes none of its own.
    assert not list(other_host.glob("jit_*"))


def test_a_failing_process_stops_the_others(tiny_flux_dir, tmp_path):
    """Process 1 cannot find the model (a relative path that exists only where process 0 runs): both exit
    within seconds with code 2, and process 0 says which process failed and why (before, process 0 waited
    in a collective and process 1 in jax's shutdown barrier until the runtime's timeouts)."""
    import shutil
    import time

    here, elsewhere = tmp_path / "host0", tmp_path / "host1"
    here.mkdir()
    elsewhere.mkdir()
    shutil.copytree(tiny_flux_dir, here / "model")
    args = _generate_args("model", tmp_path / "out.png", "fsdp=4,data=2")
    start = time.monotonic()
    results = _two_processes([args, args], cwd=(here, elsewhere), timeout=120)
    elapsed = time.monotonic() - start
    assert [code for code, _, _ in results] == [2, 2], [err[-1500:] for _, _, err in results]
    assert "jdiff: error: model directory model does not exist" in results[1][2]
    assert "process 1 failed, stopping process 0: model directory model does not exist" in results[0][2]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (tmp_path / "out.png").exists()


def test_two_process_server(tmp_path):
    """Process 0 serves HTTP; process 1 follows its generate calls; both exit 0 on SIGTERM to process 0."""
    import base64
    import io
    import json
    import signal
    import time
    import urllib.request

    import jdiff

    port, http = _free_port(), _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JDIFF_COORDINATOR": f"127.0.0.1:{port}",
        "JDIFF_NUM_PROCESSES": "2",
    }
    cmd = [
        sys.executable,
        "-m",
        "jdiff",
        "serve",
        "--port",
        str(http),
        "--mesh",
        "data=2,fsdp=4",
        "--warmup",
        "64x64",
        "--max-batch",
        "1",
        "--log-level",
        "warning",
    ]
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "JDIFF_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
                "server did not start"
            )
            time.sleep(0.5)
        body = json.dumps({"prompt": "a red square", "size": "64x64", "seed": 9}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{http}/v1/images/generations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            item = json.loads(r.read())["data"][0]
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))), np.int16)
        want = (
            jdiff.DiffGenerator.from_pretrained().generate("a red square", seed=9, output_type="np").images[0]
        )
        assert np.abs(got - np.round(want * 255)).max() <= 2
        procs[0].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
        assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_bad_multihost_flags(monkeypatch):
    import pytest

    from jdiff.errors import InputError
    from jdiff.parallel import distributed

    for name in ("JDIFF_COORDINATOR", "JDIFF_NUM_PROCESSES", "JDIFF_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match="needs all of --coordinator"):
        distributed.initialize("127.0.0.1:1234", None, 0)
    with pytest.raises(InputError, match=r"--process-id must be in \[0, 2\)"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(InputError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    monkeypatch.setenv("JDIFF_NUM_PROCESSES", "two")
    with pytest.raises(InputError, match="JDIFF_NUM_PROCESSES must be an integer"):
        distributed.initialize()
    monkeypatch.delenv("JDIFF_NUM_PROCESSES")
    assert distributed.initialize() is False  # nothing asked for: single process
