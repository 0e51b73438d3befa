"""jdiff: a JAX/Flax NNX diffusion inference engine.

`DiffGenerator` and `GenerationResult` are imported on first use: `import jdiff` (and so `jdiff --help`)
does not import jax.
"""

from jdiff.errors import InputError, OutputError

__version__ = "0.1.0"
__all__ = ["DiffGenerator", "GenerationResult", "InputError", "OutputError", "__version__"]


def __getattr__(name: str):
    if name == "DiffGenerator":
        from jdiff.api import DiffGenerator

        return DiffGenerator
    if name == "GenerationResult":
        from jdiff.pipelines.base import GenerationResult

        return GenerationResult
    raise AttributeError(f"module 'jdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
