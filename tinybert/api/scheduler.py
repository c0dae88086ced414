"""How packed batches of sequences are spread over threads, apart from what runs on them.

The caller gives a run function: a packed batch in (sequence b = token rows ``starts[b]:starts[b+1]``,
``starts[0] == 0``), its output out, one row per token or one per sequence, computed on the calling
thread with whatever Numba threads are set. The scheduler decides how many of those calls there are and
where they run, so that the Encoder, every task class and, through them, tinybert/distributed.py share
one policy (see ``Scheduler``). Every call sees whole sequences and every kernel computes a row or a
sequence on its own, so the output is the same bit for bit whatever the thread count.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Literal, Protocol, TypeVar

import numba
import numpy as np

from ..errors import InputError, ProcessError

SPLIT_MIN_TOKENS = 64
"""A batch is split over the threads only when each part gets at least this many tokens."""

CHUNK_TOKENS = 256
"""Tokens (whole sequences, at least one) a thread carries through the whole model at a time.

The GEMMs run at full speed from a few dozen rows, so a big batch gains nothing from going through
each layer at once, while its activations cost memory: MiniLM's 32 x 128 batch held ~55 MB of them
(each layer's [T, 4H] intermediate alone is 25 MB), a fifth of the process. Cut into chunks, each
thread's working set is a few MB and stays in cache between layers."""

Per = Literal["token", "sequence"]
"""What a run function's output rows stand for: "token" (rows starts[0]:starts[-1]) or "sequence"."""


class Sequences(Protocol):
    """What the scheduler needs of a packed batch: where its sequences start, and a way to take some
    of them as a batch of their own (to cut it into parts and chunks without knowing its arrays)."""

    @property
    def starts(self) -> np.ndarray: ...

    def select(self, b0: int, b1: int) -> Sequences: ...


S = TypeVar("S", bound=Sequences)
K = TypeVar("K")
RunFn = Callable[[S], np.ndarray]


_forked_after_kernels = False


def _after_fork_in_child() -> None:
    # Numba's threading layer knows its name once a parallel kernel has started its OpenMP (or TBB)
    # workers; a child forked after that has the pool's state but none of its threads.
    global _forked_after_kernels
    try:
        numba.threading_layer()
    except ValueError:
        return
    _forked_after_kernels = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_process() -> None:
    """ProcessError in a child forked after its parent ran parallel kernels (where they would hang, or the
    OpenMP runtime would kill the process)."""
    if _forked_after_kernels:
        raise ProcessError("tinybert's kernels ran in the parent before this process was forked, and their "
                           "worker threads do not exist here: start workers with multiprocessing's 'spawn' or "
                           "'forkserver' method (or fork before the first call)")


def check_threads(threads: int | None) -> int:
    """The thread count to use for ``threads`` (None: all Numba threads), or InputError: a count Numba
    was not started with would fail inside a kernel, after the caller's input was accepted."""
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        return limit
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= limit:
        raise InputError(f"threads must be an integer from 1 to {limit}, got {threads!r}")
    return threads


@contextmanager
def numba_threads(n: int) -> Iterator[None]:
    """Numba's thread count set to ``n`` for the block, on this thread only, and put back after it,
    so that one model's setting never leaks into another's calls. Every kernel call of the API passes
    here, so this is also where a forked child learns that it cannot run them (check_process)."""
    check_process()
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def threads_may_share_kernels() -> bool:
    """Whether two threads may launch parallel kernels at once: the OpenMP and TBB layers allow it,
    Numba's own workqueue layer forbids it. The layer is known once a parallel kernel has run."""
    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        return False


def sequence_chunks(starts: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Cut sequences 0..B-1 into consecutive ranges [b0, b1) of whole sequences holding at most
    ``max_tokens`` tokens each; a sequence longer than that is a range of its own."""
    batch = starts.size - 1
    bounds = [0]
    for b in range(1, batch):
        if starts[b + 1] - starts[bounds[-1]] > max_tokens:
            bounds.append(b)
    bounds.append(batch)
    return list(zip(bounds[:-1], bounds[1:]))


def sequence_groups(starts: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Cut sequences 0..B-1 (sequence b = tokens starts[b]:starts[b+1]) into at most ``parts``
    contiguous, non-empty ranges [b0, b1) of about equal token counts."""
    batch = starts.size - 1
    parts = min(parts, batch, int(starts[-1] - starts[0]) // SPLIT_MIN_TOKENS)
    if parts < 2:
        return [(0, batch)]
    cuts = np.searchsorted(starts, starts[0] + (starts[-1] - starts[0]) * np.arange(1, parts) / parts)
    bounds = sorted({0, batch, *(int(c) for c in np.clip(cuts, 1, batch - 1))})
    return list(zip(bounds[:-1], bounds[1:]))


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` cut into batches of ``batch_size``, longest sequences first (stable):
    similar lengths share a batch, and the threads' last batches are the short, quick ones."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


class _Output:
    """One batch's output, allocated when its first chunk is out (its width and dtype are the run
    function's) and filled by chunks from any thread."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.array: np.ndarray | None = None
        self._lock = threading.Lock()

    def put(self, r0: int, r1: int, values: np.ndarray) -> None:
        if self.array is None:
            with self._lock:
                if self.array is None:
                    self.array = np.empty((self.rows, *values.shape[1:]), dtype=values.dtype)
        self.array[r0:r1] = values


class Scheduler:
    """Runs packed batches on up to ``threads`` threads (see ``check_threads``).

    One batch (``run``): split into ``threads`` parts of about equal token counts, each run start to
    finish on its own thread with single-threaded kernels (no fork/join per layer, no hidden states
    passed between cores); a batch too small to split runs on all threads inside each kernel. Many
    batches (``map``): each batch whole on one worker thread, one per thread at a time with one more
    queued and the next packed meanwhile. Either way each thread takes CHUNK_TOKENS at a time through
    the run function, results come back in order, and a failure is raised in the caller once nothing
    of the call is left running.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = check_threads(threads)
        self._pool: ThreadPoolExecutor | None = None

    def cap(self, threads: int | None) -> int:
        """The threads a call may use: ``threads`` (1 up to this scheduler's count; else InputError), or all."""
        if threads is None:
            return self.threads
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= self.threads:
            raise InputError(f"threads must be an integer from 1 to {self.threads}, got {threads!r}")
        return threads

    def run(self, batch: S, fn: RunFn, per: Per, threads: int | None = None) -> np.ndarray:
        """``fn``'s output for the whole batch, on ``threads`` of the threads (None: all)."""
        threads = self.cap(threads)
        groups = sequence_groups(batch.starts, threads) if threads_may_share_kernels() else \
            [(0, batch.starts.size - 1)]
        out = self._output(batch, per)
        if len(groups) < 2:
            with numba_threads(threads):
                self._run_part(batch, fn, per, out, 0, batch.starts.size - 1)
            return out.array

        def run_part_alone(b0: int, b1: int) -> None:
            with numba_threads(1):
                self._run_part(batch, fn, per, out, b0, b1)

        parts = [self._workers().submit(run_part_alone, b0, b1) for b0, b1 in groups]
        wait(parts)
        for part in parts:
            part.result()
        return out.array

    def run_alone(self, batch: S, fn: RunFn, per: Per) -> np.ndarray:
        """``fn``'s output for the whole batch, on the calling thread alone (one Numba thread)."""
        out = self._output(batch, per)
        with numba_threads(1):
            self._run_part(batch, fn, per, out, 0, batch.starts.size - 1)
        return out.array

    def map(self, lengths: Sequence[int], batch_size: int, pack: Callable[[list[int]], S], fn: RunFn, per: Per,
            progress: str | None = None, threads: int | None = None) -> Iterator[tuple[list[int], S, np.ndarray]]:
        """(indices, ``pack(indices)``, ``fn``'s output) for sequences of the given lengths, in batches of
        ``batch_size`` (``length_batches``), each batch packed only when a thread is about to need it, on
        ``threads`` of the threads (None: all; 1: the calling thread alone).

        ``progress`` names a tqdm bar counting the sequences done (None: no bar). Closing the iterator
        early cancels the batches not begun and waits for those running.
        """
        threads = self.cap(threads)
        batches = length_batches(lengths, batch_size)
        bar = None
        if progress is not None:
            from tqdm import tqdm

            bar = tqdm(total=len(lengths), unit="text", desc=progress)
        packed = ((rows, pack(rows)) for rows in batches)
        if len(batches) > 1 and threads > 1 and threads_may_share_kernels():
            results = self._pipelined(packed, fn, per, threads)
        else:
            results = ((rows, batch, self.run(batch, fn, per, threads)) for rows, batch in packed)
        try:
            for rows, batch, out in results:
                yield rows, batch, out
                if bar is not None:
                    bar.update(len(rows))
        finally:
            results.close()
            if bar is not None:
                bar.close()

    def _pipelined(self, packed: Iterable[tuple[K, S]], fn: RunFn, per: Per,
                   threads: int) -> Iterator[tuple[K, S, np.ndarray]]:
        """Each batch run whole by one worker thread, ``threads`` at a time (one more queued when that is all of
        them). Splitting each batch over the threads (``run``) made both wait at the end of every batch for
        the slower half and for the serial packing and pooling between batches: on the 1,000-sentence corpus
        (MiniLM, 2 threads) this ran in 1288 ms against 1562 ms."""
        pending: deque[tuple[K, S, Future]] = deque()
        # a queued batch would start at once on a worker this call may not use
        ahead = threads + 1 if threads == self.threads else threads
        try:
            for key, batch in packed:
                pending.append((key, batch, self._workers().submit(self.run_alone, batch, fn, per)))
                if len(pending) >= ahead:
                    key, batch, done = pending.popleft()
                    yield key, batch, done.result()
            while pending:
                key, batch, done = pending.popleft()
                yield key, batch, done.result()
        finally:
            # On an error or an abandoned generator, no batch may still run once the caller has control.
            for _, _, left in pending:
                left.cancel()
            wait([left for _, _, left in pending])

    @staticmethod
    def _output(batch: Sequences, per: Per) -> _Output:
        return _Output(int(batch.starts[-1]) if per == "token" else batch.starts.size - 1)

    def _run_part(self, batch: S, fn: RunFn, per: Per, out: _Output, b0: int, b1: int) -> None:
        """Sequences b0..b1-1 through ``fn``, CHUNK_TOKENS at a time, into their rows of ``out``; with
        per-sequence outputs (pooling) no [T, H] array of the batch ever exists: on 1,000 sentences with
        2 threads, batches in flight held ~15 MB."""
        starts = batch.starts
        for c0, c1 in sequence_chunks(starts[b0:b1 + 1], CHUNK_TOKENS):
            values = fn(batch.select(b0 + c0, b0 + c1))
            if per == "token":
                out.put(int(starts[b0 + c0]), int(starts[b0 + c1]), values)
            else:
                out.put(b0 + c0, b0 + c1, values)

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tinybert")
        return self._pool
