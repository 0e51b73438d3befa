"""A model directory: diffusers format (model_index.json + component folders) or a converted jdiff checkpoint.

Both share the layout; they differ only in where a component's weights live (safetensors converted on load,
or an orbax checkpoint already in jdiff's layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jdiff.errors import InputError
from jdiff.pipelines.tokenizer import PromptTokenizer, TransformersTokenizer, load_tokenizer
from jdiff.weights import checkpoint
from jdiff.weights.config import read_json
from jdiff.weights.loading import ComponentSpec, load_component
from jdiff.weights.safetensors import open_weights


@dataclass
class ModelDir:
    """A model directory. `family` (a `jdiff.pipelines.family.Family`, set by whoever opened it through the
    registry) says which conversion spec each component class has."""

    root: Path
    index: dict[str, Any]
    family: Any = None
    # (class name or None, config overrides) set by `swap_scheduler`; None: the directory's own scheduler.
    scheduler_swap: tuple[str | None, dict[str, Any]] | None = None
    # True: components are loaded into host memory (`offload=`; jdiff.pipelines.offload), never whole on a device.
    host_memory: bool = False

    @classmethod
    def open(cls, path: str | Path) -> ModelDir:
        root = Path(path)
        if not root.is_dir():
            raise InputError(f"model directory {root} does not exist")
        if not (root / "model_index.json").is_file():
            raise InputError(
                f"{root} has no model_index.json: point at a diffusers-format model directory "
                "(the folder holding model_index.json) or a `jdiff convert` output"
            )
        return cls(root, read_json(root / "model_index.json"))

    @property
    def pipeline_class(self) -> str:
        return str(self.index.get("_class_name", ""))

    @property
    def is_checkpoint(self) -> bool:
        return checkpoint.is_checkpoint(self.root)

    def components(self) -> dict[str, tuple[str, str]]:
        """name -> (library, class name) for every component entry of model_index.json."""
        out = {}
        for name, entry in self.index.items():
            if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
                continue
            out[name] = (entry[0], entry[1])
        return out

    def folder(self, name: str) -> Path:
        if name not in self.components():
            raise InputError(
                f"{self.root}/model_index.json lists no {name!r} component, which a {self.pipeline_class} needs"
            )
        folder = self.root / name
        if not folder.is_dir():
            raise InputError(f"component folder {folder} is missing; the model directory is incomplete")
        return folder

    def spec(self, name: str) -> ComponentSpec:
        self.folder(name)  # validates that the component exists
        if self.family is None:
            raise ValueError(
                f"{self.root} was opened without its family: open it with jdiff.registry.open_model"
            )
        return self.family.spec_for(self.components()[name][1], component=name)

    def load(self, name: str, *, dtype, placement=None) -> tuple[Any, Any]:
        """Loads component `name` as (config, jdiff module), from safetensors or a jdiff checkpoint.

        With a `placement` (jdiff.parallel.Placement), parameters are created directly in their shardings,
        each process reading only its own devices' slices.
        """
        folder = self.folder(name)
        spec = self.spec(name)
        cfg = spec.read_config(folder)
        graphdef, state = spec.abstract(cfg)
        shardings = placement.shardings(state) if placement is not None else None
        if self.host_memory:
            from jdiff.pipelines.offload import host_shardings

            shardings = host_shardings(state, shardings)
        if self.is_checkpoint:
            module = checkpoint.restore_params(
                folder, graphdef, state, lambda path: spec.plan.target_dtype(path, dtype), shardings=shardings
            )
            return cfg, module
        return load_component(
            spec,
            folder,
            dtype=dtype,
            component=name,
            cfg=cfg,
            shardings=shardings,
            abstract=(graphdef, state),
        )

    def check(self, name: str):
        """Header-only resolution of component `name` (for dry runs): its assignments, or ConversionError."""
        from jdiff.weights.loading import check

        folder = self.folder(name)
        spec = self.spec(name)
        return check(spec, spec.read_config(folder), open_weights(folder), component=name)

    def tokenizer(self, name: str) -> PromptTokenizer | TransformersTokenizer:
        """The prompt tokenizer in component folder `name` (jdiff.pipelines.tokenizer: cached after one read)."""
        folder = self.folder(name)
        # transformers builds an empty-vocabulary tokenizer, without a word, from a folder that lost its
        # vocabulary files; every prompt would then encode to unknown tokens.
        # byT5 (HunyuanVideo-1.5's glyph tokenizer) reads bytes: it has no vocabulary file.
        byte_level = _tokenizer_name(folder) == "ByT5Tokenizer"
        if not byte_level and not any((folder / f).is_file() for f in _VOCABULARY_FILES):
            raise InputError(
                f"tokenizer folder {folder} has no vocabulary file (one of {', '.join(_VOCABULARY_FILES)}); "
                "the model directory is incomplete: copy the tokenizer files again"
            )
        return load_tokenizer(folder, _read_with_transformers)

    def image_processor_config(self) -> dict[str, Any]:
        """CLIP image preprocessing settings from image_processor/preprocessor_config.json (Wan2.1 I2V)."""
        cfg = read_json(self.folder("image_processor") / "preprocessor_config.json")
        size = cfg.get("size", 224)
        crop = cfg.get("crop_size", size)
        return {
            "size": size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else int(size),
            "crop_size": crop.get("height", crop.get("shortest_edge"))
            if isinstance(crop, dict)
            else int(crop),
            "mean": tuple(cfg.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
            "std": tuple(cfg.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
        }

    def scheduler_config(self) -> dict[str, Any]:
        folder = self.folder("scheduler")
        return read_json(folder / "scheduler_config.json")

    @property
    def scheduler_class(self) -> str:
        """The scheduler class the pipeline runs: the swapped-in one, else the one model_index.json names."""
        if self.scheduler_swap is not None and self.scheduler_swap[0] is not None:
            return self.scheduler_swap[0]
        return self.components().get("scheduler", ("", ""))[1]

    def swap_scheduler(self, name: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        """Runs scheduler class `name` (None: the directory's own) with `overrides` on top of the directory's
        scheduler_config.json, as diffusers' `pipe.scheduler = X.from_config(pipe.scheduler.config, **overrides)`
        does: the file's keys the class does not take are ignored, its own defaults fill the rest.

        Raises:
            InputError: an unknown or unsupported class (listing the supported ones), a bad override value, or
                overrides that are not a dict.
        """
        if overrides is not None and not isinstance(overrides, dict):
            raise InputError(f"scheduler_config must be a dict of scheduler config keys, got {overrides!r}")
        if name is not None and not isinstance(name, str):
            raise InputError(f"scheduler must be a diffusers scheduler class name, got {name!r}")
        self.scheduler_swap = (name, dict(overrides or {}))
        self.sampler()  # refuse a bad name or value now, before any weights load

    def sampler(self, *, flow: bool | None = None, model: str = "") -> tuple[Any, Any]:
        """(`jdiff.sampling.sampler.Sampler`, its validated config) the pipeline samples with.

        Args:
            flow: True for a model that predicts flow velocities (it needs a flow-matching solver), False for
                one that predicts noise, samples or v (it needs a DDPM-family solver); None: either.
            model: the model's name in the error ("FLUX", "Wan", ...).

        Raises:
            InputError: the scheduler class is not in jdiff's sampler table, its config is refused, or it is of
                the other kind than `flow` asks.
        """
        from jdiff.sampling.table import sampler_for

        overrides = self.scheduler_swap[1] if self.scheduler_swap is not None else {}
        sampler, config = sampler_for(self.scheduler_class, {**self.scheduler_config(), **overrides})
        if flow is not None and (sampler.prediction(config) == "flow") != flow:
            kind = (
                "a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, or UniPC / DPM-Solver with flow "
                "sigmas)"
                if flow
                else "a DDPM-family scheduler (Euler, DDIM, DPM-Solver, PNDM, ...)"
            )
            raise InputError(
                f"{model} needs {kind}; {self.root} runs {self.scheduler_class!r}, which predicts "
                f"{sampler.prediction(config)}: pass another scheduler= / --scheduler"
            )
        return sampler, config


# Files that hold a tokenizer's vocabulary, in the formats transformers reads.
_VOCABULARY_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.json", "vocab.txt")


def _tokenizer_name(folder: Path):
    config = folder / "tokenizer_config.json"
    return read_json(config).get("tokenizer_class") if config.is_file() else None


def _read_with_transformers(folder: Path):
    try:
        return _tokenizer_class(folder).from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer in {folder}: {e}") from None


def _tokenizer_class(folder: Path):
    """The class `AutoTokenizer` would pick for `folder`, imported on its own.

    `from transformers import AutoTokenizer` imports torch where it is installed (9 s of a 19 s warm start on
    the H100 machine, docs/benchmarks.md); a tokenizer class alone does not. The class named in
    tokenizer_config.json is used, its fast variant first where one exists (AutoTokenizer's default), and
    AutoTokenizer itself for anything else.
    """
    import transformers

    config = folder / "tokenizer_config.json"
    name = read_json(config).get("tokenizer_class") if config.exists() else None
    if isinstance(name, str) and name.isidentifier():
        for candidate in (name if name.endswith("Fast") else name + "Fast", name):
            cls = getattr(transformers, candidate, None)
            if cls is not None and hasattr(cls, "from_pretrained"):
                return cls
    from transformers import AutoTokenizer

    return AutoTokenizer
