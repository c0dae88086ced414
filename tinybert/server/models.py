"""The models a server holds: each opened with the class its file's task calls for, under a short name, with the
thread its calls run on and what batches its requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..api.encoder import Encoder
from ..api.generator import Generator
from ..api.live import LiveBatch
from ..api.resolve import resolve
from ..api.scheduler import threads_may_share_kernels
from ..api.tasks import Classifier
from ..errors import InputError
from ..loader import load
from .batching import EmbedBatcher

# What each file task opens as, and which routes it serves.
KINDS = {"text-generation": "generate", "feature-extraction": "embed", "sequence-classification": "classify"}


@dataclass
class ServedModel:
    name: str
    kind: str                       # "generate", "embed" or "classify"
    model: Generator | Encoder | Classifier
    executor: ThreadPoolExecutor    # the threads that call the model (embed: one per batcher worker)
    live: LiveBatch | None = None
    batcher: EmbedBatcher | None = None
    extra: dict = field(default_factory=dict)


def model_name(argument: str) -> str:
    """The name clients use: a file's or folder's stem, or the Hub id as given."""
    path = Path(argument)
    return path.stem if path.exists() else argument


def open_served(argument: str, threads: int | None, dtype: str, parallel: int, context: int | None,
                max_waiting: int) -> ServedModel:
    """Open ``argument`` (path or Hub id) as the class its task calls for."""
    task = load(resolve(argument, dtype)[0]).task.type
    kind = KINDS.get(task)
    if kind is None:
        raise InputError(f"{argument}: a {task} model has no server routes (serve text-generation, "
                         "feature-extraction or sequence-classification models)")
    name = model_name(argument)
    if kind == "generate":
        gen = Generator(argument, threads=threads, dtype=dtype)
        return ServedModel(name, kind, gen, _executor(name, 1), live=LiveBatch(gen, parallel, context, max_waiting))
    if kind == "embed":
        enc = Encoder(argument, threads=threads, dtype=dtype)
        enc.encode(["warm"])        # a parallel kernel has run: Numba's threading layer is known
        # one merged call per core at once, where the threading layer lets threads launch kernels side by side
        workers = enc.threads if threads_may_share_kernels() else 1

        def run(texts: list[str], threads: int) -> tuple[np.ndarray, np.ndarray]:
            # the usage counts too, here: tokenizing on the event loop took a third of its time at 64 clients
            counts = np.array([len(e.ids) for e in enc.tokenizer.encode_batch(texts)])
            return np.asarray(enc.encode(texts, batch_size=32, threads=threads), dtype=np.float32), counts
        executor = _executor(name, workers)
        return ServedModel(name, kind, enc, executor, batcher=EmbedBatcher(run, executor, workers=workers))
    return ServedModel(name, kind, Classifier(argument, threads=threads, dtype=dtype), _executor(name, 1))


def _executor(name: str, threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix=f"tinybert-{name}")
