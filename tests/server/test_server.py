"""`jdiff serve`: a live server on 127.0.0.1 with the embedded model, real HTTP requests.

Fake generators (no model) cover what the tiny image model cannot: timeouts, a failing batch, the video job
lifecycle over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

import jdiff
from jdiff.cli import _parser, _warmup_sizes, main
from jdiff.errors import InputError, OutputError
from jdiff.pipelines.request import OPTIONAL
from jdiff.server import create_app, serve
from jdiff.server.batcher import Batcher, ImageRequest, ShuttingDown, batch_buckets
from jdiff.server.jobs import COMPLETED, FAILED, IN_PROGRESS, QUEUED, JobStore

REPO = Path(__file__).resolve().parents[2]
MAX_BATCH = 2  # two compiled batch sizes (1, 2) keep the start-up short on 2 cores


@contextlib.contextmanager
def live(app):
    """Runs `app` with uvicorn in a thread on a free port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture(scope="module")
def url(tiny_gen):
    gen = tiny_gen
    app = create_app(gen, max_batch=MAX_BATCH, batch_wait_ms=50, timeout_s=120, warmup=[(64, 64)])
    with live(app) as base:
        yield base


def post(base: str, body, path="/v1/images/generations", **kw) -> httpx.Response:
    kw.setdefault("timeout", 120)
    if isinstance(body, bytes | str):
        return httpx.post(base + path, content=body, **kw)
    return httpx.post(base + path, json=body, **kw)


def decode(item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))


