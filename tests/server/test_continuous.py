"""`jdiff serve --batching continuous` over HTTP with the embedded model: concurrent requests of different step
counts give the bytes each gives alone; what slots cannot take runs request-level; a withdrawn request leaves
its slot at the next chunk boundary; slot occupancy reaches /metrics."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import jdiff
from jdiff.server import create_app
from jdiff.server.batcher import ImageRequest, ShuttingDown
from jdiff.server.continuous import ContinuousBatcher
from tests.server.test_server import live, post

SLOTS = 2


@pytest.fixture(scope="module")
def server(tiny_gen):
    app = create_app(
        tiny_gen, batching="continuous", slots=SLOTS, chunk_steps=2, max_steps=8, max_batch=2, timeout_s=120,
        warmup=[(64, 64)],
    )  # fmt: skip
    with live(app) as base:
        deadline = time.monotonic() + 120
        while httpx.get(base + "/health").status_code != 200:
            assert time.monotonic() < deadline, "warm-up did not finish"
            time.sleep(0.1)
        yield base, app


def test_concurrent_requests_give_their_bytes_alone(server):
    base, _ = server
    bodies = [
        {"prompt": "a red square", "seed": 1, "num_inference_steps": 3},
        {"prompt": "a blue circle", "seed": 2, "num_inference_steps": 6},
        {"prompt": "a red square", "seed": 3, "num_inference_steps": 5, "n": 2},
        {"prompt": "a green line", "seed": 4, "num_inference_steps": 2},
    ]
    alone = [post(base, b) for b in bodies]
    assert [r.status_code for r in alone] == [200] * 4, alone[0].text
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: post(base, b), bodies))
    assert [r.status_code for r in together] == [200] * 4
    assert max(int(r.headers["x-batch-outputs"]) for r in together) > 1  # they did share the slots
    for a, t in zip(alone, together, strict=True):
        assert [d["b64_json"] for d in t.json()["data"]] == [d["b64_json"] for d in a.json()["data"]]
        assert [d["seed"] for d in t.json()["data"]] == [d["seed"] for d in a.json()["data"]]
    # Longer than --max-steps, or true CFG: request-level batching, still answered.
    assert post(base, {"prompt": "x", "seed": 1, "num_inference_steps": 9}).status_code == 200
    body = {"prompt": "x", "negative_prompt": "y", "true_cfg_scale": 2.0, "num_inference_steps": 2}
    assert post(base, body).status_code == 200


def test_server_timing_has_each_requests_stages(server):
    """Continuous batching's Server-Timing: the request-level stages, measured on the device per request."""
    base, _ = server
    bodies = [{"prompt": "a red square", "seed": 1, "num_inference_steps": s} for s in (2, 6)]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda b: post(base, b), bodies))
    for r in responses:
        assert r.status_code == 200, r.text
        timing = {
            k.strip(): float(v.removeprefix("dur="))
            for k, v in (part.split(";") for part in r.headers["server-timing"].split(","))
        }
        stages = ("text_encoding", "slot_wait", "denoising", "decoding")
        assert set(timing) == {"queue", "generate", *stages, "encode", "total"}, timing
        assert all(v >= 0 for v in timing.values()) and timing["denoising"] > 0 and timing["decoding"] > 0
        # One after the other within the request's work (values rounded to 0.1 ms).
        assert sum(timing[k] for k in stages) <= timing["generate"] + 0.5 <= timing["total"] + 0.5


def test_image_to_video_runs_in_slots():
    """A Wan I2V request (its image) goes to slots; one slots refuse goes request-level, saying why."""
    from PIL import Image

    from tests.fixtures_wan import saved, tiny_wan

    gen = jdiff.DiffGenerator.from_pretrained(saved(tiny_wan("i2v")))
    batcher = ContinuousBatcher(gen.pipeline, gen.generate, slots=1, chunk_steps=2, max_steps=4)
    image = Image.new("RGB", (48, 32), (200, 30, 60))
    params = {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2, "image": image}
    parsed, why = batcher.route(ImageRequest("a cat", 1, 1, params, batchable=False))
    assert why is None and parsed[0].images is not None
    parsed, why = batcher.route(ImageRequest("a cat", 1, 1, {**params, "num_inference_steps": 5}))
    assert parsed == [] and why == "5 steps exceed the slots' max_steps 4"


def test_a_withdrawn_request_frees_its_slot_and_tasks_wait_for_slots(server):
    base, app = server
    batcher = app.state.batcher
    gate, seen = threading.Event(), []
    chunks = batcher.stats()["chunks"]

    def submit(seed):
        # A preview is delivered on the device worker: blocking it pauses the worker with the request in its slot.
        params = {"height": 64, "width": 64, "num_inference_steps": 8}  # four chunks of 2 steps
        return batcher.submit(
            ImageRequest("a long one", 1, seed, params, partial_images=1, on_preview=lambda *_: gate.wait())
        )

    future = submit(5)
    _until(lambda: batcher.stats()["slots_busy"] == 1 and batcher.stats()["chunks"] - chunks == 3)
    metrics = {
        s.name: s.value
        for f in text_string_to_metric_families(httpx.get(base + "/metrics").text)
        for s in f.samples
    }
    assert metrics["jdiff_slots"] == SLOTS and metrics["jdiff_slots_busy"] == 1
    assert batcher.withdraw(future) is False  # running: it stops at the next chunk boundary
    gate.set()
    _until(lambda: batcher.stats()["slots_busy"] == 0)
    assert not future.done() and batcher.counts["cancelled"] == 1
    assert batcher.stats()["chunks"] - chunks == 3  # no chunk ran after the withdrawal

    # A task (e.g. loading a LoRA) waits for the running slots, and no request takes a slot meanwhile.
    gate.clear()
    first = submit(6)
    _until(lambda: batcher.stats()["slots_busy"] == 1)
    task = batcher.submit_task(lambda: seen.append((batcher.runner.busy, first.done())))
    second = submit(7)
    gate.set()
    task.result(60)
    assert seen == [(0, True)]
    assert second.result(60).images.shape == (1, 64, 64, 3)


