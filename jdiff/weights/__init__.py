"""Model weights: reading reference checkpoints into jdiff modules, and jdiff's own checkpoints.

Below the models (a family's `plan.py` imports from here; nothing here imports a model):
  * `config.py`: reference `config.json` files -> frozen config dataclasses (`from_dict`, `read_json`).
  * `plan.py`: the conversion engine, declarative plans (target path -> source keys + a named transform)
    resolved against safetensors headers with every problem collected.
  * `safetensors.py`: memory-mapped, header-first reading of (sharded) safetensors folders.
  * `loading.py`: `ComponentSpec` (config class, module class, plan) and loading one component abstractly
    built and filled tensor by tensor, straight into its shardings.
  * `checkpoint.py`: jdiff's converted format (orbax), written atomically.
"""