def assert_error(r: httpx.Response, status: int, fragment: str = "", param: str | None = None) -> dict:
    """Checks the JSON error body (`param` and `code` appear only when known); returns it."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert {"message", "type"} <= set(err) <= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str), err
    assert fragment.lower() in err["message"].lower(), err["message"]
    if param is not None:
        assert err.get("param") == param, err
    return err


# ---- the embedded model over HTTP -----------------------------------------------------------------------


def test_generates_images_of_the_asked_size(url):
    r = post(url, {"prompt": "a red square", "n": 2, "size": "64x64", "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    assert [d["seed"] for d in body["data"]] == [3, 4]
    for item in body["data"]:
        assert decode(item).shape == (64, 64, 3)
    assert "generate;dur=" in r.headers["server-timing"]
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        r = post(url, {"prompt": "a blue circle", "output_format": fmt, "seed": 1})
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["data"][0]["b64_json"]).startswith(magic)
    r = post(url, {"prompt": "a green triangle"})  # no seed: one is drawn and returned
    assert isinstance(r.json()["data"][0]["seed"], int)


def test_warnings_reach_the_response(url):
    """What the model ignores or may draw badly comes back as `warnings`; a clean request has none."""
    r = post(url, {"prompt": "a red square", "guidance_scale": 5, "size": "96x64", "seed": 1})
    assert r.status_code == 200, r.text
    warnings = r.json()["warnings"]
    assert any(w.startswith("guidance_scale 5 is ignored") for w in warnings), warnings
    assert any("trained at 64x64 only" in w for w in warnings), warnings
    assert "warnings" not in post(url, {"prompt": "a red square", "seed": 1}).json()


def test_step_cache_fields_reach_generate(url):
    """`step_cache` at threshold 0 never skips: the same bytes as without; a huge threshold skips and differs."""
    plain = post(url, {"prompt": "a red square", "seed": 5}).json()["data"][0]["b64_json"]
    body = {"prompt": "a red square", "seed": 5, "step_cache": "first_block"}
    r = post(url, {**body, "step_cache_threshold": 0})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["b64_json"] == plain
    r = post(url, {**body, "step_cache_threshold": 1e6})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["b64_json"] != plain


def test_concurrent_requests_batch_and_match_alone(url):
    alone = post(url, {"prompt": "a red square", "seed": 11}).json()["data"][0]
    again = post(url, {"prompt": "a red square", "seed": 11}).json()["data"][0]
    assert again["b64_json"] == alone["b64_json"]  # same seed, same batch shape: the same bytes

    bodies = [
        {"prompt": "a red square", "seed": 11} if i % 2 else {"prompt": "a blue circle", "seed": i}
        for i in range(16)
    ]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: post(url, b), bodies))
    assert [r.status_code for r in responses] == [200] * 16
    batched = [int(r.headers["x-batch-outputs"]) for r in responses]
    assert max(batched) > 1, batched
    reference = decode(alone).astype(int)
    for body, r, size in zip(bodies, responses, batched, strict=True):
        if body["seed"] == 11:
            # Another batch size may round differently in XLA: at most a level or two, never another image.
            assert np.abs(decode(r.json()["data"][0]).astype(int) - reference).max() <= 2, size
    assert any(b["seed"] == 11 and s > 1 for b, s in zip(bodies, batched, strict=True))


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b'{"prompt": "x", "guidance_scale": NaN}', 400, "NaN"),
    (b'{"prompt": "x", "guidance_scale": Infinity}', 400, "Infinity"),
    (b'{"prompt": "x", "guidance_scale": 1e999}', 400, "out of range"),
    (b"[1, 2]", 400, "JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ({}, 400, "prompt: Field required"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
    ({"prompt": "x" * 10_001}, 400, "10001 characters"),
    ({"prompt": "x", "negative_prompt": 3}, 400, "negative_prompt"),
    ({"prompt": "x", "size": "64"}, 400, "WxH"),
    ({"prompt": "x", "size": 64}, 400, "size"),
    ({"prompt": "x", "size": "-64x64"}, 400, "WxH"),
    ({"prompt": "x", "size": "0x64"}, 400, "positive"),
    ({"prompt": "x", "size": "60x64"}, 400, "not divisible"),
    ({"prompt": "x", "size": "4096x4096"}, 400, "pixels"),
    ({"prompt": "x", "n": 0}, 400, "n must be"),
    ({"prompt": "x", "n": MAX_BATCH + 1}, 400, "n must be"),
    ({"prompt": "x", "n": "2"}, 400, "n:"),
    ({"prompt": "x", "n": 1.5}, 400, "n:"),
    ({"prompt": "x", "n": True}, 400, "n:"),
    ({"prompt": "x", "num_inference_steps": 0}, 400, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": -3}, 400, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 10**6}, 400, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 2.5}, 400, "num_inference_steps"),
    ({"prompt": "x", "guidance_scale": -1}, 400, "guidance_scale"),
    ({"prompt": "x", "guidance_scale": 1e300}, 400, "guidance_scale"),
    ({"prompt": "x", "guidance_scale": "3.5"}, 400, "guidance_scale"),
    ({"prompt": "x", "true_cfg_scale": -2}, 400, "true_cfg_scale"),
    ({"prompt": "x", "step_cache": "fast"}, 400, "step_cache must be one of ['first_block', 'teacache']"),
    ({"prompt": "x", "step_cache_threshold": 0.1}, 400, "needs a step_cache"),
    ({"prompt": "x", "step_cache": "teacache", "step_cache_threshold": -1}, 400, "finite number >= 0"),
    ({"prompt": "x", "seed": -1}, 400, "seed"),
    ({"prompt": "x", "seed": 2**64}, 400, "seed"),
    ({"prompt": "x", "seed": "7"}, 400, "seed"),
    ({"prompt": "x", "output_format": "gif"}, 400, "output_format"),
    ({"prompt": "x", "output_format": 1}, 400, "output_format"),
    ({"prompt": "x", "response_format": "url"}, 400, "b64_json"),
    ({"prompt": "x", "response_format": "xml"}, 400, "b64_json"),
    ({"prompt": "x", "output_compression": 101}, 400, "output_compression"),
    (b'{"prompt": "' + b"x" * (1 << 20) + b'"}', 413, "bytes"),
]


def test_bad_inputs_get_4xx_json(url):
    for body, status, fragment in BAD:
        assert_error(post(url, body), status, fragment)
    multipart = {"content-type": "multipart/form-data; boundary=x"}
    assert_error(post(url, b"--x--", headers=multipart), 400, "JSON body")
    assert_error(httpx.get(url + "/v1/nowhere"), 404)
    wrong_method = httpx.get(url + "/v1/images/generations")
    assert_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"  # HTTP requires it on a 405
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["failures"] == 0  # every bad input was refused before reaching the device


def test_model_card_and_what_the_image_model_does_not_do(url):
    card = httpx.get(url + "/v1/models").json()["data"][0]
    assert card["id"] == "tiny-flux" and card["task"] == "image" and card["defaults"]["height"] == 64
    assert_error(post(url, {"prompt": "a cat"}, "/v1/videos"), 400, "does not make videos")
    assert_error(httpx.get(url + "/v1/videos/video_123"), 400, "does not make videos")
    assert_error(
        post(url, {"prompt": "a cat", "image": ""}, "/v1/images/edits"), 400, "does not support image edits"
    )


# ---- fake generators: timeouts, failing batches, video jobs ---------------------------------------------


class FakeGen:
    """Just enough of a DiffGenerator: generate() returns flat grey images, or sleeps, or writes a "video"."""

    def __init__(self, *, is_video=False, sleep=0.0):
        preset = {"height": 16, "width": 16, "num_inference_steps": 2, "guidance_scale": 1.0, "fps": 4}
        self.pipeline = SimpleNamespace(
            preset=preset,
            size_multiple=8,
            is_video=is_video,
            family="fake",
            accepts=frozenset(OPTIONAL),
            accepts_image=False,
        )
        self.model_path, self.dtype, self.sleep, self.calls = Path("fake"), "float32", sleep, []

    def generate(self, prompt, *, seed, output_type, height, width, output_path=None, **kw):
        self.calls.append({"prompt": prompt, "seed": seed, **kw})
        time.sleep(self.sleep)
        if "boom" in prompt or kw.get("num_frames") == 11:
            raise RuntimeError("boom")
        if kw.get("num_frames") == 7:
            raise InputError("7 frames is not a valid length; use 4k+1")
        if output_path is not None:
            Path(output_path).write_bytes(b"fake mp4 " + prompt.encode())
        prompts = prompt if isinstance(prompt, list) else [prompt]
        images = np.full((len(prompts), height, width, 3), 0.5, np.float32)
        return SimpleNamespace(images=images, timings=dict(FAKE_TIMINGS))


FAKE_TIMINGS = {"text_encoding": 0.001, "denoising": 0.02, "decoding": 0.003, "total": 0.024}


def test_timeout_gives_504_and_the_server_recovers():
    gen = FakeGen(sleep=0.5)
    with live(create_app(gen, max_batch=2, timeout_s=0.2)) as base:
        assert_error(post(base, {"prompt": "slow"}), 504, "not done within")
        time.sleep(0.6)
        gen.sleep = 0.0
        assert post(base, {"prompt": "fast"}).status_code == 200
        assert httpx.get(base + "/health").status_code == 200


def test_edits_reach_a_pipeline_that_takes_images():
    gen = FakeGen()
    gen.pipeline.accepts_image = True
    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (255, 0, 0)).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    with live(create_app(gen)) as base:
        r = post(
            base, {"prompt": "make it blue", "image": f"data:image/png;base64,{png}"}, "/v1/images/edits"
        )
        assert r.status_code == 200 and decode(r.json()["data"][0]).shape == (16, 16, 3)
        assert gen.calls[-1]["image"].size == (8, 4)
        assert_error(post(base, {"prompt": "x", "image": "not base64!"}, "/v1/images/edits"), 400, "image")
        assert_error(post(base, {"prompt": "x"}, "/v1/images/edits"), 400, "image: Field required")
        calls = len(gen.calls)
        for image, fragment in (
            (_b64(Image.new("1", (9000, 9000))), "9000x9000"),  # 10 KB of PNG, 240 MB as RGB
            (_png_header(20000, 20000), "decompression-bomb"),  # PIL itself raises past 179M pixels
            (_b64(Image.new("RGB", (8, 8)), "ICO"), "not a PNG, JPEG"),  # only common raster formats
        ):
            assert_error(post(base, {"prompt": "x", "image": image}, "/v1/images/edits"), 400, fragment)
        assert len(gen.calls) == calls


def _b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _png_header(width: int, height: int) -> str:
    """A PNG that declares its size and holds no pixels: what a decoder sees before it allocates."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")).decode()


