"""LoRA over HTTP: `/v1/loras` CRUD, the `loras` request field, adapters mixed in one batch."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import jdiff
from jdiff.server import create_app
from tests import lora_files
from tests.server.test_server import assert_error, live, post

MODULES = ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp", "proj_out"]
BODY = {"prompt": "a red square", "size": "64x64", "seed": 5, "num_inference_steps": 2}


def _write(gen, path, seed: int):
    """A LoRA for the embedded model's transformer (module shapes from jdiff's own parameters)."""
    params = gen.pipeline._params["transformer"]
    mods = {}
    for name in MODULES:
        node = params
        for part in name.split("."):
            node = node[part] if not part.isdigit() else node
        kernel = node["kernel"][...]
        mods[name] = torch.nn.Linear(kernel.shape[-2], kernel.shape[-1])
    return lora_files.write(path, mods, MODULES, seed=seed, std=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-server")
    gen = jdiff.DiffGenerator.from_pretrained()
    files = {"a": _write(gen, root / "a.safetensors", 0), "b": _write(gen, root / "b.safetensors", 1)}
    (root / "bad.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{}}}")
    files["bad"] = root / "bad.safetensors"
    gen.load_lora(files["a"], "a")  # as `jdiff serve --lora a=PATH` does
    with live(create_app(gen, max_batch=2, batch_wait_ms=300, timeout_s=120)) as base:
        yield base, files


def _image(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(int)


def test_lora_crud_and_request_field(server):
    url, files = server
    assert [a["name"] for a in httpx.get(url + "/v1/loras").json()["data"]] == ["a"]
    assert_error(post(url, {**BODY, "loras": {"nope": 1.0}}), 400, "unknown LoRA adapter(s) ['nope']")
    assert_error(post(url, {**BODY, "loras": {"a": "x"}}), 400, "loras")
    r = post(url, {"name": "b", "path": str(files["b"])}, path="/v1/loras")
    assert r.status_code == 200 and r.json()["name"] == "b", r.text
    assert_error(post(url, {"name": "b", "path": str(files["b"])}, path="/v1/loras"), 409, "already loaded")
    assert_error(
        post(url, {"name": "c", "path": str(files["bad"])}, path="/v1/loras"), 400, "bad.safetensors"
    )
    assert_error(post(url, {"name": "c", "path": "/no/such.safetensors"}, path="/v1/loras"), 400, "not exist")
    assert [a["name"] for a in httpx.get(url + "/v1/loras").json()["data"]] == ["a", "b"]
    base = _image(post(url, BODY))
    with_a = _image(post(url, {**BODY, "loras": {"a": 1.0}}))
    assert np.abs(with_a - base).max() > 10  # the adapter reached the image
    r = httpx.delete(url + "/v1/loras/b")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert_error(httpx.delete(url + "/v1/loras/b"), 404, "no LoRA named 'b'")
    assert_error(post(url, {**BODY, "loras": {"b": 1.0}}), 400, "unknown LoRA")
    np.testing.assert_array_equal(_image(post(url, {**BODY, "loras": {"a": 1.0}})), with_a)  # still usable


def test_requests_with_different_adapters_share_a_batch(server):
    url, files = server
    post(url, {"name": "b2", "path": str(files["b"])}, path="/v1/loras")
    try:
        bodies = [{**BODY, "loras": {"a": 1.0}}, {**BODY, "loras": {"b2": 0.8}}]  # only the adapter differs
        alone = [_image(post(url, b)) for b in bodies]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda b: post(url, b), bodies))
        assert [r.headers["x-batch-outputs"] for r in together] == ["2", "2"]
        for got, want in zip(together, alone, strict=True):
            assert np.abs(_image(got) - want).max() <= 2  # batch 2 vs 1: float rounding only
        assert np.abs(alone[0] - alone[1]).max() > 10
    finally:
        httpx.delete(url + "/v1/loras/b2")
