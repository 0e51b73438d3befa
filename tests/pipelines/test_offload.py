"""`offload="model"` / `"layers"`: the same outputs as resident weights, with the weights in host memory.

On CPU the `pinned_host` memory kind exists, so the host-memory paths (arguments in host memory, layers copied
in inside the scan) are the ones that run on GPU; jax refuses at trace time any op mixing host and device
operands, so a weight left in host memory where a stage computes with it fails here too.
"""

import gc

import jax
import numpy as np
import pytest
from flax import nnx

import jdiff
from jdiff.cli import main
from jdiff.errors import InputError
from jdiff.layers import stack
from jdiff.pipelines import memory
from jdiff.pipelines.offload import HOST, Offloaded
from tests.fixtures_wan import saved, tiny_wan

FLUX = dict(height=32, width=48, num_inference_steps=2, seed=3, output_type="np", max_sequence_length=16)
WAN = dict(
    height=32,
    width=48,
    num_frames=5,
    num_inference_steps=2,
    seed=3,
    output_type="np",
    max_sequence_length=16,
    guidance_scale=4.0,
)


def same(got: np.ndarray, want: np.ndarray, mode: str) -> None:
    """ "model" runs the resident program on the same weights: equal bits. "layers" compiles another loop
    (weights carried from one layer to the next), which XLA may fuse differently: equal to float32 rounding."""
    if mode == "model":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _kinds(state: nnx.State) -> set[str]:
    return {x.sharding.memory_kind for x in jax.tree.leaves(state)}


@pytest.fixture(scope="module")
def flux_resident(tiny_flux_dir):
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32")
    # true CFG: the batch of two runs through the streamed layers
    return gen.generate("a red circle", negative_prompt="blue", true_cfg_scale=3.0, **FLUX)


@pytest.mark.parametrize("mode", ["model", "layers"])
def test_flux_equals_resident(tiny_flux_dir, flux_resident, mode, monkeypatch):
    streamed = []
    real = stack._streamed_scan
    monkeypatch.setattr(stack, "_streamed_scan", lambda *a: streamed.append(1) or real(*a))
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32", offload=mode)
    params = gen.pipeline._params
    assert isinstance(params, Offloaded)
    for name in ("transformer", "clip", "t5", "vae"):
        assert _kinds(params.host(name)) == {HOST}  # loaded into host memory, never whole on the device
    brought = params["transformer"]
    stacked = brought["transformer_blocks"]
    assert _kinds(stacked) == ({HOST} if mode == "layers" else {"device"})
    assert _kinds(brought["x_embedder"]) == {"device"}
    assert _kinds(params["t5"]) == {"device"}  # text encoders: whole, in either mode
    del brought, stacked

    out = gen.generate("a red circle", negative_prompt="blue", true_cfg_scale=3.0, **FLUX)
    same(out.latents, flux_resident.latents, mode)
    same(out.images, flux_resident.images, mode)
    assert bool(streamed) == (mode == "layers")  # the layers were streamed inside the scan, not brought whole


def test_flux_device_copies_are_released(tiny_flux_dir):
    """The text encoders leave the device after encoding, the DiT after denoising."""
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32", offload="model")
    pipe = gen.pipeline
    gen.generate("a red circle", **FLUX)  # compiled: the next run allocates only what it keeps

    def live() -> int:
        gc.collect()
        return sum(memory.device_bytes(jax.live_arrays()).values())

    def nbytes(name: str) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(pipe._params.host(name)))

    seen = {}
    real = pipe.denoise_stage

    def denoise_stage(*args):
        seen["after_encoding"] = live()
        return real(*args)

    class Decode:  # the jitted decoder, recording what is live when it runs
        def __init__(self, fn):
            self.fn = fn

        def lower(self, *args, **kwargs):
            return self.fn.lower(*args, **kwargs)

        def __call__(self, *args, **kwargs):
            seen["decoding"] = live()
            return self.fn(*args, **kwargs)

    pipe.denoise_stage = denoise_stage
    pipe._decode = Decode(pipe._decode)
    before = live()
    gen.generate("a blue square", **FLUX)
    assert seen["after_encoding"] - before < nbytes("t5") + nbytes("clip")
    assert seen["decoding"] - before < nbytes("transformer")
    assert live() - before < nbytes("vae")  # nothing of the DiT or the encoders stays


