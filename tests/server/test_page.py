"""The try-it page at `GET /`: served open (even with an API key), its form and the endpoints its script
calls; its script run in Node with a minimal DOM against a live server (images from the embedded model, a
video from a fake one); in headless Chromium where one is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import httpx
import pytest

from jdiff.server import create_app
from tests.server.test_server import FakeGen, live

RUN_PAGE = Path(__file__).parent / "page" / "run_page.js"
NODE = shutil.which("node")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_page_is_served_with_its_form_and_calls_the_api():
    with live(create_app(FakeGen(), api_key="k")) as base:
        r = httpx.get(base + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        for field in ('id="prompt"', 'id="negative_prompt"', 'id="size"', 'id="steps"', 'id="seed"'):
            assert field in html, field
        for call in (
            '"/v1/models"',
            '"/v1/images/generations"',
            '"/v1/videos"',
            '"Server-Timing"',
            "Bearer ",
        ):
            assert call in html, call
        assert httpx.get(base + "/v1/models").status_code == 401  # the page is open, the API is not


def _run_page(base: str, **query) -> dict:
    url = f"{base}/?{urllib.parse.urlencode({**query, 'autorun': 1})}"
    out = subprocess.run([NODE, str(RUN_PAGE), url], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(NODE is None, reason="node is not installed: the page's script is not run")
def test_page_generates_images_with_the_tiny_model(tiny_gen):
    with live(create_app(tiny_gen, max_batch=2, timeout_s=120)) as base:
        got = _run_page(base, prompt="a red square", size="64x64", seed=2)
        assert not got["error"], got
        assert "tiny-flux" in got["model"] and "seed 2" in got["status"], got
        assert got["images"] == ["data:image/png;base64,iVBORw0K"]  # a PNG
        assert {"queue", "text_encoding", "denoising", "decoding", "total"} <= set(got["timings"]), got
        bad = _run_page(base, prompt="x", size="65x64")
        assert bad["error"] and "not divisible" in bad["status"], bad


@pytest.mark.skipif(NODE is None, reason="node is not installed: the page's script is not run")
def test_page_plays_a_video_from_a_video_model():
    with live(create_app(FakeGen(is_video=True))) as base:
        got = _run_page(base, prompt="a boat", seed=4)
        assert not got["error"] and got["videos"] == 1 and "seed 4" in got["status"], got
        assert "denoising" in got["timings"], got


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium / google-chrome binary: the page is not driven in a browser"
)
def test_page_in_headless_chromium(tiny_gen):
    with live(create_app(tiny_gen, max_batch=2, timeout_s=120)) as base:
        url = f"{base}/?prompt=a+red+square&size=64x64&seed=2&autorun=1"
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=120000"]
        out = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert 'src="data:image/png;base64,' in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
        assert "denoising" in out.stdout
