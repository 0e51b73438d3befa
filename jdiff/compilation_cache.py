"""JAX's persistent compilation cache, so a second start skips XLA compilation of the same programs.

On by default for `DiffGenerator.from_pretrained` (and so the CLI and server): programs that took over a
second to compile are stored under $JDIFF_CACHE_DIR, default ~/.cache/jdiff/jax. JDIFF_CACHE_DIR="" turns it
off. A cache directory the user already configured for JAX is left alone. Converted tokenizers live in its
`tokenizers/` subfolder (jdiff.pipelines.tokenizer).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_enabled = False


def enable() -> str | None:
    """Turns the cache on (once per process); returns its directory, or None when disabled."""
    global _enabled
    path = os.environ.get("JDIFF_CACHE_DIR", str(Path.home() / ".cache" / "jdiff" / "jax"))
    if not path or jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir or None
    if not _enabled:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        _enabled = True
    return path
