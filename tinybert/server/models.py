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
    executor: ThreadPoolExecutor    # the one thread that calls the model (embed, classify, tokenize)
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
    executor = ThreadPoolExecutor(1, thread_name_prefix=f"tinybert-{name}")
    if kind == "generate":
        gen = Generator(argument, threads=threads, dtype=dtype)
        return ServedModel(name, kind, gen, executor, live=LiveBatch(gen, parallel, context, max_waiting))
    if kind == "embed":
        enc = Encoder(argument, threads=threads, dtype=dtype)
        batcher = EmbedBatcher(lambda texts: np.asarray(enc.encode(texts, batch_size=32), dtype=np.float32), executor)
        return ServedModel(name, kind, enc, executor, batcher=batcher)
    return ServedModel(name, kind, Classifier(argument, threads=threads, dtype=dtype), executor)
