"""``EncoderRunner``: an encoder model with its head, tokenizer and scheduler, for the public classes
(Encoder and the task classes) to run texts and token ids through without sharing private methods."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from ..config import DecoderConfig, EncoderConfig
from ..errors import InputError
from ..models.decoder import DecoderModel
from ..models.encoder import EncoderModel
from ..models.heads import DenseModules, TaskHead, pool_segments
from ..tokenizer import CompactText, TextTokenizer, pack
from .opening import Opened
from .scheduler import Scheduler


@dataclass(slots=True)
class EncoderBatch:
    """Sequences packed without padding (sequence b is rows starts[b]:starts[b+1] of each array), in
    the dtypes the kernels take."""

    ids: np.ndarray        # int32 [T]
    type_ids: np.ndarray   # int32 [T]
    starts: np.ndarray     # int64 [B+1], from 0
    key_mask: np.ndarray   # uint8 [T]: 0 = padding no token may attend to

    @classmethod
    def of(cls, ids: np.ndarray, type_ids: np.ndarray, starts: np.ndarray,
           key_mask: np.ndarray | None = None) -> EncoderBatch:
        """A batch of these arrays, made contiguous in the kernels' dtypes; no key mask means no
        padding (every token may be attended to)."""
        if key_mask is None:
            key_mask = np.ones(np.size(ids), dtype=np.uint8)
        return cls(np.ascontiguousarray(ids, dtype=np.int32), np.ascontiguousarray(type_ids, dtype=np.int32),
                   np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(key_mask, dtype=np.uint8))

    def select(self, b0: int, b1: int) -> EncoderBatch:
        """Sequences b0..b1-1 as a batch of their own (views, no copies)."""
        lo, hi = self.starts[b0], self.starts[b1]
        return EncoderBatch(self.ids[lo:hi], self.type_ids[lo:hi], self.starts[b0:b1 + 1] - lo, self.key_mask[lo:hi])


class EncoderRunner:
    """What the encoder classes run on: ``model`` and ``head`` (None for feature extraction) on
    ``scheduler``'s threads, fed by ``tokenizer``.

    ``run`` takes one batch on all the threads; ``batches`` many tokenized sequences, batched and
    pipelined. With ``pool`` (a pooling mode, for batches without padding) both give sentence vectors
    [B, dim], each chunk pooled as it leaves the model and put through the file's sentence-transformers Dense
    modules (``dense``; none in most files: dim = H); without, hidden states [T, H].
    """

    def __init__(self, opened: Opened) -> None:
        self.config: EncoderConfig | DecoderConfig = opened.config
        self.tokenizer = opened.tokenizer
        self.tokenizer_json: CompactText = opened.tokenizer.json
        self.scheduler = Scheduler(opened.threads)
        if isinstance(self.config, DecoderConfig):      # a decoder embedder (Qwen3-Embedding, EmbeddingGemma)
            decoder = DecoderModel(self.config, opened.tensors, lm_head=False)
            self.model = lambda ids, type_ids, starts, key_mask: decoder.packed(ids, starts, key_mask)
        else:
            self.model = EncoderModel(self.config, opened.tensors)
        self.dense = DenseModules(opened.file.dense, opened.tensors)
        task = opened.file.task
        self.head = TaskHead(self.config, task, opened.tensors) if task.type != "feature-extraction" else None
        self._truncating: dict[tuple[int, int, str], TextTokenizer] = {}
        self._lock = threading.Lock()

    def run(self, batch: EncoderBatch, pool: str | None = None) -> np.ndarray:
        """Hidden states [T, H] of ``batch``, or with ``pool`` its sentence vectors [B, H]."""
        return self.scheduler.run(batch, self._function(pool), "token" if pool is None else "sequence")

    def batches(self, encodings: list, batch_size: int, show_progress: bool = False, desc: str = "",
                pool: str | None = None, threads: int | None = None
                ) -> Iterator[tuple[list[int], EncoderBatch, np.ndarray]]:
        """(indices into ``encodings``, their packed batch, its hidden states or with ``pool`` its
        sentence vectors) for tokenizer encodings (or TokenIds), ``batch_size`` at a time, longest first,
        on ``threads`` of the threads (see Scheduler.map)."""
        return self.scheduler.map([len(e.ids) for e in encodings], batch_size, lambda rows: self.pack(encodings, rows),
                                  self._function(pool), "token" if pool is None else "sequence",
                                  desc if show_progress else None, threads)

    def pack(self, encodings: list, rows: list[int]) -> EncoderBatch:
        """``encodings[rows]`` as one batch, or InputError for ids the model does not have."""
        batch = pack([encodings[i] for i in rows])
        if batch.ids.max() >= self.config.vocab_size:
            raise InputError("the tokenizer produced ids outside the model's vocabulary")
        if self.config.type_vocab_size <= 1:
            # No segment embeddings to tell pair members apart (DistilBERT, RoBERTa): transformers'
            # tokenizers for these models do not return token_type_ids, so segment ids mean nothing.
            batch.type_ids[:] = 0
        elif batch.type_ids.max() >= self.config.type_vocab_size:
            raise InputError("the tokenizer produced token type ids the model does not have")
        return EncoderBatch.of(batch.ids, batch.type_ids, batch.starts)

    def truncating_tokenizer(self, max_length: int, stride: int, strategy: str = "longest_first") -> TextTokenizer:
        """A tokenizer that cuts long inputs into windows of ``max_length`` tokens sharing ``stride``
        (``Encoding.overflowing``), built once per setting: reconfiguring the shared one would race with
        other threads."""
        key = (max_length, stride, strategy)
        with self._lock:
            if key not in self._truncating:
                tok = Tokenizer.from_str(str(self.tokenizer_json))
                tok.no_padding()
                try:
                    tok.enable_truncation(max_length=max_length, stride=stride, strategy=strategy)
                except Exception as exc:  # a window too short to hold more than its shared tokens (ValueError)
                    raise InputError(f"windows of {max_length} tokens sharing {stride} cannot be made with this "
                                     f"tokenizer ({exc})") from None
                self._truncating[key] = TextTokenizer(tok, self.tokenizer_json, max_length, windows=True)
            return self._truncating[key]

    def _function(self, pool: str | None) -> Callable[[EncoderBatch], np.ndarray]:
        """The scheduler's run function: the model on one batch, pooled when asked. It looks the model
        up on each call, so that a replaced ``model`` (tests count calls that way) takes effect."""
        if pool is None:
            return lambda b: self.model(b.ids, b.type_ids, b.starts, b.key_mask)
        return lambda b: self.dense(pool_segments(self.model(b.ids, b.type_ids, b.starts, b.key_mask), b.starts,
                                                  pool))
