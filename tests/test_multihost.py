"""Two local processes x 4 CPU devices through the CLI: the same image as one process; only process 0 writes."""

import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image

from jdiff.cli import main

ARGS = ["--prompt", "a red circle", "--height", "32", "--width", "48", "--steps", "3", "--seed", "5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tiny_flux_dir, tmp_path, capsys):
    single = tmp_path / "single.png"
    assert main(["generate", "--model", str(tiny_flux_dir), *ARGS, "--output", str(single)]) == 0
    capsys.readouterr()

    out = tmp_path / "multi.png"
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JDIFF_COORDINATOR": f"127.0.0.1:{port}",
        "JDIFF_NUM_PROCESSES": "2",
    }
    procs = []
    for pid in range(2):
        # Process 1 is started with another prompt and output: process 0's request must win.
        args = ARGS if pid == 0 else ["--prompt", "ignored", *ARGS[2:]]
        output = out if pid == 0 else tmp_path / "other.png"
        cmd = [
            sys.executable,
            "-m",
            "jdiff",
            "generate",
            "--model",
            str(tiny_flux_dir),
            *args,
            "--output",
            str(output),
            "--mesh",
            "fsdp=4,data=2",
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env={**env, "JDIFF_PROCESS_ID": str(pid)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    # Gloo logs its connections to stdout; the path is the last line, and only process 0 prints one.
    assert results[0][0].strip().splitlines()[-1] == str(out)
    assert not any(line.endswith(".png") for line in results[1][0].splitlines())
    assert not (tmp_path / "other.png").exists()
    a = np.asarray(Image.open(single), np.int16)
    b = np.asarray(Image.open(out), np.int16)
    assert np.abs(a - b).max() <= 1  # uint8 rounding of float32 results that agree to ~1e-6


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
