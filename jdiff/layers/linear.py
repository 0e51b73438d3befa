"""Linear and convolution layers whose parameters carry logical axis names.

Thin wrappers over `nnx.Linear` / `nnx.Conv`: attribute names stay `kernel` and `bias` (the conversion plan
maps them to torch `weight` / `bias`), initialisers carry sharding metadata without sharding eagerly (the
mesh is applied when weights are loaded), and the computation dtype follows the parameters and inputs, so a
model loaded in bfloat16 runs in bfloat16.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from jdiff import sharding as sh


def _init(init, axes):
    return nnx.with_partitioning(init, axes, eager_sharding=False)


class Linear(nnx.Linear):
    """`nnx.Linear` with logical axes `axes=(in_axis, out_axis)` on the kernel and `out_axis` on the bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None] = (sh.EMBED, sh.MLP),
        use_bias: bool = True,
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
