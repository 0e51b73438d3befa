"""JAX's persistent compilation cache, so a second start skips XLA compilation of the same programs.

On by default for `DiffGenerator.from_pretrained` (and so the CLI and server): programs that took over a
second to compile are stored under $JDIFF_CACHE_DIR, default ~/.cache/jdiff/jax. JDIFF_CACHE_DIR="" turns it
off. A cache directory the user already configured for JAX is left alone. Converted tokenizers live in its
`tokenizers/` subfolder (jdiff.pipelines.tokenizer).

Multi-process runs (several hosts, or several processes on one host) need more than jax gives them. jax lets
each process decide alone whether a program is in the cache, while only process 0 ever writes entries; the
cache key depends on the cache directory's path (jax puts XLA's autotuning-cache folder into the compile
options); and its remedy for processes that compiled differently (`jax_share_binary_between_hosts`: process 0
compiles and sends the executable to the others) deadlocks as soon as process 0 finds the program in its
cache, because it then sends nothing while the others wait for it. So a restarted job ran, on different
processes, executables of different origin (loaded on one, compiled afresh on another; on separate disks or
paths, only process 0 ever hit), or hung. docs/multihost.md has the details and a reproduction.

`share_across_processes` makes every process run the same executable: for a program whose devices span
processes, process 0 alone consults its cache and publishes what it found (the serialized entry, or a miss)
through the distributed runtime's key-value store; every other process takes that answer instead of its own
disk's. On a miss, every process misses, and jax's binary sharing (then safe) has process 0 compile and send
the executable. The cache directory's path is kept out of the keys, so hosts may keep their caches anywhere.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import jax

logger = logging.getLogger("jdiff")

_enabled = False
_shared = False
# How long a process waits for process 0's cache answer: process 0 may still be reading weights.
SHARE_WAIT_MS = 10 * 60 * 1000
_MISS = b"\x00"
_HIT = b"\x01"


def enable() -> str | None:
    """Turns the cache on (once per process); returns its directory, or None when disabled.

    In a multi-process run (after `jdiff.parallel.distributed.initialize`), process 0's cache is shared with
    the others (`share_across_processes`).
    """
    global _enabled
    path = os.environ.get("JDIFF_CACHE_DIR", str(Path.home() / ".cache" / "jdiff" / "jax"))
    if not path or jax.config.jax_compilation_cache_dir:
        path = jax.config.jax_compilation_cache_dir or None
    elif not _enabled:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        _enabled = True
    if path and jax.process_count() > 1:
        share_across_processes()
    return path


def share_across_processes() -> None:
    """Makes every process of a multi-process run use process 0's cache entries (see the module docstring).

    Idempotent. Where this jax lacks the internals it hooks, the persistent cache is turned off for the
    run instead (a logged warning): compiling afresh everywhere is slower but safe.
    """
    global _shared
    if _shared or jax.process_count() == 1:
        return
    try:
        from jax._src import cache_key as jax_key
        from jax._src import compilation_cache as jax_cache
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        original = jax_cache.get_executable_and_time
        for name in ("_get_cache", "decompress_executable", "extract_executable_and_time"):
            getattr(jax_cache, name)
        for name in ("_hash_accelerator_config", "_hash_string"):
            getattr(jax_key, name)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the installed jax
        client = None
    if client is None:
        logger.warning(
            "jdiff: this jax (%s) lacks the hooks that share the compilation cache across processes; "
            "the persistent cache is off for this multi-process run",
            jax.__version__,
        )
        jax.config.update("jax_enable_compilation_cache", False)
        _shared = True
        return
    # Keys must agree between processes: keep the cache folder's path out of the compile options, and hash
    # the devices by kind and count instead of by the runtime's topology description (on CPU that is each
    # process's own view, so every process computed other keys; the global device assignment stays in the
    # compile options, which are hashed too).
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    count = str(jax.process_count())

    def hash_devices(hash_obj, devices) -> None:
        jax_key._hash_string(hash_obj, count)
        for device in devices.flat:
            jax_key._hash_string(hash_obj, device.device_kind)

    jax_key._hash_accelerator_config = hash_devices
    # On a miss (now a miss on every process), process 0 compiles and the others receive its executable.
    jax.config.update("jax_share_binary_between_hosts", True)
    exchange = _Exchange(client, jax.process_index())

    def get_executable_and_time(cache_key, compile_options, backend, executable_devices):
        if not _spans_processes(executable_devices):
            return original(cache_key, compile_options, backend, executable_devices)
        cache = jax_cache._get_cache(backend)
        entry = exchange.agree(cache_key, lambda: None if cache is None else cache.get(cache_key))
        if entry is None:
            return None, None
        serialized, compile_time = jax_cache.extract_executable_and_time(
            jax_cache.decompress_executable(entry)
        )
        return backend.deserialize_executable(serialized, executable_devices, compile_options), compile_time

    jax_cache.get_executable_and_time = get_executable_and_time
    _shared = True


def _spans_processes(devices) -> bool:
    return len({d.process_index for d in devices}) > 1


class _Exchange:
    """Process 0's answer to each cache lookup, published once per lookup through the key-value store.

    Lookups of one key are numbered per process (programs are looked up in the same order everywhere), so a
    key looked up twice is answered twice, each time with what process 0 found then.
    """

    def __init__(self, client, process_index: int):
        self._client = client
        self._index = process_index
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # the decoder is prepared on a worker thread

    def agree(self, key: str, read_local) -> bytes | None:
        with self._lock:
            n = self._counts.get(key, 0)
            self._counts[key] = n + 1
        name = f"jdiff/compilation-cache/{key}/{n}"
        if self._index == 0:
            entry = read_local()
            self._client.key_value_set_bytes(name, _MISS if entry is None else _HIT + entry)
            return entry
        try:
            answer = self._client.blocking_key_value_get_bytes(name, SHARE_WAIT_MS)
        except Exception as e:  # the runtime raises its own error types
            raise RuntimeError(
                f"process 0 did not publish its compilation-cache entry for {key.split('-')[0]} within "
                f"{SHARE_WAIT_MS // 1000} s ({e}); every process must run the same jdiff and jax versions with "
                "the same arguments"
            ) from None
        return None if answer[:1] == _MISS else answer[1:]
