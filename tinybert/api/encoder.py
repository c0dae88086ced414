"""The public API. ``Encoder`` turns texts into vectors and token ids into hidden states; the task
classes built on it (tinybert/api/tasks.py) add the heads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import format as fmt
from ..config import EncoderConfig, TaskConfig
from ..errors import InputError, ModelKindError
from ..models.heads import l2_normalize
from ..tokenizer import check_texts, token_ids
from .opening import open_model
from .runner import EncoderBatch, EncoderRunner
from .scheduler import check_threads


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
    ``runner`` (an EncoderRunner: model, head, tokenizer and scheduler) is what the calls run on.
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        opened = open_model(path, "encoder", threads, type(self).__name__, dtype=dtype, revision=revision,
                           local_files_only=local_files_only)
        model_file = opened.file
        self.path = opened.path
        self.config: EncoderConfig = opened.config
        self.pooling: dict = dict(model_file.pooling)
        self.quantization: str = opened.quantization
        self.metadata: dict[str, str] = opened.metadata
        self.task: TaskConfig = model_file.task
        self.tokenizer_options: dict = dict(model_file.tokenizer_options)
        self.tokenizer = opened.tokenizer
        self.runner = EncoderRunner(opened)

    @property
    def threads(self) -> int:
        """The threads this encoder's calls use at most."""
        return self.runner.scheduler.threads

    @threads.setter
    def threads(self, threads: int | None) -> None:
        self.runner.scheduler.threads = check_threads(threads)

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
        batch, (size, seq) = self._check_ids(input_ids, attention_mask, token_type_ids)
        return self.runner.run(batch).reshape(size, seq, self.config.hidden_size)

    def logits(self, input_ids: object, attention_mask: object = None,
               token_type_ids: object = None) -> dict[str, np.ndarray]:
        """The head's raw outputs for token ids, named as transformers names them.

        sequence-classification: ``logits`` [batch, labels]; token-classification: ``logits``
        [batch, seq, labels]; question-answering: ``start_logits``, ``end_logits`` [batch, seq];
        masked-lm: ``logits`` [batch, seq, vocab]; pretraining (BertForPreTraining):
        ``prediction_logits`` [batch, seq, vocab] and ``seq_relationship_logits`` [batch, 2].
        Inputs as ``forward``. Raises ModelKindError on a file without a head.
        """
        head = self.runner.head
        if head is None:
            raise ModelKindError(f"{self.path} holds only an encoder (feature-extraction); it has no head")
        packed, (batch, seq) = self._check_ids(input_ids, attention_mask, token_type_ids)
        hidden, starts = self.runner.run(packed), packed.starts
        kind = self.task.type
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
                   token_type_ids: object) -> tuple[EncoderBatch, tuple[int, int]]:
        """The ids as one padded batch (starts every ``seq`` tokens) and its [batch, seq] shape, or
        InputError: the kernels do no bounds checks."""
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
        return EncoderBatch.of(ids.reshape(-1), types.reshape(-1), starts, mask.reshape(-1)), (batch, seq)

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
        for rows, _, pooled in self.runner.batches(encodings, batch_size, show_progress, "encoding", pool=mode):
            out[rows] = pooled
        return l2_normalize(out) if do_normalize else out
