"""jdiff's per-platform XLA options: chosen by backend, and valid option names for the installed jaxlib."""

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import compiler_options


def test_options_per_backend():
    assert compiler_options.compiler_options("cpu") == {}
    assert compiler_options.compiler_options("gpu") == {
        "xla_gpu_enable_triton_gemm": False,
        "xla_gpu_dot_merger_threshold_mb": 0,
    }
    assert compiler_options.compiler_options() == {}  # the tests run on CPU


def test_gpu_option_names_exist_in_this_jaxlib():
    # XLA's debug options are one proto for every backend: an option renamed or removed in a new jaxlib
    # fails here ("No such compile option") instead of on a user's GPU.
    f = jax.jit(lambda a: a @ a, compiler_options=compiler_options.compiler_options("gpu"))
    np.testing.assert_allclose(np.asarray(f(jnp.eye(4) * 2)), np.eye(4) * 4)


def test_scanned_linear_keeps_its_bias_apart_on_gpu(monkeypatch):
    """Inside a layer scan on GPU, Linear adds its bias after an optimization barrier (so XLA reads the layer's
    weight in place instead of copying it for a fused epilogue); same values, and unchanged elsewhere."""
    from flax import nnx

    from jdiff.layers import linear
    from jdiff.layers.stack import scan, stacked

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.fc = linear.Linear(8, 8, rngs=rngs)
            self.gelu = linear.Linear(8, 8, bias_epilogue=True, rngs=rngs)

        def __call__(self, x):
            return x + self.fc(x) + self.gelu(x)

    blocks = stacked(lambda r: Block(r), 3, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8))
    want = scan(blocks, x)

    def barriers(fn):
        return str(jax.make_jaxpr(fn)(x)).count("optimization_barrier")

    assert barriers(lambda x: scan(blocks, x)) == 0  # CPU: XLA fuses biases as it likes
    monkeypatch.setattr(linear.jax, "default_backend", lambda: "gpu")
    assert barriers(lambda x: scan(blocks, x)) == 1  # fc apart, the epilogue layer not
    single = Block(nnx.Rngs(0))
    assert barriers(lambda x: single(x)) == 0  # outside a scan: nothing to read in place
    np.testing.assert_allclose(np.asarray(scan(blocks, x)), np.asarray(want), rtol=1e-6, atol=1e-6)
