"""Linear and convolution layers whose parameters carry logical axis names.

Thin wrappers over `nnx.Linear` / `nnx.Conv`: attribute names stay `kernel` and `bias` (the conversion plan
maps them to torch `weight` / `bias`), initialisers carry sharding metadata without sharding eagerly (the
mesh is applied when weights are loaded), and the computation dtype follows the parameters and inputs, so a
model loaded in bfloat16 runs in bfloat16.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff import sharding as sh
from jdiff.layers import lora, quant


def _init(init, axes):
    return nnx.with_partitioning(init, axes, eager_sharding=False)


# True while a block of a stack is traced for `jax.lax.scan` (jdiff.layers.stack.scan): its kernels are then
# slices of stacked weights, taken afresh each iteration.
_SCANNED = contextvars.ContextVar("jdiff_scanned_weights", default=False)


@contextlib.contextmanager
def scanned_weights() -> Iterator[None]:
    token = _SCANNED.set(True)
    try:
        yield
    finally:
        _SCANNED.reset(token)


# Experiments (benchmarks/profile_step.py --bias-epilogue): "all" fuses every bias into its matmul (jdiff's
# behaviour before), "none" keeps every bias of a scanned layer apart; None follows each layer's setting.
BIAS_EPILOGUE: str | None = None


def _bias_apart(epilogue: bool) -> bool:
    """Whether a layer's matmul leaves its bias out (see `Linear`): GPU, inside a scan over layers."""
    if BIAS_EPILOGUE is not None:
        return BIAS_EPILOGUE == "none" and _SCANNED.get()
    return not epilogue and _SCANNED.get() and jax.default_backend() == "gpu"


class Linear(nnx.Linear):
    """`nnx.Linear` with logical axes `axes=(in_axis, out_axis)` on the kernel and `out_axis` on the bias.

    Inside a scan over stacked layers on GPU, the bias is added after the matmul, behind an optimization
    barrier, rather than fused into cuBLAS's epilogue. XLA reads a scanned layer's weight in place (its
    dynamic-slice fusion) only for a matmul without an epilogue; with one, it copies every layer's weight out of
    the stack on every step (8 ms of the FLUX.1 step on an H100). The bias add then joins the elementwise pass
    that follows anyway (gated residual, GELU and concatenation) or costs a pass over the output.
    `bias_epilogue=True` keeps the fused epilogue where that pass would cost more than the copy: a GELU
    projection, or an output much larger than the weight (Wan's q/k/v over 32k video tokens).

    `quantize_fp8()` turns the layer into an fp8 one (`jdiff.layers.quant`): `kernel` is replaced by
    `kernel_fp8` [.., O, I] and `kernel_scale` [.., O]. Its bias then always joins the scale multiply after the
    fp8 GEMM (one elementwise pass that fuses into the consumer; nothing goes into the GEMM's epilogue, so no
    barrier is needed), and LoRA adapters add their delta in the activation dtype, from the unquantized input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None] = (sh.EMBED, sh.MLP),
        use_bias: bool = True,
        bias_epilogue: bool = False,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features,
            out_features,
            use_bias=use_bias,
            kernel_init=_init(nnx.initializers.lecun_normal(), axes),
            bias_init=_init(nnx.initializers.zeros_init(), (axes[1],)),
            rngs=rngs,
        )
        self.bias_epilogue = bias_epilogue

    @property
    def is_fp8(self) -> bool:
        return getattr(self, "kernel_scale", None) is not None

    def quantize_fp8(self) -> None:
        """Replaces the kernel by its fp8 form and per-output-channel scales (`jdiff.layers.quant`), once.

        Works on a stacked layer (kernel [L, I, O]) too; the new variables keep the kernel's logical axis names
        (the quantized kernel's last two swapped, the scales without the input axis), so placements and
        `offload` treat them as they treated the kernel.
        """
        if self.is_fp8:
            return
        names = tuple(self.kernel.get_metadata().get("out_sharding") or (None,) * self.kernel.ndim)
        w_q, scale = quant.quantize_weight(self.kernel[...])
        w_names, s_names = (*names[:-2], names[-1], names[-2]), (*names[:-2], names[-1])
        self.kernel_fp8 = quant.Fp8Kernel(w_q, out_sharding=w_names, eager_sharding=False)
        self.kernel_scale = quant.Fp8Scale(scale, out_sharding=s_names, eager_sharding=False)
        del self.kernel

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if self.is_fp8:
            bias = None if self.bias is None else self.bias[...]
            y = quant.linear(
                inputs, self.kernel_fp8[...], self.kernel_scale[...], bias, out_sharding=out_sharding
            )
            return self._with_lora(inputs, y)
        if self.bias is None or not _bias_apart(self.bias_epilogue):
            return self._with_lora(inputs, super().__call__(inputs, out_sharding))
        y = jax.lax.optimization_barrier(self.matmul(inputs, out_sharding))
        return y + jnp.reshape(self.bias[...].astype(y.dtype), (1,) * (y.ndim - 1) + (-1,))

    def _with_lora(self, inputs: jax.Array, y: jax.Array) -> jax.Array:
        """`y` plus the LoRA adapters' delta, when this layer holds adapters (`jdiff.layers.lora`)."""
        a = getattr(self, "lora_a", None)
        if a is None:
            return y
        d = lora.delta(inputs, a[...], self.lora_b[...])
        return y if d is None else y + d.astype(y.dtype)

    def matmul(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        """`inputs @ kernel` without the bias, for callers that add `self.bias` in a pass of their own."""
        return self._with_lora(inputs, self._matmul(inputs, out_sharding))

    def _matmul(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if self.is_fp8:
            return quant.linear(
                inputs, self.kernel_fp8[...], self.kernel_scale[...], out_sharding=out_sharding
            )
        inputs, kernel = self.promote_dtype((inputs, self.kernel[...]), dtype=self.dtype)
        kw = {"out_sharding": out_sharding}
        if self.preferred_element_type is not None:
            kw["preferred_element_type"] = self.preferred_element_type
        dims = (((inputs.ndim - 1,), (0,)), ((), ()))
        return self.dot_general(inputs, kernel, dims, precision=self.precision, **kw)


class Conv(nnx.Conv):
    """`nnx.Conv` (channels-last) with logical axes on kernel and bias; `padding` as in torch (symmetric)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        use_bias: bool = True,
        rngs: nnx.Rngs,
    ):
        nd = len(kernel_size)
        if isinstance(padding, int):
            padding = [(padding, padding)] * nd
        elif not isinstance(padding, str):
            padding = [(p, p) for p in padding]
        super().__init__(
            in_features,
            out_features,
            tuple(kernel_size),
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_init=_init(nnx.initializers.lecun_normal(), (None,) * nd + (sh.CONV_IN, sh.CONV_OUT)),
            bias_init=_init(nnx.initializers.zeros_init(), (sh.CONV_OUT,)),
            rngs=rngs,
        )
