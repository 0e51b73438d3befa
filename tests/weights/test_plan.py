"""The conversion engine on a toy model: stacking, transforms, and every kind of problem reported at once."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jdiff.errors import ConversionError, InputError
from jdiff.layers import Conv, LayerNorm, Linear
from jdiff.weights.loading import ComponentSpec, load_component
from jdiff.weights.plan import Plan, Rule, export
from jdiff.weights.safetensors import open_weights
from tests.utils import rel_err


class Block(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.norm = LayerNorm(cfg["d"])
        self.proj = Linear(cfg["d"], cfg["d"], rngs=rngs)

    def __call__(self, x):
        return x + self.proj(self.norm(x))


class Toy(nnx.Module):
    def __init__(self, cfg, *, rngs):
        @nnx.split_rngs(splits=cfg["n"])
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(r):
            return Block(cfg, rngs=r)

        self.blocks = make(rngs)
        self.conv = Conv(3, cfg["d"], (3, 3), padding=1, rngs=rngs)
        self.head = Linear(cfg["d"], 2, rngs=rngs)

    def __call__(self, img):
        x = self.conv(img).mean((1, 2))
        gd, st = nnx.split(self.blocks)
        x, _ = __import__("jax").lax.scan(lambda c, s: (nnx.merge(gd, s)(c), None), x, st)
        return self.head(x)


class TorchToy(torch.nn.Module):
    def __init__(self, d, n):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(d), "proj": torch.nn.Linear(d, d)})
            for _ in range(n)
        )
        self.conv = torch.nn.Conv2d(3, d, 3, padding=1)
        self.head_weight = torch.nn.Linear(d, 2)  # named differently on purpose: needs a rule

    def forward(self, img):
        x = self.conv(img).mean((2, 3))
        for b in self.blocks:
            x = x + b["proj"](b["norm"](x))
        return self.head_weight(x)


PLAN = Plan(
    rules=(
        Rule(r"head\.kernel", "head_weight.weight", "torch_kernel"),
        Rule(r"head\.bias", "head_weight.bias"),
    ),
    stacked=("blocks",),
)


def _spec(plan=PLAN):
    return ComponentSpec("Toy", dict, Toy, plan)


def _save(tmp_path, model, drop=(), extra=None):
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    sd.update(extra or {})
    save_file(sd, str(tmp_path / "model.safetensors"))


def test_parity_through_plan(tmp_path):
    ref = TorchToy(8, 3)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _save(tmp_path, ref)
    _, model = load_component(_spec(), tmp_path, cfg={"d": 8, "n": 3})
    img = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    want = ref(torch.from_numpy(img)).detach().numpy()
    got = model(jnp.asarray(img.transpose(0, 2, 3, 1)))
    assert rel_err(got, want) < 1e-5


def test_problems_are_collected(tmp_path):
    ref = TorchToy(8, 3)
    _save(
        tmp_path,
        ref,
        drop=("blocks.1.proj.weight",),
        extra={"stray.weight": torch.zeros(1), "conv.bias": torch.zeros(5)},
    )
    with pytest.raises(ConversionError) as e:
        load_component(_spec(), tmp_path, cfg={"d": 8, "n": 3})
    msg = str(e.value)
    assert "missing source key 'blocks.1.proj.weight'" in msg
    assert "unexpected source key 'stray.weight'" in msg
    assert "shape mismatch for target 'conv.bias'" in msg
    assert len(e.value.problems) == 3


def test_ignore_and_keep_fp32(tmp_path):
    ref = TorchToy(8, 2)
    _save(tmp_path, ref, extra={"stray.weight": torch.zeros(1)})
    plan = Plan(
        rules=PLAN.rules, stacked=("blocks",), ignore=(r"stray\..*",), keep_fp32=(r"blocks\..*norm.*",)
    )
    _, model = load_component(_spec(plan), tmp_path, cfg={"d": 8, "n": 2}, dtype=jnp.bfloat16)
    assert model.blocks.norm.scale[...].dtype == jnp.float32
    assert model.blocks.proj.kernel[...].dtype == jnp.bfloat16
    assert model.blocks.proj.kernel[...].shape == (2, 8, 8)


def test_truncated_and_corrupt_files(tmp_path):
    _save(tmp_path, TorchToy(8, 1))
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-7])
    with pytest.raises(InputError, match="truncated"):
        open_weights(tmp_path)
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InputError, match="not valid JSON"):
        open_weights(tmp_path)
    f.unlink()
    with pytest.raises(InputError, match=r"no \.safetensors weights"):
        open_weights(tmp_path)


def test_export_round_trips(tmp_path):
    ref = TorchToy(8, 3)
    _save(tmp_path, ref)
    _, model = load_component(_spec(), tmp_path, cfg={"d": 8, "n": 3})
    params = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
    exported = export(PLAN, params)
    want = ref.state_dict()
    assert sorted(exported) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(exported[k], v.numpy())
