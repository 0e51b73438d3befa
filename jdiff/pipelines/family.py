"""What a model family declares about itself: the `model_index.json` class names it runs, its pipeline, the
component classes it loads (and where their conversion plans live), and how it picks its preset.

A family's pipeline module ends with `FAMILY = Family(...)`; `jdiff.registry` lists those modules, one line a
family. Nothing else in jdiff names a family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jdiff.errors import InputError
from jdiff.weights.loading import ComponentSpec


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: a short name ("flux", "wan").
        pipeline_classes: the `_class_name` values of `model_index.json` this family runs.
        pipeline: the `Pipeline` subclass.
        components: component class name (as `model_index.json` names it) -> the module holding its
            `SPEC` (a `jdiff.weights.loading.ComponentSpec`), imported when first needed.
        preset: (model_index dict, the transformer's config) -> the name of its preset in jdiff/configs.
        unused: component classes a directory may list that jdiff does not run (SD 1.5's safety checker):
            loading ignores them, `jdiff convert` leaves them out (its model_index.json lists them as
            `[null, null]`, as diffusers saves a pipeline built without them).
    """

    name: str
    pipeline_classes: tuple[str, ...]
    pipeline: type
    components: Mapping[str, str] = field(default_factory=dict)
    preset: Callable[[dict[str, Any], Any], str] | None = None
    unused: tuple[str, ...] = ()

    def spec_for(self, class_name: str, *, component: str) -> ComponentSpec:
        """The conversion spec of a component class this family loads.

        Raises:
            InputError: a class this family does not load, naming the ones it does.
        """
        if class_name not in self.components:
            raise InputError(
                f"component {component!r} is a {class_name}, which jdiff's {self.name} family does not load; "
                f"it loads {sorted(self.components)}"
            )
        return importlib.import_module(self.components[class_name]).SPEC
