"""The public API. ``Encoder`` turns texts into vectors and token ids into hidden states; the task
classes built on it (tinybert/api/tasks.py) add the heads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import format as fmt
from ..config import DecoderConfig, EncoderConfig, TaskConfig
from ..errors import InputError, ModelKindError
from ..loader import FileMetadata
from ..models.heads import l2_normalize
from ..tokenizer import check_sentences, load_tokenizer, token_ids
from .embeddings import PRECISIONS, quantize_embeddings, similarity
from .opening import open_model
from .runner import EncoderBatch, EncoderRunner
from .scheduler import check_threads

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")


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
    """A BERT-family encoder loaded from a tinybert file, or a decoder embedder (a decoder file converted from a
    sentence-transformers folder: Qwen3-Embedding, causal, pooled on each text's last token; EmbeddingGemma,
    bidirectional, mean-pooled and projected by its Dense modules).

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
        self.config: EncoderConfig | DecoderConfig = opened.config
        self.pooling: dict = dict(model_file.pooling)
        self.quantization: str = opened.quantization
        self.metadata: FileMetadata = opened.metadata
        self.task: TaskConfig = model_file.task
        self.tokenizer_options: dict = dict(model_file.tokenizer_options)
        self.tokenizer = opened.tokenizer
        self.runner = EncoderRunner(opened)
        st = model_file.sentence_transformers
        self.sentence_transformers: dict = dict(st)     # the file's settings as read (format.py)
        # As SentenceTransformer: "query" and "document" prompts always exist (empty unless the model sets them).
        self.prompts: dict[str, str] = {"query": "", "document": "", **st["prompts"]}
        self.default_prompt_name: str | None = st["default_prompt_name"]
        self.truncate_dim: int | None = st["truncate_dim"]
        self._similarity_fn_name: str = st["similarity_fn_name"] or "cosine"
        self._include_prompt: bool = st["include_prompt"]

    @property
    def threads(self) -> int:
        """The threads this encoder's calls use at most."""
        return self.runner.scheduler.threads

    @threads.setter
    def threads(self, threads: int | None) -> None:
        self.runner.scheduler.threads = check_threads(threads)

    @property
    def dimension(self) -> int:
        """Length of the vectors ``encode`` returns (before ``truncate_dim``): the hidden size, or the last Dense
        module's out_features."""
        return self.runner.dense.out_features(self.config.hidden_size)

    def forward(self, input_ids: object, attention_mask: object = None,
                token_type_ids: object = None) -> np.ndarray:
        """Last hidden state float32 [batch, seq, hidden] for token ids, like transformers'
        ``model(...).last_hidden_state``.

        ``attention_mask`` (1 = attend, 0 = padding) defaults to all ones; ``token_type_ids``
        to zeros (and are ignored by a model without token types, as transformers' DeBERTa does).
        Raises InputError for ids outside the vocabulary, sequences longer than the
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
            return {"logits": head.sequence_logits(hidden, starts, packed.key_mask)}
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
            if isinstance(cfg, DecoderConfig) and cfg.causal and np.any(np.diff(mask.astype(np.int8), axis=1) > 0):
                # causal attention: padding after a row's tokens never reaches them; before, it would
                raise InputError("a decoder embedder takes right padding only (attention_mask 1s, then 0s)")
        if token_type_ids is None:
            types = np.zeros((batch, seq), dtype=np.int32)
        else:
            types = _as_int_array("token_type_ids", token_type_ids, ids.shape)
            limit = max(cfg.type_vocab_size, 1)
            if types.min() < 0 or (cfg.type_vocab_size and types.max() >= limit):
                raise InputError(f"token_type_ids must lie in [0, {limit})")
            if not cfg.type_vocab_size:
                # No token-type table (DeBERTa-v3, DistilBERT): DeBERTa's tokenizers still mark a pair's second
                # text 1, and transformers' model ignores it; so do we.
                types = np.zeros((batch, seq), dtype=np.int32)
        starts = np.arange(0, batch * seq + 1, seq, dtype=np.int64)
        return EncoderBatch.of(ids.reshape(-1), types.reshape(-1), starts, mask.reshape(-1)), (batch, seq)

    @property
    def max_seq_length(self) -> int:
        """Tokens per text ``encode`` keeps (longer texts are truncated): sentence-transformers' max_seq_length
        when the checkpoint sets it, else the position table. Settable, as in sentence-transformers, up to
        the position table (InputError past it)."""
        return self.tokenizer.max_length

    @max_seq_length.setter
    def max_seq_length(self, length: int) -> None:
        limit = self.config.max_positions - self.config.position_offset
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= limit:
            raise InputError(f"max_seq_length must be an integer in [1, {limit}] (the position table), "
                             f"got {length!r}")
        # A new tokenizer, not the shared one reconfigured: a call in another thread may be using it.
        self.tokenizer = self.runner.tokenizer = load_tokenizer(self.runner.tokenizer_json, length)

    def get_sentence_embedding_dimension(self) -> int:
        """Length of the vectors ``encode`` returns: the hidden size, or ``truncate_dim`` when it is smaller."""
        if self.truncate_dim is not None:
            return min(self.dimension, self.truncate_dim)
        return self.dimension

    get_embedding_dimension = get_sentence_embedding_dimension      # sentence-transformers 6's name

    @property
    def similarity_fn_name(self) -> str:
        """The similarity ``similarity`` computes: "cosine" (the default), "dot", "euclidean" or "manhattan",
        from the checkpoint's config_sentence_transformers.json; settable."""
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: str) -> None:
        if name not in fmt.SIMILARITY_FUNCTIONS:
            raise InputError(f"similarity_fn_name must be one of {fmt.SIMILARITY_FUNCTIONS}, got {name!r}")
        self._similarity_fn_name = name

    def similarity(self, embeddings1: object, embeddings2: object) -> np.ndarray:
        """float32 [len(embeddings1), len(embeddings2)]: ``similarity_fn_name`` between every pair of rows
        (cosine; dot product; negative euclidean or manhattan distance), as SentenceTransformer.similarity
        (which returns a torch tensor). One vector [dim] counts as one row."""
        return similarity(self.similarity_fn_name, embeddings1, embeddings2)

    def encode(self, sentences: str | Iterable[str] | None = None, batch_size: int = 32,
               normalize: bool | None = None, pooling: str | None = None, show_progress: bool | None = None, *,
               show_progress_bar: bool | None = None, normalize_embeddings: bool = False,
               prompt_name: str | None = None, prompt: str | None = None, truncate_dim: int | None = None,
               precision: str = "float32", convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               output_value: str | None = "sentence_embedding", device: str | None = None,
               texts: str | Iterable[str] | None = None, inputs: str | Iterable[str] | None = None,
               threads: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Sentence embeddings float32 [len(sentences), dim], one row per text, in input order; the arguments
        of sentence-transformers' ``SentenceTransformer.encode``.

        ``sentences``: a str (gives [1, dim]: tinybert's rule, where sentence-transformers gives [dim]), a
        list, tuple, 1-D numpy array of strings or any iterable of strings (``texts=`` and ``inputs=`` are
        other names for it). An empty list gives [0, dim]; an empty text is the embedding of the tokenizer's
        special tokens alone, as in sentence-transformers.

        The steps, in sentence-transformers' order: the prompt (``prompt``, else ``prompts[prompt_name]``,
        else the model's default prompt) is put before each text; texts longer than ``max_seq_length``
        tokens are truncated; the tokens are pooled as the file records ("mean", "cls", "max",
        "mean_sqrt_len"; ``pooling`` overrides it), go through the file's Dense modules (sentence-transformers'
        Dense, in the checkpoint's order) and are L2-normalised when the file has a Normalize module
        (``normalize`` True / False forces it on / off); the vectors are cut to their first ``truncate_dim``
        values (default: the model's truncate_dim); ``normalize_embeddings`` L2-normalises them again after
        the cut; ``precision`` ("float32", "int8", "uint8", "binary", "ubinary") quantises them as
        sentence-transformers' ``quantize_embeddings`` (int8 and uint8 take each dimension's range over the
        texts of this call, so they need at least two texts).

        ``convert_to_numpy=False`` returns a list of 1-D arrays (sentence-transformers gives torch tensors);
        ``output_value="token_embeddings"`` returns, per text, its tokens' last hidden states float32
        [tokens, hidden] (a list, even for one str; before pooling, so normalisation, ``truncate_dim`` and
        ``precision`` do not apply). ``show_progress_bar`` (or ``show_progress``) shows a tqdm bar.
        ``convert_to_tensor``, ``output_value=None`` and devices other than "cpu" need torch: InputError.
        Texts are sorted by length internally so that each batch carries little padding.

        ``threads`` (tinybert's own): at most this many of the Encoder's threads for this call (None: all of
        them; 1: the calling thread alone), so that several threads of an application (a server's workers)
        can each run their own calls side by side, each batch on one core, without splitting every batch
        over cores the others are using. The vectors are the same whatever the count.
        """
        given = [value for value in (sentences, texts, inputs) if value is not None]
        if len(given) > 1:
            raise InputError("pass the texts once: as sentences (the first argument), texts= or inputs=")
        items, _ = check_sentences(given[0] if given else None)
        threads = self.runner.scheduler.cap(threads)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        mode = self.pooling["mode"] if pooling is None else pooling
        if mode not in fmt.POOLING_MODES:
            raise InputError(f"pooling must be one of {fmt.POOLING_MODES}, got {pooling!r}")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if convert_to_tensor or output_value not in OUTPUT_VALUES or device not in (None, "cpu"):
            raise InputError("tinybert returns numpy arrays on the CPU: convert_to_tensor, output_value other than "
                             f"{' or '.join(map(repr, OUTPUT_VALUES))} and devices other than 'cpu' are not supported")
        if output_value == "token_embeddings" and precision != "float32":
            raise InputError("token embeddings are float32: precision applies to sentence embeddings")
        dim = truncate_dim
        if dim is None:
            # the model's own truncate_dim: one past the hidden size cuts nothing, as in sentence-transformers
            dim = self.truncate_dim if self.truncate_dim is not None and self.truncate_dim < self.dimension else None
        elif not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= self.dimension:
            raise InputError(f"truncate_dim must be an integer in [1, {self.dimension}], got {dim!r}")
        text_prompt = self._prompt(prompt, prompt_name)
        if text_prompt:
            items = [text_prompt + text for text in items]
        progress = bool(show_progress_bar if show_progress_bar is not None else show_progress)
        if output_value == "token_embeddings":
            return self._token_embeddings(items, batch_size, progress, threads)
        file_normalize = self.pooling["normalize"] if normalize is None else bool(normalize)

        out = np.empty((len(items), self.dimension), dtype=np.float32)
        if items:
            encodings = token_ids(self.tokenizer, items)
            # pooled and through the model's Dense modules, chunk by chunk (EncoderRunner)
            for rows, _, pooled in self.runner.batches(encodings, batch_size, progress, "encoding", mode, threads):
                out[rows] = pooled
        if file_normalize:                  # the model's Normalize module: before truncate_dim cuts
            out = l2_normalize(out)
        if dim is not None and dim < self.dimension:
            out = np.ascontiguousarray(out[:, :dim])
        if normalize_embeddings:
            out = l2_normalize(out)
        out = quantize_embeddings(out, precision)
        return out if convert_to_numpy else list(out)

    def _token_embeddings(self, items: list[str], batch_size: int, progress: bool,
                          threads: int) -> list[np.ndarray]:
        """The last hidden state of each text's tokens, float32 [tokens, hidden] per text, in input order."""
        out: list[np.ndarray] = [np.empty((0, self.config.hidden_size), dtype=np.float32)] * len(items)
        if items:
            encodings = token_ids(self.tokenizer, items)
            for rows, batch, hidden in self.runner.batches(encodings, batch_size, progress, "encoding",
                                                           threads=threads):
                for i, row in enumerate(rows):
                    out[row] = hidden[batch.starts[i]:batch.starts[i + 1]].copy()
        return out

    def encode_query(self, sentences: str | Iterable[str] | None = None, prompt_name: str | None = None,
                     prompt: str | None = None, **kwargs) -> np.ndarray | list[np.ndarray]:
        """``encode`` with the model's "query" prompt unless ``prompt_name`` or ``prompt`` is given, as
        sentence-transformers 6 (an empty "query" prompt when the model has none, so the default prompt does
        not apply)."""
        if prompt_name is None and prompt is None:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, sentences: str | Iterable[str] | None = None, prompt_name: str | None = None,
                        prompt: str | None = None, **kwargs) -> np.ndarray | list[np.ndarray]:
        """``encode`` with the model's "document" prompt unless ``prompt_name`` or ``prompt`` is given, as
        sentence-transformers 6 (which tries "document", "passage", "corpus" in that order; "document" always
        exists, empty unless the model sets it)."""
        if prompt_name is None and prompt is None:
            prompt_name = next(name for name in ("document", "passage", "corpus") if name in self.prompts)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def _prompt(self, prompt: str | None, prompt_name: str | None) -> str:
        """The prompt text to put before each text, chosen as SentenceTransformer._resolve_prompt does."""
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
            check_sentences(prompt)
        elif prompt_name is not None:
            if prompt_name not in self.prompts:
                raise InputError(f"prompt_name {prompt_name!r} is not one of the model's prompts "
                                 f"{sorted(self.prompts)}")
            prompt = self.prompts[prompt_name]
        elif self.default_prompt_name is not None:
            prompt = self.prompts.get(self.default_prompt_name, "")
        if prompt and not self._include_prompt:
            # The model pools without the prompt's tokens (Pooling include_prompt=False, INSTRUCTOR-style),
            # which tinybert's pooling does not do: refuse rather than return other vectors.
            raise InputError("this model pools without its prompt's tokens (include_prompt=False), which tinybert "
                             "does not support: encode without a prompt")
        return prompt or ""

    def __repr__(self) -> str:
        # The task classes share it: their class name, plus the labels of the heads that have them.
        labels = getattr(self, "labels", None)
        return (f"{type(self).__name__}(path={str(self.path)!r}, architecture={self.config.architecture!r}, "
                f"quantization={self.quantization!r}, dim={self.dimension}, "
                f"{f'labels={list(labels)!r}, ' if labels else ''}threads={self.threads})")