def test_a_failing_chunk_fails_its_request_and_the_server_goes_on(server, monkeypatch):
    base, app = server
    runner, real, calls = app.state.batcher.runner, app.state.batcher.runner.advance, []

    def advance():
        if not calls:
            calls.append(1)
            raise RuntimeError("the device fell over")
        return real()

    monkeypatch.setattr(runner, "advance", advance)
    body = {"prompt": "x", "seed": 1, "num_inference_steps": 2}
    r = post(base, body)
    assert r.status_code == 500 and "device worker failed" in r.json()["error"]["message"], r.text
    assert post(base, body).status_code == 200 and runner.busy == 0


def test_stop_past_its_grace_cancels_the_running_slots(tiny_gen):
    batcher = ContinuousBatcher(
        tiny_gen.pipeline, tiny_gen.generate, slots=1, chunk_steps=2, max_steps=8, max_batch=1
    )
    batcher.start()
    gate = threading.Event()
    params = {"height": 64, "width": 64, "num_inference_steps": 8}
    future = batcher.submit(
        ImageRequest("x", 1, 1, params, partial_images=1, on_preview=lambda *_: gate.wait())
    )
    _until(lambda: batcher.stats()["chunks"] == 3)  # paused in its preview, 6 of 8 steps done
    stopper = threading.Thread(target=batcher.stop, args=(0.2,))
    stopper.start()
    time.sleep(0.5)  # past the grace: the running slot is cancelled at the next chunk boundary
    gate.set()
    stopper.join(60)
    assert not batcher.alive and isinstance(future.exception(5), ShuttingDown)
    assert batcher.stats()["chunks"] == 3


def _until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_cli_batching_flags():
    from jdiff.cli import _parser, main
    from jdiff.server.options import app_options

    args = _parser().parse_args(["serve", "--batching", "continuous", "--slots", "3", "--chunk-steps", "2"])
    got = app_options(args)
    assert (got["batching"], got["slots"], got["chunk_steps"], got["max_steps"]) == ("continuous", 3, 2, None)
    assert (
        not got["serial_slots"]
        and app_options(_parser().parse_args(["serve", "--serial-slots"]))["serial_slots"]
    )
    assert app_options(_parser().parse_args(["serve"]))["batching"] == "request"
    assert main(["serve", "--slots", "0"]) == 2  # checked before the model loads
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        _parser().parse_args(["serve", "--batching", "steps"])


def test_streaming_sends_partial_images_then_the_image(server):
    base, _ = server
    body = {"prompt": "a red square", "seed": 7, "num_inference_steps": 6}
    plain = post(base, body).json()["data"][0]
    events = []
    with httpx.stream("POST", base + "/v1/images/generations", json={**body, "stream": True, "partial_images": 2},
                      timeout=120) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1]
    assert (
        events[-1]["b64_json"] == plain["b64_json"] and events[-1]["seed"] == 7
    )  # streaming changes nothing
    assert events[0]["b64_json"] != events[1]["b64_json"] != plain["b64_json"]  # previews of the prediction

    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key="none")
    got = list(client.images.generate(prompt="a red square", stream=True, partial_images=1, extra_body=body))
    assert [e.type for e in got] == ["image_generation.partial_image", "image_generation.completed"]
    assert got[-1].b64_json == plain["b64_json"]
    r = post(base, {**body, "stream": True, "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = post(
        base, {**body, "stream": True, "partial_images": 1, "true_cfg_scale": 2.0, "negative_prompt": "y"}
    )
    assert r.status_code == 400 and "step-level" in r.json()["error"]["message"]


def test_video_jobs_share_slots_and_give_their_frames_alone():
    import imageio.v3 as iio

    from tests.fixtures_wan import saved, tiny_wan

    gen = jdiff.DiffGenerator.from_pretrained(saved(tiny_wan("t2v")))
    app = create_app(gen, batching="continuous", slots=2, chunk_steps=2, max_steps=4, timeout_s=120)
    base_body = {"prompt": "a cat", "size": "48x32", "num_frames": 5}
    bodies = [
        {**base_body, "seed": 3, "num_inference_steps": 4},
        {**base_body, "seed": 4, "num_inference_steps": 2},
    ]
    with live(app) as base:

        def run(body):
            job = post(base, body, "/v1/videos").json()
            assert "id" in job, job
            _until(
                lambda: (
                    httpx.get(f"{base}/v1/videos/{job['id']}").json()["status"] in ("completed", "failed")
                ),
                120,
            )
            assert httpx.get(f"{base}/v1/videos/{job['id']}").json()["status"] == "completed"
            return iio.imread(httpx.get(f"{base}/v1/videos/{job['id']}/content").content, extension=".mp4")

        alone = [run(b) for b in bodies]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(run, bodies))
        assert app.state.batcher.stats()["slots"] == 2 and app.state.batcher.stats()["chunks"] > 0
    for a, t in zip(alone, together, strict=True):
        assert a.shape == (5, 32, 48, 3)
        np.testing.assert_array_equal(a, t)  # the same frames, so the same decoded mp4
