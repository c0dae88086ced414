"""The public API. ``Encoder`` turns texts into vectors and token ids into hidden states; the task
classes built on it (tinybert/tasks.py) add the heads."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from . import format as fmt
from .config import EncoderConfig, TaskConfig
from .errors import InputError, ModelKindError
from .heads import TaskHead, l2_normalize, pool_segments
from .loader import load
from .models import EncoderModel
from .tokenizer import Packed, check_texts, load_tokenizer, pack, token_ids


def _check_threads(threads: int | None) -> int:
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        return limit
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= limit:
        raise InputError(f"threads must be an integer from 1 to {limit}, got {threads!r}")
    return threads


@contextmanager
def _numba_threads(n: int) -> Iterator[None]:
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


SPLIT_MIN_TOKENS = 64
"""A batch is split over the threads only when each part gets at least this many tokens."""

CHUNK_TOKENS = 256
"""Tokens (whole sequences, at least one) a thread carries through the whole model at a time.

The GEMMs run at full speed from a few dozen rows, so a big batch gains nothing from going through
each layer at once, while its activations cost memory: MiniLM's 32 x 128 batch held ~55 MB of them
(each layer's [T, 4H] intermediate alone is 25 MB), a fifth of the process. Cut into chunks, each
thread's working set is a few MB and stays in cache between layers."""


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


def _threads_may_share_kernels() -> bool:
    # Two threads may launch parallel kernels at once under the OpenMP and TBB layers; Numba's own
    # workqueue layer forbids it. The layer is known once a parallel kernel has run.
    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        return False


def _all_keys(batch: Packed) -> np.ndarray:
    """The key mask of a packed batch: it has no padding, so every token may be attended to."""
    return np.ones(batch.ids.size, dtype=np.uint8)


def _as_int_array(name: str, value: object, shape: tuple[int, ...] | None) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(f"{name} must be a rectangular array of integers") from None
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D [batch, sequence], got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, input_ids has {shape}")
    return array


class Encoder:
    """A BERT-family encoder loaded from a tinybert file.

    >>> enc = Encoder("all-MiniLM-L6-v2.int8.safetensors")
    >>> enc.encode(["A sentence.", "Another one."]).shape
    (2, 384)

    ``threads`` caps the threads used by this encoder's calls (default: all Numba threads). A batch
    of several sequences is split into ``threads`` parts of about equal token counts, each run
    start to finish on its own thread with single-threaded kernels (no fork/join per layer, no
    hidden states passed between cores); a single sequence runs on all threads inside each kernel.
    Results are identical either way: every kernel computes a row or a sequence independently.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        model_file = load(path)
        if not isinstance(model_file.config, EncoderConfig):
            raise ModelKindError(f"{path} holds a {model_file.config.kind} model; {type(self).__name__} needs an "
                                 "encoder (use Generator for decoders)")
        self.path = Path(path)
        self.config: EncoderConfig = model_file.config
        self.pooling: dict = dict(model_file.pooling)
        self.quantization: str = model_file.quantization
        self.metadata: dict[str, str] = model_file.metadata
        self.task: TaskConfig = model_file.task
        self.tokenizer_options: dict = dict(model_file.tokenizer_options)
        self._tokenizer_json = model_file.tokenizer_json
        self.tokenizer = load_tokenizer(model_file.tokenizer_json, self.config.max_length)
        self.threads = _check_threads(threads)
        self._pool: ThreadPoolExecutor | None = None
        self._model = EncoderModel(self.config, model_file.tensors)
        self._head = TaskHead(self.config, self.task, model_file.tensors) if self.task.type != "feature-extraction" \
            else None

    def _require_task(self, *tasks: str) -> None:
        if self.task.type not in tasks:
            raise ModelKindError(
                f"{self.path} carries a {self.task.type} head; {type(self).__name__} needs {' or '.join(tasks)} "
                "(convert a checkpoint with that head, e.g. *ForSequenceClassification)")

    @property
    def dimension(self) -> int:
        """Length of the vectors ``encode`` returns."""
        return self.config.hidden_size

    def forward(self, input_ids: object, attention_mask: object = None,
                token_type_ids: object = None) -> np.ndarray:
        """Last hidden state float32 [batch, seq, hidden] for token ids, like transformers'
        ``model(...).last_hidden_state``.

        ``attention_mask`` (1 = attend, 0 = padding) defaults to all ones; ``token_type_ids``
        to zeros. Raises InputError for ids outside the vocabulary, sequences longer than the
        position table, masks that are not 0/1, or shapes that disagree.
        """
        ids, mask, types, starts = self._check_ids(input_ids, attention_mask, token_type_ids)
        batch, seq = ids.shape
        hidden = self._run(ids.reshape(-1), types.reshape(-1), starts, mask.reshape(-1))
        return hidden.reshape(batch, seq, self.config.hidden_size)

    def logits(self, input_ids: object, attention_mask: object = None,
               token_type_ids: object = None) -> dict[str, np.ndarray]:
        """The head's raw outputs for token ids, named as transformers names them.

        sequence-classification: ``logits`` [batch, labels]; token-classification: ``logits``
        [batch, seq, labels]; question-answering: ``start_logits``, ``end_logits`` [batch, seq];
        masked-lm: ``logits`` [batch, seq, vocab]; pretraining (BertForPreTraining):
        ``prediction_logits`` [batch, seq, vocab] and ``seq_relationship_logits`` [batch, 2].
        Inputs as ``forward``. Raises ModelKindError on a file without a head.
        """
        if self._head is None:
            raise ModelKindError(f"{self.path} holds only an encoder (feature-extraction); it has no head")
        ids, mask, types, starts = self._check_ids(input_ids, attention_mask, token_type_ids)
        batch, seq = ids.shape
        hidden = self._run(ids.reshape(-1), types.reshape(-1), starts, mask.reshape(-1))
        kind, head = self.task.type, self._head
        if kind == "sequence-classification":
            return {"logits": head.sequence_logits(hidden, starts)}
        if kind == "token-classification":
            return {"logits": head.token_logits(hidden).reshape(batch, seq, -1)}
        if kind == "question-answering":
            both = head.token_logits(hidden).reshape(batch, seq, 2)
            return {"start_logits": np.ascontiguousarray(both[..., 0]),
                    "end_logits": np.ascontiguousarray(both[..., 1])}
        vocab = head.mlm_logits(hidden).reshape(batch, seq, -1)
        if kind == "masked-lm":
            return {"logits": vocab}
        return {"prediction_logits": vocab, "seq_relationship_logits": head.nsp_logits(hidden, starts)}

    def _check_ids(self, input_ids: object, attention_mask: object,
                   token_type_ids: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        ids = _as_int_array("input_ids", input_ids, None)
        batch, seq = ids.shape
        if batch == 0 or seq == 0:
            raise InputError(f"input_ids is empty (shape {ids.shape})")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise InputError(f"input_ids must lie in [0, {cfg.vocab_size}), got [{ids.min()}, {ids.max()}]")
        if seq + cfg.position_offset > cfg.max_positions:
            raise InputError(f"sequence length {seq} exceeds the model's {cfg.max_positions - cfg.position_offset} "
                             "positions; truncate the input (encode() truncates texts itself)")
        if attention_mask is None:
            mask = np.ones((batch, seq), dtype=np.uint8)
        else:
            mask = _as_int_array("attention_mask", attention_mask, ids.shape)
            if mask.min() < 0 or mask.max() > 1:
                raise InputError("attention_mask must hold only 0 and 1")
            mask = mask.astype(np.uint8)
        if token_type_ids is None:
            types = np.zeros((batch, seq), dtype=np.int32)
        else:
            types = _as_int_array("token_type_ids", token_type_ids, ids.shape)
            limit = max(cfg.type_vocab_size, 1)
            if types.min() < 0 or types.max() >= limit:
                raise InputError(f"token_type_ids must lie in [0, {limit})")
        starts = np.arange(0, batch * seq + 1, seq, dtype=np.int64)
        return ids, mask, types, starts

    def _run(self, ids: np.ndarray, types: np.ndarray, starts: np.ndarray, key_mask: np.ndarray,
             pool: str | None = None) -> np.ndarray:
        """Hidden states [T, H] of a packed batch, or with ``pool`` (a pooling mode, for a batch
        without padding) its sentence vectors [B, H]; on all the threads: its sequences split into
        one group per thread (see sequence_groups), or every thread on each kernel."""
        ids, types, starts, key_mask = self._contiguous(ids, types, starts, key_mask)
        groups = sequence_groups(starts, self.threads) if _threads_may_share_kernels() else [(0, starts.size - 1)]
        out = self._output(ids, starts, pool)
        if len(groups) < 2:
            with _numba_threads(self.threads):
                self._run_part(ids, types, starts, key_mask, out, 0, starts.size - 1, pool)
            return out

        def run_part_alone(b0: int, b1: int) -> None:
            with _numba_threads(1):
                self._run_part(ids, types, starts, key_mask, out, b0, b1, pool)

        for part in [self._workers().submit(run_part_alone, b0, b1) for b0, b1 in groups]:
            part.result()
        return out

    def _run_alone(self, ids: np.ndarray, types: np.ndarray, starts: np.ndarray, key_mask: np.ndarray,
                   pool: str | None = None) -> np.ndarray:
        """_run on the calling thread alone (one Numba thread)."""
        ids, types, starts, key_mask = self._contiguous(ids, types, starts, key_mask)
        out = self._output(ids, starts, pool)
        with _numba_threads(1):
            self._run_part(ids, types, starts, key_mask, out, 0, starts.size - 1, pool)
        return out

    def _output(self, ids: np.ndarray, starts: np.ndarray, pool: str | None) -> np.ndarray:
        rows = ids.size if pool is None else starts.size - 1
        return np.empty((rows, self.config.hidden_size), dtype=np.float32)

    @staticmethod
    def _contiguous(ids: np.ndarray, types: np.ndarray, starts: np.ndarray,
                    key_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.ascontiguousarray(ids, dtype=np.int32), np.ascontiguousarray(types, dtype=np.int32),
                np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(key_mask, dtype=np.uint8))

    def _run_part(self, ids: np.ndarray, types: np.ndarray, starts: np.ndarray, key_mask: np.ndarray,
                  out: np.ndarray, b0: int, b1: int, pool: str | None = None) -> None:
        """Sequences b0..b1-1 through the model, CHUNK_TOKENS at a time, into their rows of out: their
        tokens' rows, or with ``pool`` their own rows, each chunk pooled as soon as it is out of the
        model (no [T, H] array: on 1,000 sentences with 2 threads, batches in flight held ~15 MB)."""
        for c0, c1 in sequence_chunks(starts[b0:b1 + 1], CHUNK_TOKENS):
            lo, hi = starts[b0 + c0], starts[b0 + c1]
            local = starts[b0 + c0:b0 + c1 + 1] - lo
            hidden = self._model(ids[lo:hi], types[lo:hi], local, key_mask[lo:hi])
            if pool is None:
                out[lo:hi] = hidden
            else:
                out[b0 + c0:b0 + c1] = pool_segments(hidden, local, pool)

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tinybert")
        return self._pool

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, normalize: bool | None = None,
               pooling: str | None = None, show_progress: bool = False) -> np.ndarray:
        """Sentence embeddings float32 [len(texts), hidden], one row per text, in input order.

        Pooling ("mean", "cls", "max", "mean_sqrt_len") and L2 normalisation default to what the
        file records (all-MiniLM-L6-v2: mean + normalise, as sentence-transformers does). Texts
        longer than the model's max_length tokens are truncated to it. A single string counts as
        a list of one. Empty input or an empty text raises InputError.
        """
        texts = check_texts(texts)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        mode = self.pooling["mode"] if pooling is None else pooling
        if mode not in fmt.POOLING_MODES:
            raise InputError(f"pooling must be one of {fmt.POOLING_MODES}, got {pooling!r}")
        do_normalize = self.pooling["normalize"] if normalize is None else bool(normalize)

        encodings = token_ids(self.tokenizer, texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for rows, _, pooled in self._batches(encodings, batch_size, show_progress, "encoding", pool=mode):
            out[rows] = pooled
        return l2_normalize(out) if do_normalize else out

    def _batches(self, encodings: list, batch_size: int, show_progress: bool = False,
                 desc: str = "", pool: str | None = None) -> Iterator[tuple[list[int], Packed, np.ndarray]]:
        """Run the encoder over tokenizer encodings, ``batch_size`` at a time, packed without padding.

        Yields (indices into ``encodings``, the packed batch, its hidden states [T, H], or with
        ``pool`` its sentence vectors [B, H]). Longest sequences go first: it balances the threads'
        work and keeps similar lengths together.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        progress = None
        if show_progress:
            from tqdm import tqdm

            progress = tqdm(total=len(encodings), unit="text", desc=desc)
        batches = (order[start:start + batch_size] for start in range(0, len(order), batch_size))
        packed = ((rows, self._pack(encodings, rows)) for rows in batches)
        if len(order) > batch_size and self.threads > 1 and _threads_may_share_kernels():
            results = self._pipelined(packed, pool)
        else:
            results = ((rows, batch, self._run(batch.ids, batch.type_ids, batch.starts, _all_keys(batch), pool))
                       for rows, batch in packed)
        try:
            for rows, batch, hidden in results:
                yield rows, batch, hidden
                if progress is not None:
                    progress.update(len(rows))
        finally:
            results.close()
            if progress is not None:
                progress.close()

    def _pack(self, encodings: list, rows: list[int]) -> Packed:
        batch = pack([encodings[i] for i in rows])
        if batch.ids.max() >= self.config.vocab_size:
            raise InputError("the tokenizer produced ids outside the model's vocabulary")
        if self.config.type_vocab_size <= 1:
            # No segment embeddings to tell pair members apart (DistilBERT, RoBERTa): transformers'
            # tokenizers for these models do not return token_type_ids, so segment ids mean nothing.
            batch.type_ids[:] = 0
        elif batch.type_ids.max() >= self.config.type_vocab_size:
            raise InputError("the tokenizer produced token type ids the model does not have")
        return batch

    def _pipelined(self, packed: Iterable[tuple[list[int], Packed]],
                   pool: str | None = None) -> Iterator[tuple[list[int], Packed, np.ndarray]]:
        """(rows, batch, hidden or pooled) of each batch in order, each batch run whole by one worker thread.

        Many batches: one per thread at a time, with one more queued, and the next packed meanwhile.
        Splitting each batch over the threads (``_run``) made both wait at the end of every batch for
        the slower half and for the serial packing and pooling between batches: on the 1,000-sentence
        corpus (MiniLM, 2 threads) this ran in 1288 ms against 1562 ms.
        """
        pending: deque[tuple[list[int], Packed, Future]] = deque()
        try:
            for rows, batch in packed:
                pending.append((rows, batch, self._workers().submit(
                    self._run_alone, batch.ids, batch.type_ids, batch.starts, _all_keys(batch), pool)))
                if len(pending) > self.threads:
                    rows, batch, done = pending.popleft()
                    yield rows, batch, done.result()
            while pending:
                rows, batch, done = pending.popleft()
                yield rows, batch, done.result()
        finally:
            # On an error or an abandoned generator, no batch may still run once the caller has control.
            for _, _, left in pending:
                left.cancel()
            wait([left for _, _, left in pending])