def test_a_failing_warmup_fails_the_start():
    gen = FakeGen()
    gen.generate = lambda *a, **k: 1 / 0
    assert serve(gen, port=0, warmup=[(16, 16)], log_level="critical") is False  # the CLI exits 1


def test_a_failing_batch_fails_only_its_culprit():
    gen = FakeGen()
    batcher = Batcher(gen.generate, max_batch=4, batch_wait_s=0.0)
    reqs = [ImageRequest(p, 1, i, {"height": 16, "width": 16}) for i, p in enumerate(["a", "boom", "c"])]
    futures = [batcher.submit(r) for r in reqs]  # queued before the worker starts: one batch of three
    batcher.start()
    assert futures[0].result(5).images.shape == (1, 16, 16, 3)
    assert futures[2].result(5).seeds == [2]
    with pytest.raises(RuntimeError, match="boom"):
        futures[1].result(5)
    assert len(gen.calls[0]["prompt"]) == 4  # the batch of three, padded to the bucket of four
    assert batcher.stats()["failures"] == 1
    batcher.stop(5)
    with pytest.raises(ShuttingDown):
        batcher.submit(ImageRequest("late", 1, 0, {}))
    assert batch_buckets(1) == [1] and batch_buckets(6) == [1, 2, 4, 6] and batch_buckets(8) == [1, 2, 4, 8]