@pytest.fixture(scope="module")
def wan_resident():
    cases = {}

    def get(kind: str):
        if kind not in cases:
            path = saved(tiny_wan(kind))
            cases[kind] = (
                path,
                jdiff.DiffGenerator.from_pretrained(path, dtype="float32").generate("a cat", **WAN),
            )
        return cases[kind]

    return get


@pytest.mark.parametrize("kind, mode", [("a14b", "layers")])
def test_wan_equals_resident(wan_resident, kind, mode):
    """The two-expert Wan2.2 A14B layout: each expert streamed inside `lax.cond` inside the sampling loop
    ("model" is family-agnostic: FLUX covers it)."""
    path, resident = wan_resident(kind)
    out = jdiff.DiffGenerator.from_pretrained(path, dtype="float32", offload=mode).generate("a cat", **WAN)
    same(out.latents, resident.latents, mode)
    same(out.frames, resident.frames, mode)


def test_checkpoint_restored_into_host_memory(tiny_flux_dir, flux_resident, tmp_path, monkeypatch):
    """A `jdiff convert` checkpoint goes straight into host memory too, and streams."""
    from jdiff.convert.run import convert

    streamed = []
    real = stack._streamed_scan
    monkeypatch.setattr(stack, "_streamed_scan", lambda *a: streamed.append(1) or real(*a))
    ckpt = convert(tiny_flux_dir, tmp_path / "ckpt", dtype="float32")
    gen = jdiff.DiffGenerator.from_pretrained(ckpt, dtype="float32", offload="layers")
    for name in ("transformer", "clip", "t5", "vae"):
        assert _kinds(gen.pipeline._params.host(name)) == {HOST}
    out = gen.generate("a red circle", negative_prompt="blue", true_cfg_scale=3.0, **FLUX)
    same(out.images, flux_resident.images, "layers")
    assert streamed


def test_bad_offload_value(capsys):
    with pytest.raises(InputError, match=r"offload must be one of \['model', 'layers'\].*got 'disk'"):
        jdiff.DiffGenerator.from_pretrained(None, offload="disk")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompt", "x", "--offload", "disk"])
    assert exit_.value.code == 2
    assert "--offload: invalid choice: 'disk'" in capsys.readouterr().err


def test_cli_offload(tiny_flux_dir, tmp_path, capsys):
    out = tmp_path / "a.png"
    args = ["--height", "32", "--width", "48", "--steps", "2", "--output", str(out), "--offload", "layers"]
    assert main(["generate", "--model", str(tiny_flux_dir), "--prompt", "a red circle", *args]) == 0
    assert out.is_file()


def test_fuse_lora_refused():
    """Per-request adapters work under offload (their factors stay on the device); folding them into host
    weights does not."""
    gen = jdiff.DiffGenerator.from_pretrained(None, offload="model")
    with pytest.raises(InputError, match="fuse_lora needs the weights on the device.*offload='model'"):
        gen.fuse_lora({"a": 1.0})


def test_lora_per_request(tiny_flux_dir, tmp_path):
    """Adapters on stacked and unstacked layers and on the text encoder, under "layers": the base weights
    stream from host memory, the factors stay on the device."""
    from tests import lora_files
    from tests.fixtures import tiny_flux_pipeline
    from tests.pipelines.test_lora import CLIP_MODULES, FLUX_MODULES

    pipe = tiny_flux_pipeline()  # the modules' names and shapes, for random adapter files
    a = lora_files.write(tmp_path / "a.safetensors", lora_files.linears(pipe.transformer), FLUX_MODULES)
    te = lora_files.write(
        tmp_path / "te.safetensors",
        lora_files.linears(pipe.text_encoder),
        CLIP_MODULES,
        prefix="text_encoder.",
    )
    images = {}
    for mode in (None, "layers"):
        gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32", offload=mode)
        gen.load_lora(a)
        gen.load_lora(te)
        images[mode] = gen.generate("a red circle", loras={"a": 0.8, "te": 1.0}, **FLUX).images
    same(images["layers"], images[None], "layers")


