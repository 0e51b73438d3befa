"""Multi-host runs: one jdiff process per host (or per GPU), all running the same program.

`initialize` joins JAX's distributed runtime from explicit arguments, the JDIFF_COORDINATOR /
JDIFF_NUM_PROCESSES / JDIFF_PROCESS_ID variables, or (on a TPU VM slice, or under a cluster manager JAX
detects) by itself. `broadcast` sends process 0's request to every process through JAX's own runtime, so
all processes run the same jitted stages on the same inputs; results are all-gathered and only process 0
writes files.

A process that fails says so through the runtime's key-value store (`abort`) before it exits, and a watchdog
thread in every process ends it within a second with that message: the others would otherwise wait inside a
collective for a peer that is gone (and the failed one at exit, in jax's shutdown barrier). A process that
dies without a word (killed) is noticed by the runtime's heartbeat after HEARTBEAT_TIMEOUT_S.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
from typing import Any

import jax
import numpy as np

from jdiff.errors import InputError

HEARTBEAT_TIMEOUT_S = 60
_ABORT_KEY = "jdiff/abort"
_WATCH_POLL_MS = 1000


def _detectable_cluster() -> bool:
    # TPU VM slices expose their topology to the TPU runtime; JAX's cluster detection reads it.
    return any(
        k in os.environ
        for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")
    )


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins the distributed runtime when asked to (or on a detectable cluster); returns whether it did.

    Raises:
        InputError: an incomplete or inconsistent set of arguments.
    """
    coordinator = coordinator or os.environ.get("JDIFF_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _env_int("JDIFF_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JDIFF_PROCESS_ID")
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise InputError(
            "multi-host needs all of --coordinator HOST:PORT, --num-processes N and --process-id I "
            "(or JDIFF_COORDINATOR, JDIFF_NUM_PROCESSES, JDIFF_PROCESS_ID)"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise InputError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        if ":" not in coordinator:
            raise InputError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if num_processes == 1:
            return False
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
        _start_watchdog()
        return True
    if _detectable_cluster():
        jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
        _start_watchdog()
        return True
    return False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None


def joined() -> bool:
    """Whether this process joined a multi-process run (without importing jax when it did not)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client is not None


def abort(message: str, exit_code: int) -> None:
    """Tells every other process that this one failed with `message`, then exits at once with `exit_code`.

    `os._exit`: a normal exit would wait in jax's shutdown barrier for processes that are themselves waiting
    in a collective for this one.
    """
    with contextlib.suppress(Exception):  # the runtime may already be gone; exiting is what matters
        _client().key_value_set(_ABORT_KEY, json.dumps([jax.process_index(), exit_code, message]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _start_watchdog() -> None:
    """A thread that ends this process when another one `abort`s, or when the coordinator is gone.

    It polls once a second, and a normal exit stops and joins it before jax shuts its runtime down: a thread
    still inside a runtime call at that point kills the process on its way out.
    """
    stop = threading.Event()

    def watch():
        client = _client()
        while not stop.is_set():
            try:
                message = client.blocking_key_value_get(_ABORT_KEY, _WATCH_POLL_MS)
            except Exception as e:  # the runtime's own error types: a timeout, or the coordinator is gone
                if stop.is_set() or "DEADLINE_EXCEEDED" in str(e) or "timed out" in str(e).lower():
                    continue
                message = json.dumps([0, 1, f"lost the coordinator ({str(e).splitlines()[0][:200]})"])
            index, code, text = json.loads(message)
            if index == jax.process_index():
                return
            print(
                f"jdiff: error: process {index} failed, stopping process {jax.process_index()}: {text}",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(code)

    thread = threading.Thread(target=watch, name="jdiff-watchdog", daemon=True)

    def join() -> None:
        stop.set()
        thread.join(timeout=2 * _WATCH_POLL_MS / 1000)

    # atexit runs the last registered first: this runs before jax's own shutdown (registered at initialize).
    atexit.register(join)
    thread.start()


def is_main() -> bool:
    return jax.process_index() == 0


def broadcast(request: dict[str, Any] | None) -> dict[str, Any]:
    """Process 0's `request` (JSON-serialisable) on every process; others pass anything (ignored)."""
    if jax.process_count() == 1:
        return request
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(request if is_main() else None).encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.array([payload.size], np.int64))[0])
    buf = np.zeros(size, np.uint8)
    if is_main():
        buf[:] = payload
    data = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
    return json.loads(data.tobytes().decode())


# ---- serving across processes -------------------------------------------------------------------------------
# The HTTP server runs on process 0. Each `generate` call it makes is published through the distributed
# runtime's key-value store (not a device collective: an idle server must not sit inside one, which would
# time out), and every other process runs the same calls in the same order, so the jitted stages meet in
# their collectives.

_KEY = "jdiff/generate/{}"
_WAIT_MS = 10 * 60 * 1000


def _client():
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def _portable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as JSON: paths as strings, numpy scalars as numbers, PIL images as base64 PNG."""
    import base64
    import io

    out = {}
    for k, v in kwargs.items():
        if hasattr(v, "save") and hasattr(v, "mode"):  # PIL.Image
            buf = io.BytesIO()
            v.save(buf, format="PNG")
            out[k] = {"__png__": base64.b64encode(buf.getvalue()).decode()}
        elif isinstance(v, os.PathLike):
            out[k] = os.fspath(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        elif isinstance(v, np.ndarray):
            out[k] = {"__array__": v.tolist(), "dtype": str(v.dtype)}
        else:
            out[k] = v
    return out


def _restore(kwargs: dict[str, Any]) -> dict[str, Any]:
    import base64
    import io

    out = {}
    for k, v in kwargs.items():
        if isinstance(v, dict) and "__png__" in v:
            from PIL import Image

            out[k] = Image.open(io.BytesIO(base64.b64decode(v["__png__"]))).convert("RGB")
        elif isinstance(v, dict) and "__array__" in v:
            out[k] = np.asarray(v["__array__"], v["dtype"])
        else:
            out[k] = v
    return out


class Leader:
    """Wraps process 0's `DiffGenerator`: every `generate` call is published before it runs."""

    def __init__(self, gen):
        import threading

        self.gen = gen
        self._next = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def generate(self, prompt, **kwargs):
        with self._lock:  # one order for every process
            message = json.dumps({"prompt": prompt, "kwargs": _portable(kwargs)})
            _client().key_value_set(_KEY.format(self._next), message)
            self._next += 1
            return self.gen.generate(prompt, **kwargs)

    def close(self) -> None:
        """Tells the followers to exit."""
        with self._lock:
            _client().key_value_set(_KEY.format(self._next), "null")
            self._next += 1


def follow(gen) -> None:
    """Runs, on a process other than 0, every call process 0's `Leader` publishes, until it closes."""
    i = 0
    while True:
        try:
            message = _client().blocking_key_value_get(_KEY.format(i), _WAIT_MS)
        except Exception as e:  # the runtime raises its own error type; only a plain timeout means "idle"
            if "DEADLINE_EXCEEDED" in str(e) or "timed out" in str(e).lower():
                continue
            raise
        i += 1
        request = json.loads(message)
        if request is None:
            return
        # Bad input raises the same error on process 0, which answers the client: stay in step.
        with contextlib.suppress(InputError):
            gen.generate(request["prompt"], **_restore(request["kwargs"]))
