"""What an operator needs from `jdiff serve`: the API key, health gated on warm-up, Prometheus metrics,
overload (429 + Retry-After, withdrawn requests), the model card by id, video deletion, OpenAI fields that
are refused by name. Fake generators only: every test here takes about a second."""

from __future__ import annotations

import hmac
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jdiff.server import create_app, middleware
from jdiff.server.validation import default_max_pixels
from tests.server.test_server import FAKE_TIMINGS, FakeGen, assert_error, live, post

GEN = "/v1/images/generations"


class GatedGen(FakeGen):
    """A FakeGen whose calls for prompts containing "wait" block until `release` is set."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.release, self.entered = threading.Event(), threading.Event()

    def generate(self, prompt, **kw):
        if any("wait" in p for p in (prompt if isinstance(prompt, list) else [prompt])):
            self.entered.set()
            assert self.release.wait(30)
        return super().generate(prompt, **kw)


def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _prompts(gen):
    return [c["prompt"] if isinstance(c["prompt"], str) else c["prompt"][0] for c in gen.calls]


# ---- API key ----------------------------------------------------------------------------------------------


def test_api_key_guards_every_v1_route_and_leaves_the_rest_open(monkeypatch):
    compared, compare = [], hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    gen = FakeGen()
    with live(create_app(gen, api_key="s3cret")) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = post(base, {"prompt": "x"}, headers=headers)
            err = assert_error(r, 401, "API key")
            assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        for path in ("/v1/models", "/v1/models/fake", "/v1/loras", "/v1/videos/video_1", "/v1/nowhere"):
            assert_error(httpx.get(base + path), 401)
        assert not gen.calls
        ok = {"Authorization": "Bearer s3cret"}
        assert post(base, {"prompt": "x"}, headers=ok).status_code == 200
        assert post(base, {"prompt": "x"}, headers={"authorization": "bearer s3cret"}).status_code == 200
        assert httpx.get(base + "/v1/models", headers=ok).json()["data"][0]["id"] == "fake"
        assert (b"wrong", b"s3cret") in compared and (b"s3cret", b"s3cret") in compared  # constant time
        for path in ("/", "/health", "/liveness", "/metrics"):
            assert httpx.get(base + path).status_code == 200, path
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(base + "/metrics").text)}
        counts = {
            (s.labels["endpoint"], s.labels["status"]): s.value
            for s in families["jdiff_requests"].samples
            if s.name == "jdiff_requests_total"
        }
        assert counts[(GEN, "401")] == 3 and counts[(GEN, "200")] == 2
        assert counts[("/v1/videos/{video_id}", "401")] == 1 and counts[("other", "401")] == 1


def test_cli_api_key_and_grace_options(monkeypatch):
    from jdiff.cli import _parser
    from jdiff.errors import InputError
    from jdiff.server.options import app_options

    args = _parser().parse_args(["serve", "--api-key", "k1", "--shutdown-grace", "5", "--max-frames", "33"])
    batching = {
        "batching": "request",
        "slots": None,
        "chunk_steps": 4,
        "max_steps": None,
        "serial_slots": False,
    }
    assert app_options(args) == {"api_key": "k1", "shutdown_grace_s": 5.0, "max_frames": 33, **batching}
    assert _parser().parse_args(["serve"]).max_pixels is None  # the model and device decide
    monkeypatch.setenv("JDIFF_API_KEY", "from-env")
    assert app_options(_parser().parse_args(["serve"]))["api_key"] == "from-env"
    assert app_options(args)["api_key"] == "k1"  # the flag wins
    monkeypatch.setenv("JDIFF_API_KEY", "")
    assert app_options(_parser().parse_args(["serve"]))["api_key"] is None
    bad_flags = (
        ["--api-key", " k "],
        ["--shutdown-grace", "-1"],
        ["--shutdown-grace", "inf"],
        ["--max-frames", "0"],
        ["--max-pixels", "0"],
    )
    for bad in bad_flags:
        with pytest.raises(InputError):
            app_options(_parser().parse_args(["serve", *bad]))


# ---- health, liveness, warm-up ---------------------------------------------------------------------------


def test_health_is_503_until_warm_up_ends_and_liveness_is_200_at_once():
    gen = GatedGen()
    real = gen.generate

    def warm(prompt, **kw):  # warm-up sends empty prompts: hold them at the gate
        return real(["wait"] if prompt == [""] else prompt, **kw)

    gen.generate = warm
    with live(create_app(gen, max_batch=1, warmup=[(16, 16)])) as base:
        assert gen.entered.wait(10)
        assert httpx.get(base + "/liveness").json() == {"status": "alive"}
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "warming_up"
        ready = {m.name: m for m in text_string_to_metric_families(httpx.get(base + "/metrics").text)}
        assert ready["jdiff_ready"].samples[0].value == 0
        gen.release.set()
        _until(lambda: httpx.get(base + "/health").status_code == 200)
        assert httpx.get(base + "/health").json()["status"] == "ok"


def test_a_failed_warm_up_reports_unhealthy():
    gen = FakeGen()
    gen.generate = lambda *a, **k: 1 / 0
    with live(create_app(gen, warmup=[(16, 16)])) as base:
        _until(lambda: httpx.get(base + "/health").json()["status"] != "warming_up")
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "warmup_failed"
        assert "ZeroDivisionError" in r.json()["error"]
        assert httpx.get(base + "/liveness").status_code == 200


# ---- metrics ------------------------------------------------------------------------------------------------


def _metrics(base):
    text = httpx.get(base + "/metrics").text
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}, text


def test_metrics_count_what_was_sent():
    gen = FakeGen()
    app = create_app(gen, max_batch=4, batch_wait_ms=0, warmup=[(16, 16)])
    other = create_app(FakeGen(), max_batch=2)  # a second app in the process: its own registry
    with live(app) as base:
        _until(lambda: httpx.get(base + "/health").status_code == 200)
        for body in ({"prompt": "a", "n": 2}, {"prompt": "b"}, {"prompt": "c", "n": 3}):
            assert post(base, body).status_code == 200
        assert_error(post(base, {"prompt": "x", "n": 9}), 400)
        assert_error(httpx.get(base + "/v1/no/such/route"), 404)
        assert httpx.get(base + "/v1/models").status_code == 200
        samples, text = _metrics(base)
        families = list(text_string_to_metric_families(text))
        requests = {
            (s.labels["endpoint"], s.labels["method"], s.labels["status"]): s.value
            for f in families
            for s in f.samples
            if s.name == "jdiff_requests_total"
        }
        assert requests == {
            (GEN, "POST", "200"): 3,
            (GEN, "POST", "400"): 1,
            ("other", "GET", "404"): 1,
            ("/v1/models", "GET", "200"): 1,
            ("/health", "GET", "200"): requests[("/health", "GET", "200")],
        }
        assert samples["jdiff_images_total"].value == 6  # warm-up outputs are not counted
        assert samples["jdiff_videos_total"].value == 0
        assert (
            samples["jdiff_batch_outputs_count"].value == 3 and samples["jdiff_batch_outputs_sum"].value == 6
        )
        stages = {
            s.labels["stage"]: s.value
            for f in families
            for s in f.samples
            if s.name == "jdiff_stage_seconds_count"
        }
        assert stages == dict.fromkeys(FAKE_TIMINGS, 3)
        denoise = [s for f in families for s in f.samples if s.name == "jdiff_stage_seconds_sum"]
        assert any(s.labels["stage"] == "denoising" and s.value == pytest.approx(0.06) for s in denoise)
        assert samples["jdiff_queue_depth"].value == 0 and samples["jdiff_ready"].value == 1
        assert samples["jdiff_queue_wait_seconds_count"].value == 3
        assert samples["jdiff_xla_compiles_total"].value >= 0
        assert "jdiff_request_seconds_bucket" in text
    assert b"jdiff_images_total 0.0" in other.state.metrics.exposition()[0]


def test_metrics_count_videos_and_stage_timings_reach_the_job():
    gen = FakeGen(is_video=True)
    with live(create_app(gen)) as base:
        job = post(base, {"prompt": "a boat", "num_frames": 5}, "/v1/videos").json()
        _until(lambda: httpx.get(f"{base}/v1/videos/{job['id']}").json()["status"] == "completed")
        assert httpx.get(f"{base}/v1/videos/{job['id']}").json()["timings"]["denoising"] == 0.02
        samples, _ = _metrics(base)
        assert samples["jdiff_videos_total"].value == 1 and samples["jdiff_images_total"].value == 0


# ---- OpenAI compatibility -----------------------------------------------------------------------------------


def test_model_by_id():
    with live(create_app(FakeGen(), model_name="org/fake-1")) as base:
        card = httpx.get(base + "/v1/models/org/fake-1").json()
        assert card["id"] == "org/fake-1" and card["object"] == "model"
        assert_error(httpx.get(base + "/v1/models/gpt-image-1"), 404, "serves 'org/fake-1'", param="model")


REFUSED = [
    ({"stream": True}, "stream"),
    ({"partial_images": 2}, "partial_images"),
    ({"background": "transparent"}, "background"),
    ({"quality": "high"}, "quality"),
    ({"moderation": "auto"}, "moderation"),
    ({"style": "vivid"}, "style"),
    ({"num_steps": 4}, "num_steps"),  # a typo: never silently the default
    ({"n": 99}, "n"),
    ({"size": "17x16"}, "size"),
    ({"seed": -1}, "seed"),
    ({"guidance_scale": "high"}, "guidance_scale"),
    ({"output_format": "gif"}, "output_format"),
]


def test_openai_fields_are_honoured_or_refused_by_name():
    gen = FakeGen()
    with live(create_app(gen)) as base:
        for extra, param in REFUSED:
            assert_error(post(base, {"prompt": "x", **extra}), 400, param, param=param)
        assert not gen.calls
        honoured = {
            "stream": False,
            "background": "opaque",
            "quality": "auto",
            "moderation": "low",
            "user": "u1",
        }
        assert post(base, {"prompt": "x", "model": "anything", **honoured}).status_code == 200
        gen.pipeline.accepts_image = True
        png = ("a.png", b"\x89PNG", "image/png")
        form = {"prompt": "x", "stream": "true"}
        r = httpx.post(base + "/v1/images/edits", data=form, files=[("image", png)])
        assert_error(r, 400, "stream", param="stream")
        r = httpx.post(base + "/v1/images/edits", data={"prompt": "x"}, files=[("image", png), ("mask", png)])
        assert_error(r, 400, "mask", param="mask")


def test_max_pixels_holds_for_default_and_auto_sizes():
    with live(create_app(FakeGen(), max_pixels=200)) as base:  # the preset is 16x16 = 256 pixels
        for body in ({"prompt": "x"}, {"prompt": "x", "size": "auto"}):
            assert_error(post(base, body), 400, "default 16x16", param="size")
        assert post(base, {"prompt": "x", "size": "8x16"}).status_code == 200


def test_max_pixels_defaults_to_the_model_and_device():
    gen = FakeGen()
    assert default_max_pixels(gen.pipeline, "cpu") == 4 * 16 * 16
    assert default_max_pixels(gen.pipeline, "gpu") == 2048 * 2048
    app = create_app(gen)  # the tests run on a CPU: twice the default size each side
    assert app.state.context.max_pixels == 1024
    with live(app) as base:
        assert_error(post(base, {"prompt": "x", "size": "1024x1024"}), 400, "--max-pixels", param="size")
        assert post(base, {"prompt": "x", "size": "32x32"}).status_code == 200


def test_max_frames_holds_for_given_and_default_lengths():
    gen = FakeGen(is_video=True)
    with live(create_app(gen, max_frames=9)) as base:
        videos = "/v1/videos"
        assert_error(
            post(base, {"prompt": "x", "num_frames": 13}, videos), 400, "13 frames", param="num_frames"
        )
        assert_error(post(base, {"prompt": "x", "seconds": "3"}, videos), 400, "at most 9", param="seconds")
        assert post(base, {"prompt": "x", "num_frames": 9}, videos).status_code == 200
        assert post(base, {"prompt": "x"}, videos).status_code == 200  # no default length: the pipeline's
        gen.pipeline.preset["num_frames"] = 17
        assert_error(post(base, {"prompt": "x"}, videos), 400, "default 17 frames", param="num_frames")
        assert httpx.get(base + "/v1/models").json()["data"][0]["max_frames"] == 9


# ---- videos: multipart, delete, eviction ------------------------------------------------------------------------


def test_video_multipart_delete_and_eviction():
    gen = GatedGen(is_video=True)
    gen.pipeline.accepts_image = True
    app = create_app(gen)
    directory = app.state.jobs.directory
    with live(app) as base:
        png = ("a.png", _png(), "image/png")
        r = httpx.post(
            base + "/v1/videos",
            data={"prompt": "a boat", "seconds": "2", "size": "16x8", "seed": "4"},
            files=[("input_reference", png)],
        )
        assert r.status_code == 200, r.text
        done = r.json()
        _until(lambda: httpx.get(f"{base}/v1/videos/{done['id']}").json()["status"] == "completed")
        call = gen.calls[-1]
        assert call["image"].size == (3, 2) and call["num_frames"] == 9 and call["seed"] == 4
        # A queued job is taken off the queue; a running one's output is discarded when it ends.
        running = post(base, {"prompt": "wait here"}, "/v1/videos").json()
        assert gen.entered.wait(10)
        queued = post(base, {"prompt": "never run"}, "/v1/videos").json()
        assert httpx.get(base + "/health").json()["queued"] == 1
        for job in (queued, running):
            r = httpx.delete(f"{base}/v1/videos/{job['id']}")
            assert r.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
            assert_error(httpx.get(f"{base}/v1/videos/{job['id']}"), 404)
        assert httpx.get(base + "/health").json()["queued"] == 0  # its place in the queue is free
        gen.release.set()
        _until(lambda: httpx.get(base + "/health").json()["running"] == 0)
        assert "never run" not in _prompts(gen)
        files = sorted(p.name for p in directory.iterdir())
        assert files == [f"{done['id']}.mp4"], files  # the deleted running job left no file
        # Evicted (its file gone) between the lookup and the download: 404, not 500.
        (directory / f"{done['id']}.mp4").unlink()
        assert_error(httpx.get(f"{base}/v1/videos/{done['id']}/content"), 404, "evicted")
        assert_error(httpx.delete(f"{base}/v1/videos/video_nope"), 404)
        assert_error(
            httpx.get(f"{base}/v1/videos/{done['id']}/content?variant=thumbnail"), 400, param="variant"
        )
        r = httpx.post(base + "/v1/videos", data={"prompt": "x", "num_frames": "x"})
        assert_error(r, 400, "integer", param="num_frames")


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (0, 255, 0)).save(buf, format="PNG")
    return buf.getvalue()


# ---- overload ------------------------------------------------------------------------------------------------


def test_a_full_queue_gets_429_with_retry_after():
    gen = GatedGen()
    with live(create_app(gen, max_batch=1, max_queue=1)) as base, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, base, {"prompt": "wait 1"})
        assert gen.entered.wait(10)
        second = pool.submit(post, base, {"prompt": "queued"})
        _until(lambda: httpx.get(base + "/health").json()["queued"] == 1)
        r = post(base, {"prompt": "one too many"})
        assert_error(r, 429, "retry later")
        assert int(r.headers["retry-after"]) >= 1
        gen.release.set()
        assert first.result(10).status_code == 200 and second.result(10).status_code == 200


def test_requests_whose_client_left_or_timed_out_are_dropped_before_they_run():
    gen = GatedGen()
    with live(create_app(gen, max_batch=1, timeout_s=30)) as base, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, base, {"prompt": "wait"})
        assert gen.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            post(base, {"prompt": "impatient"}, timeout=0.5)
        _until(lambda: httpx.get(base + "/health").json()["queued"] == 0, timeout=5)
        gen.release.set()
        assert first.result(10).status_code == 200
    assert "impatient" not in _prompts(gen)

    gen = GatedGen()
    with live(create_app(gen, max_batch=1, timeout_s=0.5)) as base, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, base, {"prompt": "wait"})
        assert gen.entered.wait(10)
        assert_error(post(base, {"prompt": "too late"}), 504, "not done within")
        assert httpx.get(base + "/health").json()["queued"] == 0  # withdrawn at once, not when popped
        gen.release.set()
        assert_error(first.result(10), 504)
        _until(lambda: httpx.get(base + "/health").json()["running"] == 0)
    assert "too late" not in _prompts(gen)


# ---- SIGTERM with a grace period -------------------------------------------------------------------------------

SERVE_FAKE = """
import sys
from tests.server.test_server import FakeGen
from jdiff.server import serve
ok = serve(FakeGen(sleep=60), port=int(sys.argv[1]), shutdown_grace_s=0.5, max_batch=1)
sys.exit(0 if ok else 1)
"""


def test_sigterm_after_the_grace_period_exits_0_without_waiting_for_the_device():
    import os
    import signal
    import socket
    import subprocess
    import sys

    from tests.server.test_server import REPO, _get_json

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", SERVE_FAKE, str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ)
    try:
        _until(lambda: proc.poll() is None and _get_json(base, "/health") is not None, timeout=60)
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(lambda: httpx.post(base + GEN, json={"prompt": "slow"}, timeout=60))
            _until(lambda: (_get_json(base, "/health") or {}).get("running") == 1)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert time.monotonic() - t0 < 20  # not the 60 s the generate call would take
            assert_error(stuck.result(30), 503, "shut down before this request finished")
        assert "abandoning the running generate call" in proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
