"""The official OpenAI Python client against `jdiff serve`: images with the embedded tiny model (with and
without an API key), edits and videos with fake generators (the multipart bodies the client sends)."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from jdiff.server import create_app
from tests.server.test_server import FakeGen, live

openai = pytest.importorskip("openai")


def _client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.mark.parametrize("key", [None, "s3cret"])
def test_images_generate_with_the_tiny_model(tiny_gen, key):
    with live(create_app(tiny_gen, max_batch=2, timeout_s=120, api_key=key)) as base:
        client = _client(base, key or "anything")
        out = client.images.generate(
            prompt="a red square", n=2, size="64x64", extra_body={"seed": 3, "num_inference_steps": 4}
        )
        assert len(out.data) == 2 and _image(out.data[0].b64_json).size == (64, 64)
        assert out.data[0].model_extra["seed"] == 3 and out.data[1].model_extra["seed"] == 4
        assert client.models.retrieve("tiny-flux").id == "tiny-flux"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-image-1")
        with pytest.raises(openai.BadRequestError) as e:
            client.images.generate(prompt="x", stream=True)
        assert e.value.param == "stream"
        with pytest.raises(openai.BadRequestError) as e:
            client.images.generate(prompt="x", background="transparent")
        assert e.value.param == "background"
        if key is not None:
            with pytest.raises(openai.AuthenticationError) as e:
                _client(base, "wrong").images.generate(prompt="a red square", size="64x64")
            assert e.value.code == "invalid_api_key"


@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
def test_images_edit_and_videos_with_fake_models():
    gen = FakeGen()
    gen.pipeline.accepts_image, gen.pipeline.max_images = True, 2
    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (255, 0, 0)).save(buf, format="PNG")
    png = buf.getvalue()
    with live(create_app(gen, api_key="k")) as base:
        client = _client(base, "k")
        out = client.images.edit(image=("a.png", png, "image/png"), prompt="make it blue", size="16x8")
        assert _image(out.data[0].b64_json).size == (16, 8) and gen.calls[-1]["image"].size == (8, 4)
        pair = [("a.png", png, "image/png"), ("b.png", png, "image/png")]
        client.images.edit(image=pair, prompt="both", extra_body={"seed": 5})
        assert len(gen.calls[-1]["image"]) == 2 and gen.calls[-1]["seed"] == [5]

    gen = FakeGen(is_video=True)
    with live(create_app(gen, api_key="k")) as base:
        client = _client(base, "k")
        video = client.videos.create(prompt="a boat", seconds="4", size="16x8")
        deadline = time.monotonic() + 10
        while (video := client.videos.retrieve(video.id)).status not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert video.status == "completed" and gen.calls[-1]["num_frames"] == 17  # 4 s at 4 fps, + 1
        assert client.videos.download_content(video.id).read() == b"fake mp4 a boat"
        assert client.videos.delete(video.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video.id)
