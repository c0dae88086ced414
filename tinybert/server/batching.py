"""Embedding requests merged across clients: what arrives while the model is busy runs as its next ``encode``
call (up to a text budget), and each request gets its rows back. An idle model takes a request at once: a lone
client waits for nothing.

With several workers (one per core), each merged call runs whole on one core while the others take the next
ones, as ``Encoder.encode`` runs its own batches; a call that finds the other workers idle takes every core.
Splitting each batch over the cores made them wait for each other at its end and for the event loop between
batches: MiniLM int8, 64 clients on the same 2 cores, 746 texts/s with one worker, 920-1,001 with one per core
(bench.serve; docs/server.md).

The encoder's output for a text does not depend on the other texts of its batch, nor on the thread count (every
kernel computes a row from that row alone), so a merged request's vectors are the ones it would get alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
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
    """Merges concurrent calls of ``embed(texts)`` into calls of ``run(all_texts, threads) -> (vectors float32
    [n, dim], token counts [n])``; each call gets its rows of both.

    ``workers``: merged calls running at once (``executor`` must have as many threads; ``run`` gets
    ``threads`` = ``workers`` when it is the only call running, else 1); ``max_texts``: texts a merged call
    takes at most; ``max_wait``: seconds the first request of a batch waits for company (0: none; requests
    that come while calls run form the next one); ``max_waiting``: texts that may wait in all (more:
    QueueFull, the server's 503)."""

    def __init__(self, run: Callable[[list[str], int], tuple[np.ndarray, np.ndarray]], executor: ThreadPoolExecutor,
                 on_batch: Callable[[int], None] | None = None, max_texts: int = 128, max_wait: float = 0.0,
                 max_waiting: int = 4096, workers: int = 1) -> None:
        self._run, self._executor, self.on_batch = run, executor, on_batch or (lambda n: None)
        self.max_texts, self.max_wait, self.max_waiting, self.workers = max_texts, max_wait, max_waiting, workers
        self._pending: deque[_Request] = deque()
        self._ready: asyncio.Event | None = None       # set while requests wait (wakes idle workers)
        self._waiting = 0
        self._running = 0
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Texts queued and not yet in a model call."""
        return self._waiting

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        if not self._tasks or self._loop is not loop:     # started in the server's event loop, on first use
            self._pending, self._ready, self._loop, self._waiting, self._running = deque(), asyncio.Event(), loop, 0, 0
            self._tasks = [loop.create_task(self._serve()) for _ in range(self.workers)]
        if self._waiting + len(texts) > self.max_waiting:
            raise QueueFull(f"{self._waiting} texts are waiting already")
        request = _Request(texts, loop.create_future())
        self._waiting += len(texts)
        self._pending.append(request)
        self._ready.set()
        return await request.future

    async def _next_batch(self) -> list[_Request]:
        """The requests of the next merged call: the first waiting, then those behind it, up to max_texts."""
        while True:
            while not self._pending:
                self._ready.clear()
                await self._ready.wait()
            if self.max_wait <= 0:
                break
            await asyncio.sleep(self.max_wait)     # optional: let company arrive (the default takes what is there)
            if self._pending:                      # (another worker may have taken it meanwhile)
                break
        # an even share of what waits for each idle worker (this one included): one worker taking it all would
        # leave the others idle until its clients come back
        share = min(self.max_texts, -(-self._waiting // (self.workers - self._running)))
        batch = [self._pending.popleft()]
        count = len(batch[0].texts)
        while self._pending and count + len(self._pending[0].texts) <= share:
            batch.append(self._pending.popleft())
            count += len(batch[-1].texts)
        self._waiting -= count
        if not self._pending:
            self._ready.clear()
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [r for r in batch if not r.future.cancelled()]     # clients gone while waiting: skipped
            if not live:
                continue
            texts = [t for r in live for t in r.texts]
            self.on_batch(len(texts))
            threads = self.workers if self._running == 0 else 1
            self._running += 1
            try:
                vectors, counts = await loop.run_in_executor(self._executor, self._run, texts, threads)
            except Exception as exc:      # the model refused the input: every request of the batch hears of it
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            finally:
                self._running -= 1
            at = 0
            for r in live:
                if not r.future.done():
                    r.future.set_result((vectors[at:at + len(r.texts)], counts[at:at + len(r.texts)]))
                at += len(r.texts)
