"""Progress ticks from inside compiled loops, routed to the request that asked for them.

A compiled program cannot close over a per-request Python object without being retraced for each one, and a
module-global hook swapped per request mixes up the ticks of requests running on several threads. So hooks
live in a registry keyed by an int token: `track(hook)` registers one and yields its token, the jitted
program takes the token as a traced int32 argument, and the one callback compiled into every program
(`emit`, a fixed module-level function, so programs never change) looks the hook up by token when a tick
arrives. A token with no hook (the request finished, or none was ever registered) is a no-op.

Ticks are `jax.debug.callback`s: the device does not wait for the host, and ticks that arrive after their
`track` block has exited are dropped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import jax
from jaxtyping import Array, Int

Hook = Callable[[int], None]

_MAX_TOKEN = 2**31 - 1  # tokens travel as int32

_lock = threading.Lock()
_hooks: dict[int, Hook] = {}
_last = 0  # tokens start at 1


@contextlib.contextmanager
def track(hook: Hook) -> Iterator[int]:
    """Registers `hook` for the block and yields its token (pass it to the jitted loop as an int32).

    Args:
        hook: called with each finished step's index, from the runtime's callback thread; steps may arrive
            out of order and, in multi-device programs, more than once.

    Yields:
        The token, unique among the hooks registered now.
    """
    global _last
    with _lock:
        # Always the next token, never the one just released: a late tick of the previous request must not
        # reach this one's hook. Wraps after 2**31 - 1 requests, skipping tokens still in use.
        token = _last % _MAX_TOKEN + 1
        while token in _hooks:
            token = token % _MAX_TOKEN + 1
        _last = token
        _hooks[token] = hook
    try:
        yield token
    finally:
        with _lock:
            del _hooks[token]


def emit(token, step) -> None:
    """The host side of a tick: calls the hook registered under `token`, if any, with the step index."""
    with _lock:
        hook = _hooks.get(int(token))
    if hook is not None:  # called outside the lock: a slow hook must not hold up other requests' ticks
        hook(int(step))


def tick(token: Int[Array, ""], step: Int[Array, ""]) -> None:
    """Traced: reports `step` to `token`'s hook without making the device wait for the host."""
    jax.debug.callback(emit, token, step)
