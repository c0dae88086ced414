"""Embedding requests merged across clients: what arrives while the model is busy runs as its next ``encode``
call (up to a text budget), on the model's own thread, and each request gets its rows back. An idle model
takes a request at once: a lone client waits for nothing.

The encoder's output for a text does not depend on the other texts of its batch (every kernel computes a row
from that row alone), so a merged request's vectors are the ones it would get alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..api.live import QueueFull


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future


class EmbedBatcher:
    """Merges concurrent calls of ``embed(texts)`` into calls of ``run(all_texts) -> float32 [n, dim]``.

    ``max_texts``: texts a merged call takes at most; ``max_wait``: seconds the first request of a batch waits for
    company (0: none; requests that come while a call runs form the next one); ``max_waiting``: texts that may
    wait in all (more: QueueFull, the server's 503)."""

    def __init__(self, run: Callable[[list[str]], np.ndarray], executor: ThreadPoolExecutor,
                 on_batch: Callable[[int], None] | None = None, max_texts: int = 128, max_wait: float = 0.0,
                 max_waiting: int = 4096) -> None:
        self._run, self._executor, self.on_batch = run, executor, on_batch or (lambda n: None)
        self.max_texts, self.max_wait, self.max_waiting = max_texts, max_wait, max_waiting
        self._queue: asyncio.Queue[_Request] | None = None
        self._waiting = 0
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Texts queued and not yet in a model call."""
        return self._waiting

    async def embed(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop:     # started in the server's event loop, on first use
            self._queue, self._loop, self._waiting = asyncio.Queue(), loop, 0
            self._task = loop.create_task(self._serve())
        if self._waiting + len(texts) > self.max_waiting:
            raise QueueFull(f"{self._waiting} texts are waiting already")
        request = _Request(texts, asyncio.get_running_loop().create_future())
        self._waiting += len(texts)
        self._queue.put_nowait(request)
        return await request.future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        carried: _Request | None = None
        while True:
            batch = [carried or await self._queue.get()]
            carried = None
            count = len(batch[0].texts)
            if self.max_wait > 0:           # optional: let company arrive (the default takes what is there)
                await asyncio.sleep(self.max_wait)
            while count < self.max_texts and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if count + len(nxt.texts) > self.max_texts:
                    carried = nxt            # starts the next batch
                    break
                batch.append(nxt)
                count += len(nxt.texts)
            live = [r for r in batch if not r.future.cancelled()]     # clients gone while waiting: skipped
            self._waiting -= count
            if not live:
                continue
            texts = [t for r in live for t in r.texts]
            self.on_batch(len(texts))
            try:
                vectors = await loop.run_in_executor(self._executor, self._run, texts)
            except Exception as exc:      # the model refused the input: every request of the batch hears of it
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            at = 0
            for r in live:
                if not r.future.done():
                    r.future.set_result(vectors[at:at + len(r.texts)])
                at += len(r.texts)
