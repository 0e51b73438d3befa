"""The model directory of an end-to-end workload, without weights: model_index.json, each model's
config.json, the scheduler's scheduler_config.json and the tokenizers, as the released directory lays them out.

Both engines read it: jdiff opens it as a `ModelDir` (its models then random, `jdiff_pipeline.RandomModelDir`),
diffusers takes its scheduler and tokenizers and builds its models from the same configs. No jax, no torch.

The tokenizers are built with transformers. jdiff's worker writes the directory in a child process
(`write_in_subprocess`), so that its own clocks see what a user's start sees: transformers imported only where
jdiff's pipeline reads a tokenizer it has not cached yet (the cold start), not before.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jdiff.bench import tokenizers
from jdiff.bench.configs import NEGATIVE_PROMPT, PROMPT


def write_model_dir(name: str, config: dict, folder: Path | None = None) -> Path:
    """Writes workload `name`'s directory at `config` (its resolved per-component configs) into `folder`
    (a fresh temporary one if None, removed when this process exits); returns it."""
    from jdiff.bench.workloads import WORKLOADS

    spec = WORKLOADS[name].pipeline
    root = _scratch(name) if folder is None else folder
    root.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": spec.pipeline_class, **spec.index}
    index.update({component: list(entry) for component, entry in spec.components.items()})
    (root / "model_index.json").write_text(json.dumps(index, indent=1))
    for component in spec.models:
        (root / component).mkdir(parents=True, exist_ok=True)
        cls = spec.components[component][1]
        (root / component / "config.json").write_text(json.dumps({"_class_name": cls, **config[component]}))
    (root / "scheduler").mkdir(exist_ok=True)
    scheduler = {"_class_name": spec.components["scheduler"][1], **config["scheduler"]}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=1))
    for component, recipe in spec.tokenizers.items():
        tokenizers.write(recipe, root / component, (PROMPT, NEGATIVE_PROMPT))
    return root


def write_in_subprocess(name: str, tiny: bool) -> Path:
    """`write_model_dir` of workload `name` (toy config under `tiny`) run in a child Python; the folder
    (removed when this process exits)."""
    root = _scratch(name)
    cmd = [sys.executable, "-m", "jdiff.bench.model_dir", name, str(root), *(["--tiny"] if tiny else [])]
    subprocess.run(cmd, check=True)
    return root


def _scratch(name: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"jdiff-bench-{name}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


if __name__ == "__main__":
    from jdiff.bench.workloads import _resolve

    _, config, _ = _resolve(sys.argv[1], "--tiny" in sys.argv[3:])
    write_model_dir(sys.argv[1], config, Path(sys.argv[2]))
