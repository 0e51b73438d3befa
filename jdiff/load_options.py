"""The model-loading options `jdiff generate` and `jdiff serve` share beyond dtype and mesh (kept out of
`cli.py`): `--offload` and `--quantization`.

Standard library only, like `cli.py`'s own imports: `--help` answers without jax.
"""

from __future__ import annotations

import argparse

OFFLOAD_HELP = "keep weights in host memory: per component, or DiT layers streamed (docs/memory.md)"
QUANTIZATION_HELP = (
    "fp8: the DiT's block linears in float8 e4m3 (per-channel weight, per-token activation scales), "
    "quantized at load; modulation, norms and embedders stay (default: the weights' dtype)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offload", choices=["model", "layers"], default=None, help=OFFLOAD_HELP)
    parser.add_argument("--quantization", choices=["fp8"], default=None, help=QUANTIZATION_HELP)


def load_kwargs(args: argparse.Namespace) -> dict:
    """`DiffGenerator.from_pretrained` keywords from the parsed options."""
    return {"offload": args.offload, "quantization": args.quantization}


__all__ = ["add_arguments", "load_kwargs"]