def test_job_store_lifecycle(tmp_path):
    release, started = threading.Event(), threading.Event()

    def runner(params, path):
        started.set()
        release.wait(5)
        if params["prompt"] == "bad":
            raise InputError("bad prompt")
        if params["prompt"] != "nothing":
            path.write_bytes(b"video of " + params["prompt"].encode())

    batcher = Batcher(lambda *a, **k: None, max_batch=1)
    store = JobStore(runner, batcher.submit_task, tmp_path, max_jobs=3)
    batcher.start()
    job = store.submit({"prompt": "cat"}, size="16x16")
    queued_behind = store.submit({"prompt": "bad"})
    assert started.wait(5) and job.status == IN_PROGRESS and queued_behind.status == QUEUED
    assert job.to_json()["object"] == "video" and job.to_json()["size"] == "16x16"
    release.set()
    deadline = time.monotonic() + 5
    while not queued_behind.done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.status == COMPLETED and job.path.read_bytes() == b"video of cat" and job.completed_at
    assert queued_behind.status == FAILED and queued_behind.error == {
        "code": "invalid_request_error",
        "message": "bad prompt",
    }
    empty = store.submit({"prompt": "nothing"})
    while not empty.done:
        time.sleep(0.01)
    assert empty.status == FAILED and "no output file" in empty.error["message"]
    # Past max_jobs the oldest finished job and its file go.
    dog = store.submit({"prompt": "dog"})
    assert store.get(job.id) is None and not job.path.exists()
    while not dog.done:
        time.sleep(0.01)
    # A job still queued at shutdown fails with the reason, and none is accepted after.
    release.clear()
    started.clear()
    store.submit({"prompt": "running"})
    assert started.wait(5)
    pending = store.submit({"prompt": "pending"})
    batcher.begin_shutdown()
    assert pending.status == FAILED and pending.error["code"] == "server_unavailable"
    with pytest.raises(ShuttingDown):
        store.submit({"prompt": "late"})
    release.set()
    batcher.stop(5)


def test_jobs_carry_warnings_and_output_errors_are_the_servers(tmp_path):
    def runner(params, path):
        if params["prompt"] == "disk full":
            raise OutputError(f"cannot write {path}: No space left on device")
        path.write_bytes(b"video")
        return ["negative_prompt is ignored"]

    batcher = Batcher(lambda *a, **k: None, max_batch=1)
    store = JobStore(runner, batcher.submit_task, tmp_path)
    batcher.start()
    ok, full = store.submit({"prompt": "cat"}), store.submit({"prompt": "disk full"})
    deadline = time.monotonic() + 5
    while not (ok.done and full.done) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ok.status == COMPLETED and ok.to_json()["warnings"] == ["negative_prompt is ignored"]
    assert full.status == FAILED and full.error["code"] == "server_error", full.error
    assert "No space left" in full.error["message"]
    batcher.stop(5)


def test_video_jobs_over_http():
    gen = FakeGen(is_video=True)
    with live(create_app(gen, warmup=[(16, 16)])) as base:
        assert_error(post(base, {"prompt": "x"}), 400, "makes videos")
        assert_error(post(base, {"prompt": "x", "num_frames": 0}, "/v1/videos"), 400, "num_frames")
        for seconds in (1e308, 10**400, "1e400", "nan"):  # frames would overflow to inf (or be nonsense)
            assert_error(post(base, {"prompt": "x", "seconds": seconds}, "/v1/videos"), 400, "seconds")
        assert_error(
            post(base, {"prompt": "x", "input_reference": "aGk="}, "/v1/videos"), 400, "input_reference"
        )
        ok = post(base, {"prompt": "a boat", "seconds": "3", "seed": 5}, "/v1/videos").json()
        bad = post(base, {"prompt": "x", "num_frames": 7}, "/v1/videos").json()
        broken = post(base, {"prompt": "x", "num_frames": 11}, "/v1/videos").json()
        assert ok["status"] in (QUEUED, IN_PROGRESS) and ok["seed"] == 5 and ok["seconds"] == "3"
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v1/videos/{broken['id']}").json()["status"] not in (COMPLETED, FAILED):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.get(f"{base}/v1/videos/{ok['id']}").json()["status"] == COMPLETED
        (boat,) = [c for c in gen.calls if c["prompt"] == "a boat"]
        assert boat["num_frames"] == 13 and boat["seed"] == 5  # 3 s at the preset's 4 fps, + 1
        content = httpx.get(f"{base}/v1/videos/{ok['id']}/content")
        assert content.status_code == 200 and content.content == b"fake mp4 a boat"
        assert content.headers["content-type"] == "video/mp4"
        assert httpx.get(f"{base}/v1/videos/{bad['id']}").json()["error"]["code"] == "invalid_request_error"
        assert httpx.get(f"{base}/v1/videos/{broken['id']}").json()["error"]["code"] == "server_error"
        assert_error(httpx.get(f"{base}/v1/videos/{bad['id']}/content"), 409, "failed")
        assert_error(httpx.get(f"{base}/v1/videos/video_nope"), 404)
        assert len(httpx.get(f"{base}/v1/videos").json()["data"]) == 3


