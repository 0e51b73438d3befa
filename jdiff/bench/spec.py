"""What a `jdiff bench` workload declares: a config, sizes, repeat counts, and for an end-to-end workload
the model directory and the call both engines run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

ENGINES = ("jdiff", "diffusers", "diffusers-compile")


@dataclass(frozen=True)
class PipelineSpec:
    """What an end-to-end workload runs on both engines: a model directory's model_index.json and one call.

    jdiff runs the family the registry gives `pipeline_class` (jdiff.registry) over a `ModelDir` whose models
    are random; diffusers runs its class of that name over its models built with random weights.

    Attributes:
        pipeline_class: model_index.json's `_class_name`.
        components: model_index.json's components, name -> (library, class name).
        models: the components built with random weights, largest first (the diffusers side builds each in
            float32 before casting: the largest transient is best taken on an empty device).
        tokenizers: tokenizer component -> its recipe in `jdiff.bench.tokenizers.RECIPES`.
        call: sizes -> the generate keyword arguments both engines take (diffusers' names, which jdiff's
            `generate` shares), besides the prompt, height, width, seed and output type.
        denoiser: the component whose calls the workload's TFLOP counts.
        step: the single-step workload of the same denoiser (its attention head rule).
        index: more model_index.json keys (is_distilled, force_zeros_for_empty_prompt).
        diffusers_kwargs: more arguments of diffusers' pipeline constructor.
        step_cache: (mode, threshold) of a step cache: jdiff's `generate(step_cache=, step_cache_threshold=)`;
            diffusers puts its FirstBlockCache hook at that threshold on the denoiser ("first_block" only).
        quantization: jdiff's `from_pretrained(quantization=)` ("fp8"), applied after construction; jdiff only.
    """

    pipeline_class: str
    components: dict[str, tuple[str, str]]
    models: tuple[str, ...]
    tokenizers: dict[str, str]
    call: Callable[[dict], dict]
    denoiser: str = "transformer"
    step: str = ""
    index: dict = field(default_factory=dict)
    diffusers_kwargs: dict = field(default_factory=dict)
    step_cache: tuple[str, float] | None = None
    quantization: str | None = None


@dataclass(frozen=True)
class Workload:
    """One benchmark: a diffusers config, input sizes, and how often to run it.

    For an end-to-end workload (`pipeline`), `config` maps each component of the model directory to its
    config, `tiny_config` each component to its overrides, and jdiff's cold and warm starts are measured too.
    """

    title: str
    config: dict
    sizes: dict
    tflop: float | None  # per call at the real sizes (2 FLOPs per multiply-add); None: not counted
    warmup: int
    repeats: int
    engines: tuple[str, ...] = ("jdiff", "diffusers")
    tiny_config: dict = field(default_factory=dict)
    tiny_sizes: dict = field(default_factory=dict)
    pipeline: PipelineSpec | None = None  # an end-to-end workload: what it runs
    tiny_title: str = ""  # what `--tiny` runs instead: its rows must not carry the real workload's name

    def label(self, tiny: bool) -> str:
        """The table's name for what ran."""
        return self.tiny_title if tiny else self.title
