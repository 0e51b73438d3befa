"""jdiff: a JAX/Flax NNX diffusion inference engine."""

from jdiff.api import DiffGenerator
from jdiff.errors import InputError
from jdiff.pipelines.base import GenerationResult

__all__ = ["DiffGenerator", "GenerationResult", "InputError"]
__version__ = "0.1.0"
