"""`POST /v1/images/edits` as a multipart form (OpenAI's: `image` or `image[]` files) and as JSON: a fake
generator for the form's rules, and a tiny Qwen-Image-Edit-Plus model for a real two-image edit."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
from PIL import Image

import jdiff
from jdiff.server import create_app
from tests.fixtures_qwen_image import saved, tiny_qwen_image_pipeline
from tests.server.test_server import FakeGen, assert_error, decode, live

EDITS = "/v1/images/edits"


def _png(w: int, h: int, color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _form(base: str, fields: dict, files: list, **kw) -> httpx.Response:
    return httpx.post(base + EDITS, data=fields, files=files, timeout=kw.pop("timeout", 120), **kw)


def _fake(max_images: int = 2) -> FakeGen:
    gen = FakeGen()
    gen.pipeline.accepts_image = True
    gen.pipeline.max_images = max_images
    return gen


def test_form_fields_and_files_reach_generate():
    gen = _fake()
    with live(create_app(gen)) as base:
        r = _form(
            base,
            {"prompt": "make it blue", "n": "2", "seed": "7", "num_inference_steps": "3", "true_cfg_scale": "2.5",
             "negative_prompt": "red", "size": "16x8"},
            [("image[]", ("a.png", _png(8, 4), "image/png")), ("image[]", ("b.png", _png(5, 6), "image/png"))],
        )  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert (
            len(body["data"]) == 2 and body["size"] == "16x8" and decode(body["data"][0]).shape == (8, 16, 3)
        )
        call = gen.calls[-1]
        assert [im.size for im in call["image"]] == [(8, 4), (5, 6)]
        assert call["num_inference_steps"] == 3 and call["true_cfg_scale"] == 2.5 and call["seed"] == [7, 8]
        assert call["negative_prompt"] == "red"
        # One `image` file: a single image, not a list.
        r = _form(base, {"prompt": "x"}, [("image", ("a.png", _png(3, 3), "image/png"))])
        assert r.status_code == 200 and gen.calls[-1]["image"].size == (3, 3)


def test_form_errors():
    gen = _fake(max_images=2)
    with live(create_app(gen)) as base:
        calls = len(gen.calls)
        png = ("a.png", _png(4, 4), "image/png")
        assert_error(_form(base, {"prompt": "x"}, [("other", png)]), 400, "image is required")
        assert_error(
            _form(base, {"prompt": "x"}, [("image[]", png)] * 3),
            400,
            "3 images sent; model fake takes at most 2",
        )
        not_image = ("notes.txt", b"just some text", "text/plain")
        assert_error(_form(base, {"prompt": "x"}, [("image", not_image)]), 400, "image is not a PNG, JPEG")
        assert_error(
            _form(base, {"prompt": "x"}, [("image[]", png), ("image[]", not_image)]), 400, "image[1]"
        )
        assert_error(_form(base, {"prompt": "x", "n": "two"}, [("image", png)]), 400, "n must be an integer")
        assert_error(_form(base, {"prompt": "x", "guidance_scale": "nan"}, [("image", png)]), 400, "finite")
        assert_error(_form(base, {"n": "1"}, [("image", png)]), 400, "prompt")
        assert len(gen.calls) == calls  # no bad request reached the model
        # JSON still works, with one base64 image or several.
        import base64

        b64 = base64.b64encode(_png(4, 4)).decode()
        r = httpx.post(base + EDITS, json={"prompt": "x", "image": [b64, b64]}, timeout=60)
        assert r.status_code == 200 and len(gen.calls[-1]["image"]) == 2
        assert_error(httpx.post(base + EDITS, json={"prompt": "x", "image": [b64] * 3}), 400, "at most 2")


def test_two_image_edit_with_a_tiny_edit_plus_model(tmp_path):
    """A real Qwen-Image-Edit-Plus directory: two uploaded images of different sizes; no size given, so the
    output follows the last image's aspect, as diffusers picks it."""
    path = saved(tiny_qwen_image_pipeline("edit_plus"), tmp_path / "edit-plus")
    (path / "jdiff_preset.json").write_text(
        json.dumps({"vae_image_area": 48 * 48, "condition_image_area": 40 * 40, "num_inference_steps": 2})
    )
    gen = jdiff.DiffGenerator.from_pretrained(path, dtype="float32")
    with live(create_app(gen, max_batch=1, timeout_s=300)) as base:
        files = [
            ("image[]", ("a.png", _png(56, 40), "image/png")),
            ("image[]", ("b.png", _png(30, 64, (0, 0, 255)), "image/png")),
        ]
        r = _form(base, {"prompt": "a red circle", "seed": "3"}, files, timeout=300)
        assert r.status_code == 200, r.text
        image = decode(r.json()["data"][0])
        assert r.json()["size"] == "32x64" and image.shape == (64, 32, 3)  # 48^2 pixels at 30:64 -> 32x64
        assert np.ptp(image) > 0
        try:  # the official client's multipart form: the same two images, the same image back
            import openai
        except ImportError:
            pass
        else:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
            images = [(name, data, mime) for _, (name, data, mime) in files]
            out = client.images.edit(image=images, prompt="a red circle", extra_body={"seed": 3})
            assert out.data[0].b64_json == r.json()["data"][0]["b64_json"]
        assert_error(
            _form(base, {"prompt": "x"}, [("image[]", ("a.png", _png(8, 8), "image/png"))] * 4),
            400,
            "at most 3",
        )
