"""Meshes and logical-to-mesh rules on 8 fake CPU devices: specs, fallbacks, parameter shardings, constraints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Linear
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.transformer import FluxTransformer2DModel
from jdiff.parallel import (
    AXES,
    activate,
    current,
    format_mesh,
    logical_to_spec,
    make_mesh,
    named_sharding,
    param_shardings,
    parse_mesh,
)
from tests.utils import rel_err


def test_parse_mesh():
    assert parse_mesh("data=2,fsdp=1,context=4,tensor=1") == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
    parsed = parse_mesh(" context = 4 , data=2 ")
    assert parsed == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
    assert list(parsed) == list(AXES)
    assert parse_mesh({"tensor": 2, "fsdp": np.int64(4)}) == {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
    assert parse_mesh("") == dict.fromkeys(AXES, 1)
    assert parse_mesh(format_mesh(parsed)) == parsed


@pytest.mark.parametrize(
    "spec,words",
    [
        ("pipe=2", ["unknown axis 'pipe'", "data, fsdp, context, tensor"]),
        ("data=2,data=2", ["twice"]),
        ("data=x", ["'x'", "not an integer"]),
        ("data=2.5", ["'2.5'", "not an integer"]),
        ("data=0", ["size 0", "positive"]),
        ("context=-1", ["size -1", "positive"]),
        ("data", ["not 'axis=size'"]),
        ("=2", ["not 'axis=size'"]),
        ("data=", ["not 'axis=size'"]),
        ("data=2,,context=4", ["empty entry"]),
        ({"data": True}, ["not an integer"]),
        ({"data": 2.0}, ["not an integer"]),
        ({"model": 2}, ["unknown axis 'model'"]),
        (8, ["string or a mapping"]),
    ],
)
def test_parse_mesh_rejects(spec, words):
    with pytest.raises(InputError) as e:
        parse_mesh(spec)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def _auto(mesh) -> bool:
    types = getattr(mesh, "axis_types", None)
    return types is None or all(t == jax.sharding.AxisType.Auto for t in types)


def test_make_mesh():
    mesh = make_mesh()
    assert mesh.axis_names == AXES
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
    assert _auto(mesh)
    mesh = make_mesh("data=2,context=4")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
    assert set(mesh.devices.flat) == set(jax.devices())
    assert _auto(mesh)
    one = make_mesh(devices=jax.devices()[:1])
    assert dict(one.shape) == dict.fromkeys(AXES, 1)
    four = make_mesh({"context": 2, "tensor": 2}, devices=jax.devices()[4:])
    assert list(four.devices.flat) == jax.devices()[4:]
    assert _auto(four)


def test_make_mesh_without_make_mesh_keywords(monkeypatch):
    """jax releases whose `make_mesh` lacks `devices` / `axis_types` get a `Mesh` built directly."""

    def old_make_mesh(shape, names):
        raise AssertionError("not reached")

    monkeypatch.setattr(jax, "make_mesh", lambda shape, names, **kw: old_make_mesh(shape, names, **kw))
    mesh = make_mesh("data=2,context=4")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
    assert list(mesh.devices.flat) == jax.devices()
    assert _auto(mesh)


def test_make_mesh_rejects():
    with pytest.raises(InputError, match=r"needs 4 devices but 8 are available.*product is 8"):
        make_mesh("context=4")
    with pytest.raises(InputError, match="needs 16 devices but 8"):
        make_mesh("data=2,context=8")
    with pytest.raises(InputError, match="unknown axis"):
        make_mesh("seq=8")


def test_logical_to_spec_names_only():
    assert logical_to_spec((sh.EMBED, sh.HEADS)) == P("fsdp", "tensor")
    assert logical_to_spec((sh.LAYERS, sh.EMBED, sh.MLP)) == P(None, "fsdp", "tensor")
    assert logical_to_spec((None, None, sh.CONV_IN, sh.CONV_OUT)) == P(None, None, None, "fsdp")
    assert logical_to_spec((sh.VOCAB, sh.EMBED)) == P(None, "fsdp")
    assert logical_to_spec((sh.LAYERS, sh.NORM)) == P(None, None)
    assert logical_to_spec((sh.BATCH, sh.LENGTH, sh.ACT_EMBED)) == P(("data", "fsdp"), "context", None)
    # A mesh axis is emitted once per spec: the first dim that asks for it gets it.
    assert logical_to_spec((sh.HEADS, sh.MLP)) == P("tensor", None)
    assert logical_to_spec(((sh.EMBED, sh.HEADS), sh.MLP)) == P(("fsdp", "tensor"), None)
    with pytest.raises(ValueError, match="'nonsense' has no rule"):
        logical_to_spec(("nonsense",))
    with pytest.raises(ValueError, match="rank"):
        logical_to_spec((sh.EMBED,), shape=(4, 4))


def test_logical_to_spec_on_mesh():
    mesh = make_mesh("data=2,fsdp=4")
    act = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)
    # context (size 1) and tensor (size 1) drop out; batch takes data, then fsdp while the batch divides.
    assert logical_to_spec(act, shape=(8, 16, 4), mesh=mesh) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(act, shape=(4, 16, 4), mesh=mesh) == P("data", None, None)
    assert logical_to_spec(act, shape=(1, 16, 4), mesh=mesh) == P(None, None, None)
    mesh = make_mesh("data=2,context=4")
    assert logical_to_spec(act, shape=(2, 16, 4), mesh=mesh) == P("data", "context", None)
    assert logical_to_spec(act, shape=(2, 77, 4), mesh=mesh) == P("data", None, None)  # CLIP's 77 tokens
    mesh = make_mesh("fsdp=2,tensor=4")
    assert logical_to_spec((sh.EMBED, sh.HEADS), shape=(8, 12), mesh=mesh) == P("fsdp", "tensor")
    assert logical_to_spec((sh.EMBED, sh.HEADS), shape=(3, 6), mesh=mesh) == P(None, None)
    # Without a shape, only the mesh's axis sizes matter.
    assert logical_to_spec((sh.EMBED, sh.HEADS), mesh=make_mesh("fsdp=8")) == P("fsdp", None)


def _tiny_flux(heads: int, head_dim: int, axes) -> FluxConfig:
    return FluxConfig(
        in_channels=8,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=24,
        pooled_projection_dim=20,
        guidance_embeds=True,
        axes_dims_rope=axes,
    )


def _specs(shardings) -> dict[str, P]:
    flat = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
    out = {}
    for path, s in flat:
        assert isinstance(s, NamedSharding)
        out[".".join(str(getattr(k, "key", k)) for k in path)] = s.spec
    return out


def test_param_shardings_flux():
    cfg = _tiny_flux(2, 16, (4, 6, 6))  # D = 32, MLP 128
    abstract = nnx.state(nnx.eval_shape(lambda: FluxTransformer2DModel(cfg, rngs=nnx.Rngs(0))))
    specs = _specs(param_shardings(abstract, make_mesh("fsdp=2,tensor=4")))
    expected = {
        "transformer_blocks.attn.to_q.kernel": P(None, "fsdp", "tensor"),
        "transformer_blocks.attn.to_q.bias": P(None, "tensor"),
        "transformer_blocks.attn.to_out.0.kernel": P(None, "tensor", "fsdp"),
        "transformer_blocks.attn.norm_q.scale": P(None, None),
        "transformer_blocks.ff.net.0.proj.kernel": P(None, "fsdp", "tensor"),
        "transformer_blocks.ff.net.2.kernel": P(None, "tensor", "fsdp"),
        "transformer_blocks.norm1.linear.kernel": P(None, "fsdp", "tensor"),  # modulation: split too
        "single_transformer_blocks.proj_out.kernel": P(None, "tensor", "fsdp"),
        "x_embedder.kernel": P(None, "fsdp"),
        "context_embedder.bias": P("fsdp"),
        "norm_out.linear.kernel": P("fsdp", "tensor"),
        "proj_out.kernel": P("fsdp", None),
        "proj_out.bias": P(None),
    }
    for path, spec in expected.items():
        assert specs[path] == spec, path
    assert len(specs) == len(nnx.to_flat_state(abstract))

    # D = 36 does not divide fsdp=8: every embed dim falls back to replicated.
    cfg = _tiny_flux(3, 12, (4, 4, 4))
    abstract = nnx.state(nnx.eval_shape(lambda: FluxTransformer2DModel(cfg, rngs=nnx.Rngs(0))))
    specs = _specs(param_shardings(abstract, make_mesh("fsdp=8")))
    assert specs["transformer_blocks.attn.to_q.kernel"] == P(None, None, None)
    assert specs["x_embedder.kernel"] == P(None, None)


def test_param_shardings_values():
    """A FLUX transformer with sharded parameters (and active rules) computes what the unsharded one does."""
    cfg = _tiny_flux(2, 16, (4, 6, 6))
    model = FluxTransformer2DModel(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, s, t = 2, 6, 4
    x = jnp.asarray(rng.normal(size=(b, s, 8)), jnp.float32)
    ctx = jnp.asarray(rng.normal(size=(b, t, 24)), jnp.float32)
    pooled = jnp.asarray(rng.normal(size=(b, 20)), jnp.float32)
    ts = jnp.asarray([0.3, 0.7], jnp.float32)
    rope = (jnp.ones((s + t, 16)), jnp.zeros((s + t, 16)))

    def run(graphdef, state, *args):
        return nnx.merge(graphdef, state)(*args, guidance=ts)

    graphdef, state = nnx.split(model)
    expected = jax.jit(run, static_argnums=0)(graphdef, state, x, ctx, pooled, ts, rope)

    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    sharded = jax.device_put(state, param_shardings(state, mesh))
    kernel = sharded["transformer_blocks"]["attn"]["to_q"]["kernel"]
    assert kernel.get_value().sharding.spec == P(None, "fsdp", "tensor")
    with activate(mesh):
        got = jax.jit(run, static_argnums=0)(graphdef, sharded, x, ctx, pooled, ts, rope)
    assert rel_err(got, expected) <= 1e-5


def test_activate():
    mesh = make_mesh("data=2,context=4")
    names = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)
    x = jnp.ones((2, 8, 3))
    assert sh.constrain(x, names) is x
    assert current() is None
    with activate(mesh) as active:
        assert active is mesh
        assert current()[0] is mesh
        y = jax.jit(lambda x: sh.constrain(x * 2, names))(x)
        assert y.sharding.spec == P("data", "context")
        with activate(make_mesh("fsdp=8"), {**dict(current()[1]), sh.LENGTH: ()}):
            z = jax.jit(lambda x: sh.constrain(x * 3, names))(jnp.ones((8, 8, 3)))
            assert z.sharding.spec == P("fsdp")
        assert current()[0] is mesh
    assert sh.ambient() is None
    assert current() is None
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((2, 8, 3)))


def test_activate_is_per_thread():
    """A placement activated in one thread (the server traces requests on workers) is not another's."""
    import threading

    seen = {}
    inside, leave = threading.Event(), threading.Event()

    def worker():
        with activate(make_mesh("data=2,context=4")):
            seen["worker"] = current()
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    seen["main"] = current()
    assert sh.constrain(jnp.ones(3), (None,)) is not None
    leave.set()
    t.join()
    assert seen["worker"] is not None and seen["main"] is None


def test_named_sharding():
    mesh = make_mesh("data=2,context=4")
    s = named_sharding((sh.BATCH, sh.LENGTH, None), mesh, shape=(2, 12, 64))
    assert s.spec == P("data", "context", None)
    x = jax.device_put(np.zeros((2, 12, 64), np.float32), s)
    assert x.sharding.shard_shape(x.shape) == (1, 3, 64)


def test_param_shardings_of_a_module():
    layer = Linear(8, 12, axes=(sh.EMBED, sh.HEADS), rngs=nnx.Rngs(0))
    layer.extra = nnx.Param(jnp.ones((3,)))  # no logical names: replicated
    mesh = make_mesh("fsdp=2,tensor=4")
    shardings = param_shardings(layer, mesh)
    assert _specs(shardings) == {"kernel": P("fsdp", "tensor"), "bias": P("tensor"), "extra": P()}
    state = jax.device_put(nnx.state(layer), shardings)
    assert state["kernel"].get_value().sharding.shard_shape((8, 12)) == (4, 3)
    np.testing.assert_array_equal(np.asarray(state["kernel"].get_value()), np.asarray(layer.kernel[...]))
