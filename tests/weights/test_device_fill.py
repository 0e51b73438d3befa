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
from jdiff.weights.plan import resolve
from jdiff.weights.safetensors import open_weights
from tests.fixtures_wan import saved, tiny_wan
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
