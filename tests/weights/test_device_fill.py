"""The device fill (jdiff.weights.device_fill) gives exactly the parameters of the host fill (loading.fill).

Real conversion plans on tiny saved directories: FLUX (stacked double and single blocks, torch kernels,
float32 -> bfloat16) and Wan (stacked blocks, 3-D conv kernels, keep_fp32 parameters), float32 and bfloat16
policies; bfloat16 and float16 source files; no host-side transform on the device path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jdiff import registry
from jdiff.weights import device_fill, plan
from jdiff.weights.loading import load_component, param_shapes, source_shapes
from jdiff.weights.plan import materialize, resolve
from jdiff.weights.safetensors import open_weights
from tests.fixtures_wan import saved, tiny_wan
from tests.utils import needs_8_devices
from tests.weights.test_plan import PLAN, TorchToy, _spec


def _flat(module) -> dict[str, jax.Array]:
    return {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(module))}


def _assert_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and g.shape == w.shape, k
        np.testing.assert_array_equal(np.asarray(g).view(np.uint8), np.asarray(w).view(np.uint8), err_msg=k)


def _both(monkeypatch, load) -> tuple[dict, dict]:
    """(device fill, host fill) parameters of `load()`; the device fill runs no host-side transform."""
    calls = []
    monkeypatch.setenv("JDIFF_FAST_LOAD", "1")  # off by default on CPU
    monkeypatch.setattr(device_fill, "fill_on_device", _counting(device_fill.fill_on_device, calls))
    monkeypatch.setattr(device_fill, "materialize", _forbidden)
    fast = _flat(load())
    assert calls, "the device fill was not used"
    monkeypatch.undo()
    monkeypatch.setenv("JDIFF_FAST_LOAD", "0")
    slow = _flat(load())
    monkeypatch.undo()
    return fast, slow


def _counting(fn, calls):
    def wrapped(*a, **k):
        calls.append(1)
        return fn(*a, **k)

    return wrapped


def _forbidden(*_a, **_k):
    raise AssertionError("the device fill built a parameter on the host")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flux_components_identical(tiny_flux_dir, monkeypatch, dtype):
    model = registry.open_model(tiny_flux_dir)
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        fast, slow = _both(monkeypatch, lambda n=name: model.load(n, dtype=dtype)[1])
        _assert_identical(fast, slow)
        if name == "transformer":  # stacked torch kernels, transposed on the device
            assert fast["transformer_blocks.attn.to_q.kernel"].ndim == 3
    assert fast["encoder.conv_in.kernel"].dtype == dtype  # the VAE's 2-D conv kernel


def test_wan_stacked_conv_and_fp32(monkeypatch):
    model = registry.open_model(saved(tiny_wan("t2v")))
    fast, slow = _both(monkeypatch, lambda: model.load("transformer", dtype=jnp.bfloat16)[1])
    _assert_identical(fast, slow)
    dtypes = {v.dtype for v in fast.values()}
    assert dtypes == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}  # keep_fp32 paths stay float32
    assert fast["patch_embedding.kernel"].ndim == 5  # a 3-D conv kernel, permuted on the device
    fast, slow = _both(monkeypatch, lambda: model.load("vae", dtype=jnp.bfloat16)[1])
    _assert_identical(fast, slow)


@pytest.mark.parametrize("source", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_half_precision_sources(tmp_path, monkeypatch, source, dtype):
    ref = TorchToy(8, 3)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    sd = {k: v.detach().to(source).contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    keep = plan.Plan(rules=PLAN.rules, stacked=("blocks",), keep_fp32=(r"blocks\.norm\..*",))
    fast, slow = _both(
        monkeypatch, lambda: load_component(_spec(keep), tmp_path, cfg={"d": 8, "n": 3}, dtype=dtype)[1]
    )
    _assert_identical(fast, slow)
    assert fast["blocks.norm.scale"].dtype == jnp.float32
    assert fast["blocks.proj.kernel"].dtype == dtype
    want = sd["blocks.2.proj.weight"].float().numpy().T.astype(dtype)
    np.testing.assert_array_equal(np.asarray(fast["blocks.proj.kernel"][2]), want)


def test_budget_bounds_bytes_in_flight(tmp_path, monkeypatch):
    ref = TorchToy(8, 3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    weights = open_weights(tmp_path)
    graphdef, state = _spec().abstract({"d": 8, "n": 3})
    assignments = resolve(PLAN, param_shapes(state), source_shapes(weights), component="toy")
    used = []
    take = device_fill._Budget.take

    def spying(self, n):
        got = take(self, n)
        used.append(self.used)
        return got

    monkeypatch.setattr(device_fill._Budget, "take", spying)
    module = device_fill.fill_on_device(
        graphdef,
        state,
        {a.target: a for a in assignments},
        weights.read,
        dtype_of=lambda _: np.float32,
        threads=4,
        budget=300,  # under the largest parameter's bytes: those go one at a time
    )
    assert len(used) == len(assignments) and max(used) <= 300
    np.testing.assert_array_equal(module.head.kernel[...], ref.head_weight.weight.detach().numpy().T)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_checkpoint_params_equal_diffusers_dir(tiny_flux_dir, tmp_path, monkeypatch, dtype):
    from jdiff.convert.run import convert

    ckpt = registry.open_model(convert(tiny_flux_dir, tmp_path / "ckpt", dtype=dtype))
    model = registry.open_model(tiny_flux_dir)
    monkeypatch.setenv("JDIFF_FAST_LOAD", "1")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        want = _flat(model.load(name, dtype=jnp.dtype(dtype))[1])
        _assert_identical(_flat(ckpt.load(name, dtype=jnp.dtype(dtype))[1]), want)


def test_offload_host_memory_identical(tiny_flux_dir, monkeypatch):
    model = registry.open_model(tiny_flux_dir)
    model.host_memory = True  # offload=: every parameter in the device's pinned host memory
    fast, slow = _both(monkeypatch, lambda: model.load("transformer", dtype=jnp.bfloat16)[1])
    _assert_identical(fast, slow)
    assert {v.sharding.memory_kind for v in fast.values()} == {"pinned_host"}
    assert {v.sharding for v in fast.values()} == {v.sharding for v in slow.values()}


def test_offload_over_budget_built_on_host(tmp_path, monkeypatch):
    """An offloaded parameter larger than the budget never passes through the device."""
    from jdiff.pipelines.offload import host_shardings

    ref = TorchToy(8, 3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    weights = open_weights(tmp_path)
    graphdef, state = _spec().abstract({"d": 8, "n": 3})
    assignments = resolve(PLAN, param_shapes(state), source_shapes(weights), component="toy")
    on_host = []
    monkeypatch.setattr(
        device_fill, "materialize", lambda a, r: on_host.append(a.target) or materialize(a, r)
    )
    shardings = host_shardings(state, None)
    module = device_fill.fill_on_device(
        graphdef,
        state,
        {a.target: a for a in assignments},
        weights.read,
        dtype_of=lambda _: np.float32,
        sharding_of=shardings.get,
        budget=200,  # bytes read + bytes built: the stacked [3, 8] norms and biases (192) fit, kernels not
    )
    assert sorted(on_host) == ["blocks.proj.kernel", "conv.kernel"]
    flat = _flat(module)
    assert {v.sharding.memory_kind for v in flat.values()} == {"pinned_host"}
    np.testing.assert_array_equal(
        flat["blocks.proj.kernel"][1], ref.blocks[1]["proj"].weight.detach().numpy().T
    )


def test_default_device_context_is_kept(tmp_path, monkeypatch):
    ref = TorchToy(8, 2)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    monkeypatch.setenv("JDIFF_FAST_LOAD", "1")
    device = jax.devices()[-1]
    with jax.default_device(device):
        _, model = load_component(_spec(), tmp_path, cfg={"d": 8, "n": 2})
    assert all(v.sharding.device_set == {device} for v in _flat(model).values())


@needs_8_devices
@pytest.mark.parametrize("mesh", ["fsdp=8", "tensor=2,fsdp=4"])
def test_sharded_identical(tiny_flux_dir, monkeypatch, mesh):
    """Over 8 devices: each gets its own source slices, transformed in place; same values and layouts."""
    from jdiff.api import _placement

    placement = _placement(mesh, "ulysses")
    model = registry.open_model(tiny_flux_dir)
    programs = []
    assemble_to = device_fill._assemble_to

    def recording(*key):
        fn = assemble_to(*key)
        return lambda parts: programs.append((fn, parts)) or fn(parts)

    for name in ("transformer", "text_encoder_2"):
        monkeypatch.setattr(device_fill, "_assemble_to", recording)  # _both undoes it before the host fill
        fast, slow = _both(
            monkeypatch, lambda n=name: model.load(n, dtype=jnp.bfloat16, placement=placement)[1]
        )
        _assert_identical(fast, slow)
        assert all(fast[k].sharding == slow[k].sharding for k in fast)
    kernel = fast["encoder.block.layer.1.DenseReluDense.wi_0.kernel"]  # T5: stacked, a torch kernel
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    # Each device transforms the slices it holds: the programs move nothing between devices.
    hlo = "\n".join(fn.lower(parts).compile().as_text() for fn, parts in programs)
    assert len(programs) > 20
    for op in ("all-to-all", "all-gather", "collective-permute", "all-reduce"):
        assert op not in hlo, op
