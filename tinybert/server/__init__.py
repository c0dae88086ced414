"""``tinybert serve``: a local HTTP server that the OpenAI clients, TEI clients, LangChain and LlamaIndex speak.

    serve(["model.safetensors"], host="127.0.0.1", port=8080)         # blocks until SIGTERM / Ctrl-C

OpenAI routes (/v1/models, /v1/embeddings, /v1/completions, /v1/chat/completions, streamed as server-sent
events), TEI routes (/embed, /rerank, /predict, /tokenize; /embed_sparse is 404: no sparse model), /health and
/metrics (Prometheus). Concurrent embedding requests run as one model batch (batching.py); concurrent
generations share decoding steps, joining and leaving at each step (api/live.py). Installed with the ``serve``
extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from .app import Limits, create_app

__all__ = ["serve", "create_app", "open_models", "wait_until_healthy", "Limits"]


def open_models(arguments: list[str], threads: int | None = None, dtype: str = "int8", parallel: int = 8,
                context: int | None = None, max_waiting: int = 64) -> list:
    """Each model (path or Hub id) opened for serving (server/models.py), names unique."""
    from ..errors import InputError
    from .models import open_served

    models = [open_served(a, threads, dtype, parallel, context, max_waiting) for a in arguments]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"two models would have the same name: {names}")
    return models


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          threads: int | None = None, dtype: str = "int8", parallel: int = 8, context: int | None = None,
          limits: Limits | None = None, graceful_seconds: float = 30.0) -> None:
    """Serve ``models`` until SIGTERM or Ctrl-C; in-flight requests finish first (up to ``graceful_seconds``)."""
    import uvicorn

    served = open_models(models, threads, dtype, parallel, context)
    app = create_app(served, api_key, limits)

    @app.on_event("shutdown")
    def _drain() -> None:
        for m in served:
            if m.live is not None:
                m.live.close(graceful_seconds)

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=graceful_seconds)


def wait_until_healthy(url: str, process=None, timeout: float = 120.0) -> None:
    """Wait until the server at ``url`` answers /health (a server started in another process, ``process`` its
    Popen: RuntimeError with its stderr if it exits first); TimeoutError after ``timeout`` seconds."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if process is not None and process.poll() is not None:
            err = process.stderr.read().decode(errors="replace")[-800:] if process.stderr else ""
            raise RuntimeError(f"the server exited with status {process.returncode}: {err}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer /health within {timeout} s")
        time.sleep(0.2)
