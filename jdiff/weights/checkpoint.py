"""jdiff's own checkpoint format: a diffusers-style directory whose weights are orbax checkpoints.

Layout of a converted directory DST:
    DST/jdiff_checkpoint.json           {"format": "jdiff", "version": 1, "dtype": ...}
    DST/model_index.json                copied from the source
    DST/<component>/config.json         copied (scheduler and tokenizer folders copied whole)
    DST/<component>/params/             orbax checkpoint of the flat {param path: array} dict

Parameters are stored already converted (layout, stacking, dtype), so loading is a restore with target
shapes, dtypes (and, with a mesh, shardings) and no transform.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.errors import InputError, OutputError
from jdiff.io.outputs import check_writable_dir, dir_mode, file_mode

MARKER = "jdiff_checkpoint.json"
PARAMS = "params"
VERSION = 1


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def save_params(module: nnx.Module, folder: Path) -> None:
    """Writes a module's parameters as a flat orbax checkpoint into `folder/params`."""
    import orbax.checkpoint as ocp

    flat = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(module))}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((folder / PARAMS).absolute(), flat)


def restore_params(
    folder: Path, graphdef: nnx.GraphDef, abstract_state: nnx.State, dtype_of, shardings=None
) -> nnx.Module:
    """Restores `folder/params` into the abstract module, casting to `dtype_of(path)`; with `shardings`
    (path -> sharding) each array is restored directly into its sharding."""
    import orbax.checkpoint as ocp

    params = (folder / PARAMS).absolute()
    if not params.is_dir():
        raise InputError(
            f"{folder} has no {PARAMS}/ checkpoint; convert the model again with `jdiff convert`"
        )
    flat_abstract = nnx.to_flat_state(abstract_state)
    target = {
        ".".join(map(str, p)): jax.ShapeDtypeStruct(v.shape, jnp.dtype(dtype_of(".".join(map(str, p)))))
        for p, v in flat_abstract
    }
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(params)
            stored = getattr(meta, "item_metadata", meta)
            stored = dict(stored.tree if hasattr(stored, "tree") else stored)
        except Exception as e:  # orbax raises assorted types for unreadable checkpoints
            raise InputError(
                f"{params} is not a readable orbax checkpoint ({e}); convert the model again"
            ) from None
        missing = sorted(set(target) - set(stored))
        unexpected = sorted(set(stored) - set(target))
        wrong = sorted(k for k in target if k in stored and tuple(stored[k].shape) != target[k].shape)
        if missing or unexpected or wrong:
            raise InputError(
                f"{params} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"mis-shaped {wrong[:5]}; convert the model again with this jdiff version"
            )
        # Restore in the stored dtype, then cast: orbax's own casting is not available in every version we support.
        # Host-memory shardings (offload) are restored into directly; device ones as before.
        host = {
            k: s for k, s in (shardings or {}).items() if s.memory_kind in ("pinned_host", "unpinned_host")
        }
        restored = ckptr.restore(
            params,
            {k: jax.ShapeDtypeStruct(target[k].shape, stored[k].dtype, sharding=host.get(k)) for k in target},
        )

    def cast(k: str):
        x, dtype = restored[k], target[k].dtype
        if k in host and x.dtype != dtype:  # no device op on host memory: cast on the host
            return jax.device_put(np.asarray(x).astype(dtype), host[k])
        return x if k in host else jnp.asarray(x, dtype)

    flat = [(p, v.replace(cast(".".join(map(str, p))))) for p, v in flat_abstract]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def write_atomically(dst: Path, build) -> None:
    """Calls `build(tmp_dir)` and renames the result to `dst`; on any failure nothing is left at `dst`.

    The result gets the modes the umask asks for (`mkdtemp` alone makes the directory 0700).

    Raises:
        InputError: `dst` exists. OutputError: its parent cannot be written, or writing failed.
    """
    dst = Path(dst)
    if dst.exists():
        raise InputError(f"{dst} already exists; choose a new destination or remove it first")
    check_writable_dir(dst.parent, f"the converted model {dst}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    except OSError as e:
        raise OutputError(f"cannot write the converted model {dst}: {e.strerror or e}") from None
    try:
        build(tmp)
        apply_umask(tmp)
        tmp.rename(dst)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        where = f" ({e.filename})" if e.filename else ""
        raise OutputError(
            f"converting to {dst} failed: {e.strerror or e}{where}; nothing was written there"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_umask(root: Path) -> None:
    """Gives `root` and everything under it the modes a fresh `mkdir` / `open` would under the umask."""
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(root, dmode)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dmode)
        for name in files:
            os.chmod(os.path.join(parent, name), fmode)


def write_marker(folder: Path, dtype) -> None:
    (folder / MARKER).write_text(
        json.dumps({"format": "jdiff", "version": VERSION, "dtype": np.dtype(dtype).name}, indent=2) + "\n"
    )
