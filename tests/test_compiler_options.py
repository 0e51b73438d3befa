"""jdiff's per-platform XLA options: chosen by backend, and valid option names for the installed jaxlib."""

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import compiler_options


def test_options_per_backend():
    assert compiler_options.compiler_options("cpu") == {}
    assert compiler_options.compiler_options("gpu") == {"xla_gpu_enable_triton_gemm": False}
    assert compiler_options.compiler_options() == {}  # the tests run on CPU


def test_gpu_option_names_exist_in_this_jaxlib():
    # XLA's debug options are one proto for every backend: an option renamed or removed in a new jaxlib
    # fails here ("No such compile option") instead of on a user's GPU.
    f = jax.jit(lambda a: a @ a, compiler_options=compiler_options.compiler_options("gpu"))
    np.testing.assert_allclose(np.asarray(f(jnp.eye(4) * 2)), np.eye(4) * 4)