def test_video_job_with_a_real_wan_model():
    import imageio.v3 as iio

    from tests.fixtures_wan import saved, tiny_wan

    gen = jdiff.DiffGenerator.from_pretrained(saved(tiny_wan("t2v")))
    with live(create_app(gen)) as base:
        body = {"prompt": "a cat", "size": "48x32", "num_frames": 5, "num_inference_steps": 2, "seed": 3}
        job = post(base, body, "/v1/videos").json()
        assert job["status"] in (QUEUED, IN_PROGRESS)
        seen, deadline = {job["status"]}, time.monotonic() + 120
        while (status := httpx.get(f"{base}/v1/videos/{job['id']}").json()["status"]) not in (
            COMPLETED,
            FAILED,
        ):
            seen.add(status)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status == COMPLETED
        content = httpx.get(f"{base}/v1/videos/{job['id']}/content")
        assert content.headers["content-type"] == "video/mp4"
        assert iio.imread(content.content, extension=".mp4").shape == (5, 32, 48, 3)
        assert_error(post(base, {"prompt": "x"}), 400, "makes videos")  # images route on a video model


# ---- the command line -------------------------------------------------------------------------------------


def test_cli_serve_flags():
    args = _parser().parse_args(
        [
            "serve",
            "--model",
            "m",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--mesh",
            "data=2",
            "--max-batch",
            "8",
            "--batch-wait-ms",
            "20",
            "--warmup",
            "1024x768,512x512",
            "--timeout",
            "30",
            "--max-pixels",
            "1048576",
            "--max-queue",
            "9",
        ]
    )
    assert (args.model, args.host, args.port, args.mesh, args.max_batch) == (
        "m",
        "0.0.0.0",
        8000,
        "data=2",
        8,
    )
    assert (args.batch_wait_ms, args.timeout, args.max_pixels, args.max_queue) == (20.0, 30.0, 1048576, 9)
    assert _warmup_sizes(args.warmup, {}) == [(768, 1024), (512, 512)]
    assert _warmup_sizes("default", {"height": 64, "width": 32}) == [(64, 32)]
    assert _warmup_sizes("none", {}) == []
    assert main(["serve", "--max-batch", "0"]) == 2
    assert main(["serve", "--warmup", "64"]) == 2  # checked before the model loads


def _get_json(base: str, path: str):
    with contextlib.suppress(httpx.HTTPError):
        r = httpx.get(base + path, timeout=2)
        return r.json()
    return None


def test_sigterm_finishes_in_flight_work_and_exits_0():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "jdiff",
        "serve",
        "--port",
        str(port),
        "--max-batch",
        "1",
        "--warmup",
        "none",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ)
    try:
        deadline = time.monotonic() + 120
        while _get_json(base, "/health") is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
        with ThreadPoolExecutor(2) as pool:
            # No warm-up: the first request compiles, so it is still running when the signal comes.
            first = pool.submit(post, base, {"prompt": "a white circle", "seed": 1})
            while (_get_json(base, "/health") or {}).get("running") != 1:
                assert not first.done(), first.result().text
                time.sleep(0.05)
            second = pool.submit(post, base, {"prompt": "a red square", "seed": 2})
            while (_get_json(base, "/health") or {}).get("queued") != 1:
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            r1, r2 = first.result(120), second.result(120)
        assert r1.status_code == 200 and decode(r1.json()["data"][0]).shape == (64, 64, 3)
        assert_error(r2, 503, "shut down")
        assert proc.wait(60) == 0
        log = proc.stdout.read().decode()
        assert "POST /v1/images/generations 200 queue" in log and "Traceback" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