def test_mesh(tiny_flux_dir, flux_resident):
    """On 8 (fake) devices: host-memory arrays keep the shardings the rules give, and the result is the
    one-device result."""
    resident = jdiff.DiffGenerator.from_pretrained(
        tiny_flux_dir, dtype="float32", mesh="data=2,fsdp=2,context=2"
    )
    gen = jdiff.DiffGenerator.from_pretrained(
        tiny_flux_dir, dtype="float32", mesh="data=2,fsdp=2,context=2", offload="layers"
    )
    want = jax.tree.leaves(resident.pipeline._params["transformer"])
    got = jax.tree.leaves(gen.pipeline._params.host("transformer"))
    assert [x.sharding.spec for x in got] == [x.sharding.spec for x in want]
    assert {x.sharding.memory_kind for x in got} == {HOST}
    assert {len(x.sharding.device_set) for x in got} == {8}
    out = gen.generate("a red circle", negative_prompt="blue", true_cfg_scale=3.0, **FLUX)
    np.testing.assert_allclose(out.images, flux_resident.images, rtol=0, atol=1e-5)


def test_flux_layers_keep_leading_layers_resident(tiny_flux_dir, flux_resident, monkeypatch):
    """With room on the device, "layers" keeps each stack's first layers there for good (`stack.Split`) and
    streams the rest: the same images as resident weights, the device copies made once."""
    from jdiff.pipelines import offload

    streamed = []
    real = stack._streamed_scan
    monkeypatch.setattr(stack, "_streamed_scan", lambda *a: streamed.append(a[-1]) or real(*a))
    monkeypatch.setattr(offload, "resident_fraction", lambda params: 0.5)
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32", offload="layers")
    params = gen.pipeline._params
    blocks = params["transformer"]["transformer_blocks"]
    splits = [x for x in jax.tree.leaves(blocks, is_leaf=lambda x: isinstance(x, stack.Split))]
    assert splits and all(isinstance(x, stack.Split) for x in splits)
    assert {x.head.shape[0] for x in splits} == {1} and {x.tail.shape[0] for x in splits} == {2}
    assert _kinds([x.head for x in splits]) == {"device"} and _kinds([x.tail for x in splits]) == {HOST}
    again = jax.tree.leaves(
        params["transformer"]["transformer_blocks"], is_leaf=lambda x: isinstance(x, stack.Split)
    )
    assert all(a.head is b.head for a, b in zip(splits, again, strict=True))  # copied once, kept

    out = gen.generate("a red circle", negative_prompt="blue", true_cfg_scale=3.0, **FLUX)
    same(out.images, flux_resident.images, "layers")
    assert streamed and {span for span in streamed} == {(1, 2)}  # only layer 1 of each stack streamed


def test_resident_fraction_from_the_room(tiny_flux_dir, monkeypatch):
    from jdiff.pipelines import offload

    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, dtype="float32", offload="model")
    host = {name: gen.pipeline._params.host(name) for name in gen.pipeline._params}
    stacked = sum(
        x.nbytes
        for name in ("transformer",)
        for p, v in nnx.to_flat_state(host[name])
        if offload._stacked(v)
        for x in [v.get_value()]
    )
    monkeypatch.delenv("JDIFF_DEVICE_MEMORY", raising=False)
    assert offload.resident_fraction(host) == 0.0  # CPU: no capacity known
    monkeypatch.setenv("JDIFF_OFFLOAD_RESIDENT", str(stacked // 4))
    assert offload.resident_fraction(host) == pytest.approx(0.25, abs=1e-3)
    monkeypatch.setenv("JDIFF_OFFLOAD_RESIDENT", "0")
    assert offload.resident_fraction(host) == 0.0
    monkeypatch.setenv("JDIFF_OFFLOAD_RESIDENT", "half")
    with pytest.raises(InputError, match="JDIFF_OFFLOAD_RESIDENT must be a size in bytes like 24GB"):
        offload.resident_fraction(host)
    monkeypatch.delenv("JDIFF_OFFLOAD_RESIDENT")
    monkeypatch.setenv("JDIFF_DEVICE_MEMORY", "1TB")
    assert offload.resident_fraction(host) == 1.0
