"""Memory planning: a request that cannot fit the device is refused with one line (exit 2) before it runs.

On CPU the device has no allocator limit; `JDIFF_DEVICE_MEMORY` sets one, as it can on a GPU.
"""

import gc

import jax
import numpy as np
import pytest

import jdiff
from jdiff.cli import main
from jdiff.errors import InputError
from jdiff.pipelines import memory

SMALL = dict(height=32, width=48, num_inference_steps=2, seed=1, output_type="np", max_sequence_length=16)


@pytest.fixture(scope="module")
def gen(tiny_flux_dir):
    return jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32")


@pytest.mark.parametrize(
    "text, n",
    [("1000", 1000), ("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("1.5 gb", 15 * 10**8), ("64k", 64000)],
)
def test_parse_bytes(text, n):
    assert memory.parse_bytes(text) == n


@pytest.mark.parametrize("text", ["lots", "24 GX", "-1GB", "iB"])
def test_parse_bytes_refuses(text):
    with pytest.raises(InputError, match="JDIFF_DEVICE_MEMORY must be a size in bytes like 24GB"):
        memory.parse_bytes(text)


def test_no_cap_no_check(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    assert not memory.enabled()  # CPU: no allocator limit, nothing checked
    monkeypatch.setenv(memory.ENV, "8GB")
    assert memory.capacity(jax.devices()[0]) == 8 * 10**9


def test_refused_before_any_compile(gen, monkeypatch):
    """Weights alone exceed the cap: refused at once, before the text encoders compile."""
    monkeypatch.setenv(memory.ENV, "64KiB")
    before = dict(gen.pipeline.trace_counts)
    with pytest.raises(InputError) as e:
        gen.generate("a red circle", **SMALL)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("this request needs about ")
    assert "but it has 0.1 MiB" in message and "48x32, batch 1" in message
    assert 'offload="layers"' in message and "fsdp" in message and "smaller size or batch" in message
    assert dict(gen.pipeline.trace_counts) == before  # nothing traced, nothing compiled


def test_refused_with_xla_figure(gen, monkeypatch):
    """The estimate passes, XLA's figure for the compiled denoising loop does not: refused before it runs."""
    monkeypatch.delenv(memory.ENV, raising=False)
    request = gen.pipeline.parse("a red circle", **{**SMALL, "height": 64, "width": 96})
    gc.collect()
    floor = max(memory.resident().values()) + gen.pipeline.activation_estimate(request)
    monkeypatch.setenv(memory.ENV, str(floor + 4096))
    with pytest.raises(
        InputError, match=r"that XLA plans for denoising at 96x64, batch 1.*offload=\"layers\""
    ):
        gen.generate("a red circle", **{**SMALL, "height": 64, "width": 96})


def test_fits_runs_unchanged(gen, monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    want = gen.generate("a red circle", **SMALL)
    monkeypatch.setenv(memory.ENV, "1TB")
    got = gen.generate("a red circle", **SMALL)
    np.testing.assert_array_equal(got.images, want.images)


def test_activation_estimate(gen):
    """FLUX at 512x512, batch 2: (512 / size_multiple)^2 tokens per image of the DiT's width."""
    pipe, tc = gen.pipeline, gen.pipeline.transformer_config
    request = pipe.parse("a", **{**SMALL, "height": 512, "width": 512, "num_outputs_per_prompt": 2})
    s, n = (512 // pipe.size_multiple) ** 2, tc.num_attention_heads
    unfused_logits = 2 * n * s * s * 4  # CPU runs attention on XLA: the [B, N, S, S] logits count
    want = memory.BLOCK_FACTOR * 2 * s * n * tc.attention_head_dim * 4 + unfused_logits
    assert pipe.activation_estimate(request) == want


def test_cli_exit_2(tiny_flux_dir, monkeypatch, capsys):
    monkeypatch.setenv(memory.ENV, "64KiB")
    rc = main(["generate", "--model", str(tiny_flux_dir), "--prompt", "x", "--height", "32", "--width", "48"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("jdiff: error: this request needs about ") and err.count("\n") == 1


def test_server_400(monkeypatch):
    """Through the existing app: the refusal is the request's fault, a 400 with the one line."""
    from jdiff.server import create_app
    from tests.server.test_server import assert_error, live, post

    gen = jdiff.DiffGenerator.from_pretrained(None)
    monkeypatch.setenv(memory.ENV, "64KiB")
    with live(create_app(gen, max_batch=1, timeout_s=120)) as base:
        r = post(base, {"prompt": "a red circle", "size": "64x64", "num_inference_steps": 1})
    assert_error(r, 400, "this request needs about ")
    assert 'offload="layers"' in r.json()["error"]["message"]
