"""`serve(gen, ...)` runs uvicorn with a graceful SIGTERM / SIGINT: the first signal stops accepting
connections, fails queued-but-unstarted requests with 503, lets the running batch (or video job) finish and
its responses go out, then exits normally (exit code 0). With `shutdown_grace_s`, work still running after
that many seconds is abandoned: its image requests are answered 503 and the server exits 0 without waiting
for the device (a `generate` call cannot be interrupted midway; continuous batching's slots are cancelled at
the next chunk boundary). A second SIGINT forces the exit.

The server listens at once; warm-up compiles in the background (`/health` 503 until it is done). A failed
warm-up stops the server and `serve` returns False (the CLI exits 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from jdiff.server.app import create_app

__all__ = ["serve"]


def serve(
    gen,
    *,
    host: str = "127.0.0.1",
    port: int = 30000,
    log_level: str = "info",
    shutdown_grace_s: float | None = None,
    **options,
) -> bool:
    """Serves `gen` (a `DiffGenerator`) on host:port until SIGTERM / SIGINT.

    Args:
        gen: the loaded model.
        host, port: where to listen.
        log_level: for jdiff's one-line-per-request log and uvicorn's.
        shutdown_grace_s: after SIGTERM, how long in-flight work may run on; None: as long as it takes.
        **options: `create_app` keywords (max_batch, batch_wait_ms, timeout_s, max_pixels, max_queue,
            warmup, model_name, api_key, batching, slots, chunk_steps, max_steps).

    Returns:
        Whether the server started (False: start-up failed, e.g. a warm-up error or a port in use;
        uvicorn logged why).
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(gen, **options)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=shutdown_grace_s,
    )
    server = _GracefulServer(config, on_signal=app.state.begin_shutdown)
    app.state.stop_timeout = shutdown_grace_s

    def stop_on_failed_warmup() -> None:
        server.should_exit = True

    app.state.on_warmup_failure = stop_on_failed_warmup
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 3 when start-up (binding the port) fails
        if e.code != STARTUP_FAILURE:
            raise
    return server.started and app.state.warmup_error is None


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, draining jdiff's queue on the first signal and exiting 0 after a clean shutdown.

    uvicorn re-raises a caught SIGTERM after its shutdown (the process then dies of the signal, code 143);
    a drained shutdown is the normal end of a server, so this one does not.
    """

    def __init__(self, config: uvicorn.Config, *, on_signal: Callable[[], object]):
        super().__init__(config)
        self._on_signal = on_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        # A signal handler may interrupt code holding the queue's lock: drain from the event loop instead.
        if not self.should_exit and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_signal)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
