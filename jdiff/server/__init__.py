"""`jdiff serve`: an OpenAI-style HTTP server over one loaded model (see `app.py` for the endpoints).

`create_app(gen, ...)` builds the app (`app.py`); `serve(gen, ...)` runs it with uvicorn (`runner.py`). Both
load lazily, so `jdiff.server.options` (the CLI's serve flags) imports without FastAPI or uvicorn.
"""

from __future__ import annotations

__all__ = ["create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from jdiff.server.app import create_app

        return create_app
    if name == "serve":
        from jdiff.server.runner import serve

        return serve
    raise AttributeError(f"module 'jdiff.server' has no attribute {name!r}")
