"""Task APIs on top of ``Encoder``, returning what transformers' pipelines return.

Each class is an ``Encoder`` whose file carries the matching head (``ModelKindError`` otherwise), and
runs through the encoder's ``runner`` (model, head, tokenizer, scheduler) by its public methods:
``Classifier`` (text classification, sentence pairs, cross-encoder reranking), ``TokenClassifier``
(NER), ``FillMask`` and ``QuestionAnswerer`` (extractive QA over long contexts with a stride).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelKindError
from ..tokenizer import Decoder, check_pairs, check_texts
from .encoder import Encoder
from .ner import AGGREGATIONS, TokenWindow, entities


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (scores are compared with transformers' to 1e-4)."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _check_top_k(top_k: object, allow_none: bool) -> None:
    if top_k is None and allow_none:
        return
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InputError(f"top_k must be a positive integer{' or None' if allow_none else ''}, got {top_k!r}")


def _one_or_many(single: bool, results: list) -> object:
    return results[0] if single else results


# task → (its head as a message names it, the transformers class of the checkpoints that have it)
_HEADS = {"sequence-classification": ("sequence-classification", "*ForSequenceClassification"),
          "token-classification": ("token-classification", "*ForTokenClassification"),
          "question-answering": ("question-answering", "*ForQuestionAnswering"),
          "masked-lm": ("masked-LM", "*ForMaskedLM"), "pretraining": ("masked-LM", "*ForMaskedLM")}


def _require_task(encoder: Encoder, *tasks: str) -> None:
    if encoder.task.type not in tasks:
        head, checkpoint = _HEADS[tasks[0]]
        held = "it is a feature-extraction file, converted without a task head" \
            if encoder.task.type == "feature-extraction" else f"it has a {encoder.task.type} head"
        raise ModelKindError(
            f"{encoder.path} has no {head} head ({held}); {type(encoder).__name__} needs a file converted "
            f"from a {checkpoint} checkpoint (tinybert convert HF_FOLDER OUT.safetensors)")


class Classifier(Encoder):
    """Sequence classification (sentiment, topic, NLI, cross-encoders), like
    ``pipeline("text-classification")`` on the same checkpoint.

    >>> clf = Classifier("sst2.int8.safetensors")
    >>> clf.classify("A wonderful film.")
    [{'label': 'POSITIVE', 'score': 0.9998}]
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        super().__init__(path, threads, dtype=dtype, revision=revision, local_files_only=local_files_only)
        _require_task(self, "sequence-classification")
        self.labels: tuple[str, ...] = self.task.labels

    def scores_function(self) -> str:
        """"sigmoid", "softmax" or "none": transformers' pipeline rule on problem_type and label count."""
        problem, n = self.task.problem_type, len(self.labels)
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or n == 1:
            return "sigmoid"
        return "softmax"

    def predict_logits(self, texts: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
                       batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Raw logits float32 [len(texts), labels] (texts longer than the model are truncated,
        pairs longest-first as transformers does)."""
        texts = check_texts(texts)
        if text_pair is not None:
            pairs = check_pairs(texts, text_pair)
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs)))
        else:
            encodings = self.tokenizer.encode_batch(texts)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for rows, batch, hidden in self.runner.batches(encodings, batch_size, show_progress, "scoring"):
            out[rows] = self.runner.head.sequence_logits(hidden, batch.starts, batch.key_mask)
        return out

    @property
    def activation_fn(self) -> str:
        """What ``predict`` and ``rank`` apply to the logits, as sentence-transformers' CrossEncoder: the
        activation_fn the checkpoint's config.json records ("sigmoid", "identity" or "tanh"), else "sigmoid"
        for a one-label model and "identity" for more."""
        recorded = self.sentence_transformers["activation_fn"]
        return recorded if recorded is not None else "sigmoid" if len(self.labels) == 1 else "identity"

    def predict(self, inputs: Sequence[str] | Iterable[Sequence[str]], batch_size: int = 32,
                show_progress_bar: bool | None = None, activation_fn: str | Callable | None = None,
                apply_softmax: bool = False, convert_to_numpy: bool = True) -> np.ndarray | list | np.float32:
        """Scores of (first, second) text pairs, as sentence-transformers' ``CrossEncoder.predict``: float32
        [n] for a one-label model, [n, labels] otherwise; one pair ``[a, b]`` gives one score (a float32
        scalar, or [labels]).

        The logits go through ``activation_fn`` (default: the model's ``activation_fn``, sigmoid for a
        one-label model unless its config.json names another; identity for more labels); a name ("sigmoid",
        "identity", "tanh") or a function of a numpy array. ``apply_softmax`` then softmaxes each row of a
        multi-label model. ``convert_to_numpy=False`` gives a list of scores (rows). Pairs longer than the model
        are truncated longest-first.
        """
        single = _is_one_pair(inputs)
        pairs = [inputs] if single else _pairs(inputs)
        function = _activation(self.activation_fn if activation_fn is None else activation_fn)
        if pairs:
            logits = self.predict_logits([p[0] for p in pairs], [p[1] for p in pairs], batch_size,
                                         bool(show_progress_bar))
        else:
            logits = np.zeros((0, len(self.labels)), dtype=np.float32)
        scores = np.asarray(function(logits), dtype=np.float32)
        if len(self.labels) == 1 and scores.ndim > 1:
            scores = scores[:, 0]
        if apply_softmax and scores.ndim > 1:
            scores = softmax(scores).astype(np.float32)
        if single:
            return scores[0]
        return scores if convert_to_numpy else list(scores)

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int = 32, show_progress_bar: bool | None = None,
             activation_fn: str | Callable | None = None) -> list[dict]:
        """Documents sorted by their score against ``query``, best first, as sentence-transformers'
        ``CrossEncoder.rank``: ``[{"corpus_id": index, "score": float}]`` (with ``"text"`` when
        ``return_documents``), ``top_k`` of them (all when None). Scores as ``predict``; equal scores keep
        the documents' order. Only for one-label models (ModelKindError otherwise, as CrossEncoder refuses)."""
        if len(self.labels) != 1:
            raise ModelKindError(f"rank() needs a one-label cross-encoder; {self.path} has {len(self.labels)} labels "
                                 "(use predict() on pairs)")
        if not isinstance(query, str):
            raise InputError(f"query must be a string, got {type(query).__name__}")
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise InputError(f"documents must be a list of strings, got {type(documents).__name__}")
        _check_top_k(top_k, allow_none=True)
        scores = self.predict([[query, doc] for doc in documents], batch_size=batch_size,
                              show_progress_bar=show_progress_bar, activation_fn=activation_fn)
        results = []
        for i, score in enumerate(scores.tolist()):
            results.append({"corpus_id": i, "score": score, **({"text": documents[i]} if return_documents else {})})
        return sorted(results, key=lambda r: r["score"], reverse=True)[:top_k]

    def classify(self, texts: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
                 top_k: int | None = 1, batch_size: int = 32) -> list:
        """Labels with scores, best first: ``[{"label": ..., "score": ...}, ...]`` (``top_k`` of them,
        all when None) for one text, a list of those for a list of texts.

        Scores: softmax over labels, sigmoid for multi-label checkpoints and single-logit models,
        raw values for regression, as transformers' pipeline decides. ``text_pair`` gives the
        second text of sentence pairs (one per text).
        """
        _check_top_k(top_k, allow_none=True)
        single = isinstance(texts, str)
        logits = self.predict_logits(texts, text_pair, batch_size)
        fn = self.scores_function()
        scores = sigmoid(logits) if fn == "sigmoid" else softmax(logits) if fn == "softmax" else logits
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top_k]
            results.append([{"label": self.labels[i], "score": float(row[i])} for i in order])
        return _one_or_many(single, results)

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None, batch_size: int = 32,
               label: str | None = None) -> list[dict]:
        """Documents sorted by relevance to ``query`` (cross-encoder): ``[{"index", "document",
        "score"}]``, best first, ``top_k`` of them (all when None).

        Single-output cross-encoders score with the pipeline function of the file (sigmoid, as
        sentence-transformers' CrossEncoder does, or the raw value for regression); multi-label
        models score with the softmax probability of ``label`` (default: the last label).
        """
        if not isinstance(query, str):
            raise InputError(f"query must be a string, got {type(query).__name__}")
        documents = check_texts(documents)
        check_texts(query)
        _check_top_k(top_k, allow_none=True)
        logits = self.predict_logits([query] * len(documents), documents, batch_size)
        if len(self.labels) == 1:
            fn = self.scores_function()
            scores = (sigmoid(logits) if fn == "sigmoid" else logits.astype(np.float64))[:, 0]
        else:
            name = self.labels[-1] if label is None else label
            if name not in self.labels:
                raise InputError(f"label {name!r} is not one of {list(self.labels)}")
            scores = softmax(logits)[:, self.labels.index(name)]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"index": int(i), "document": documents[i], "score": float(scores[i])} for i in order]


def _is_one_pair(inputs: object) -> bool:
    """Whether ``inputs`` is one pair rather than a list of them (CrossEncoder.is_singular_input)."""
    if isinstance(inputs, (list, tuple)):
        return len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "UO":
        return inputs.size > 0 and inputs.ndim < 2
    return False


def _pairs(inputs: object) -> list:
    """The pairs of ``predict``'s input, each two strings, or InputError."""
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if isinstance(inputs, (str, bytes, dict, set)) or not hasattr(inputs, "__iter__"):
        raise InputError(f"inputs must be a list of [text, text] pairs, got {type(inputs).__name__}")
    pairs = list(inputs)
    for i, pair in enumerate(pairs):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(text, str) for text in pair)):
            raise InputError(f"inputs[{i}] must be a pair of two strings, got {str(pair)[:80]}")
    return pairs


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": sigmoid, "identity": lambda x: x, "tanh": lambda x: np.tanh(x.astype(np.float64))}


def _activation(function: str | Callable) -> Callable[[np.ndarray], np.ndarray]:
    if callable(function):
        return function
    if function not in _ACTIVATIONS:
        raise InputError(f"activation_fn must be one of {tuple(_ACTIVATIONS)} or a function, got {function!r}")
    return _ACTIVATIONS[function]


class TokenClassifier(Encoder):
    """Token classification / named-entity recognition, like ``pipeline("token-classification")``.

    >>> ner = TokenClassifier("ner.int8.safetensors")
    >>> ner.ner("My name is Wolfgang and I live in Berlin.")
    [{'entity_group': 'PER', 'score': 0.99, 'word': 'Wolfgang', 'start': 11, 'end': 19}, ...]
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        super().__init__(path, threads, dtype=dtype, revision=revision, local_files_only=local_files_only)
        _require_task(self, "token-classification")
        self.labels: tuple[str, ...] = self.task.labels
        self._decoder = Decoder(self.tokenizer, self.tokenizer_options["clean_up_tokenization_spaces"])

    def ner(self, texts: str | Sequence[str], aggregation: str = "simple", ignore_labels: Sequence[str] = ("O",),
            stride: int | None = None, batch_size: int = 32) -> list:
        """Entities of one text, or a list of those for a list of texts, with character offsets
        ``start``/``end`` into the original text.

        ``aggregation`` is "none" (one entry per token, key ``entity``), "simple", "first",
        "average" or "max" (words grouped into ``entity_group`` spans), with transformers'
        semantics. Texts longer than the model are truncated unless ``stride`` is given: then they
        are split into overlapping windows sharing ``stride`` tokens and the entities merged.
        """
        if aggregation not in AGGREGATIONS:
            raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        single = isinstance(texts, str)
        texts = check_texts(texts)
        if stride is not None:
            if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride < self.config.max_length // 2:
                raise InputError(f"stride must be an integer in [0, {self.config.max_length // 2}), got {stride!r}")
            tok = self.runner.truncating_tokenizer(self.config.max_length, stride)
        else:
            tok = self.tokenizer
        # Every window of every text runs as one sequence of the packed batches.
        encodings, owner = [], []
        for i, text in enumerate(tok.encode_batch(texts)):
            for window in [text] + (list(text.overflowing) if stride is not None else []):
                encodings.append(window)
                owner.append(i)
        logits: list[np.ndarray | None] = [None] * len(encodings)
        for rows, batch, hidden in self.runner.batches(encodings, batch_size):
            out = self.runner.head.token_logits(hidden)
            for j, row in enumerate(rows):
                logits[row] = out[batch.starts[j]:batch.starts[j + 1]]
        windows: list[list[TokenWindow]] = [[] for _ in texts]
        for enc, i, lg in zip(encodings, owner, logits):
            windows[i].append(TokenWindow(input_ids=np.array(enc.ids), offsets=np.array(enc.offsets).reshape(-1, 2),
                                          special_mask=np.array(enc.special_tokens_mask, dtype=bool), logits=lg))
        results = [entities(text, w, list(self.labels), aggregation, self._decoder, tuple(ignore_labels))
                   for text, w in zip(texts, windows)]
        return _one_or_many(single, results)


class FillMask(Encoder):
    """Masked-token prediction, like ``pipeline("fill-mask")``.

    >>> fm = FillMask("bert-mlm.int8.safetensors")
    >>> fm.fill("Paris is the [MASK] of France.", top_k=1)
    [{'score': 0.9, 'token': 3007, 'token_str': 'capital', 'sequence': 'paris is the capital of france.'}]
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        super().__init__(path, threads, dtype=dtype, revision=revision, local_files_only=local_files_only)
        _require_task(self, "masked-lm", "pretraining")
        self.mask_token: str | None = self.tokenizer_options["mask_token"]
        self.mask_token_id = self.tokenizer.token_to_id(self.mask_token) if self.mask_token else None
        if self.mask_token_id is None:
            raise ModelKindError(f"{self.path}: the tokenizer has no mask token; fill-mask needs one")
        self._decoder = Decoder(self.tokenizer, self.tokenizer_options["clean_up_tokenization_spaces"])
        pad = self.tokenizer.padding or {}
        self._pad_id = pad.get("pad_id", self.config.pad_token_id)

    def fill(self, texts: str | Sequence[str], top_k: int = 5, batch_size: int = 32) -> list:
        """Top-``top_k`` candidates for the mask token: ``[{"score", "token", "token_str",
        "sequence"}]`` for a text with one mask, a list of such lists (one per mask, in order) for
        a text with several; a list of those for a list of texts. A text without the mask token
        raises InputError."""
        _check_top_k(top_k, allow_none=False)
        single = isinstance(texts, str)
        texts = check_texts(texts)
        encodings = self.tokenizer.encode_batch(texts)
        for i, enc in enumerate(encodings):
            if self.mask_token_id not in enc.ids:
                raise InputError(f"texts[{i}] has no mask token {self.mask_token} (after truncation)")
        results: list = [None] * len(texts)
        top_k = min(top_k, self.config.vocab_size)
        for rows, batch, hidden in self.runner.batches(encodings, batch_size):
            where = np.flatnonzero(batch.ids == self.mask_token_id)
            probs = softmax(self.runner.head.mlm_logits(hidden[where]))
            owner = np.searchsorted(batch.starts, where, side="right") - 1
            for j, row in enumerate(rows):
                mine = np.flatnonzero(owner == j)
                ids = np.array(encodings[row].ids)
                single_mask = len(mine) == 1
                per_mask = []
                for m in mine:
                    p = probs[m]
                    best = np.argsort(-p, kind="stable")[:top_k]
                    candidates = []
                    for token in best:
                        filled = ids.copy()
                        filled[where[m] - batch.starts[j]] = token
                        filled = filled[filled != self._pad_id]
                        candidates.append({
                            "score": float(p[token]), "token": int(token),
                            "token_str": self._decoder.decode([int(token)], skip_special_tokens=False),
                            "sequence": self._decoder.decode(filled.tolist(), skip_special_tokens=single_mask)})
                    per_mask.append(candidates)
                results[row] = per_mask[0] if single_mask else per_mask
        return _one_or_many(single, results)


class QuestionAnswerer(Encoder):
    """Extractive question answering: the span of ``context`` that answers ``question``.

    >>> qa = QuestionAnswerer("squad.int8.safetensors")
    >>> qa.answer("Where do I live?", "My name is Wolfgang and I live in Berlin.")
    {'answer': 'Berlin', 'score': 0.97, 'start': 34, 'end': 40}
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        super().__init__(path, threads, dtype=dtype, revision=revision, local_files_only=local_files_only)
        _require_task(self, "question-answering")

    def answer(self, question: str | Sequence[str], context: str | Sequence[str], top_k: int = 1,
               max_answer_len: int = 30, max_seq_len: int = 384, doc_stride: int = 128,
               batch_size: int = 32) -> dict | list:
        """The best answer ``{"answer", "score", "start", "end"}`` (character offsets into the
        context), or the ``top_k`` best as a list; lists of questions and contexts give a list.

        The context is split into windows of ``max_seq_len`` tokens (question included, capped at
        the model's length) that overlap by ``doc_stride`` tokens (capped at half a window). In each
        window the score of a span is softmax(start)·softmax(end) over the context tokens, spans
        are at most ``max_answer_len`` tokens with start ≤ end, and the best spans across all
        windows win.
        """
        single = isinstance(question, str) and isinstance(context, str)
        questions, contexts = check_texts(question), check_texts(context)
        if len(questions) != len(contexts):
            raise InputError(f"{len(questions)} questions for {len(contexts)} contexts")
        _check_top_k(top_k, allow_none=False)
        _check_top_k(max_answer_len, allow_none=False)
        _check_top_k(max_seq_len, allow_none=False)
        max_len = min(max_seq_len, self.config.max_length)
        if not isinstance(doc_stride, int) or isinstance(doc_stride, bool) or doc_stride < 0:
            raise InputError(f"doc_stride must be a non-negative integer, got {doc_stride!r}")
        stride = min(doc_stride, max_len // 2)
        tok = self.runner.truncating_tokenizer(max_len, stride, strategy="only_second")
        specials = tok.post_processor.num_special_tokens_to_add(True) if tok.post_processor else 0
        encodings, owner = [], []
        for i, (q, c) in enumerate(zip(questions, contexts)):
            room = max_len - specials - len(self.tokenizer.encode(q, add_special_tokens=False).ids)
            if room <= stride:
                # tokenizers would panic: each window must hold more context tokens than it shares
                raise InputError(f"question {i} is too long: it leaves {max(room, 0)} context tokens per window of "
                                 f"{max_len} tokens, not more than the stride {stride}")
            first = tok.encode(q, c)
            for window in [first] + list(first.overflowing):
                encodings.append(window)
                owner.append(i)
        candidates: list[list[tuple[float, int, int]]] = [[] for _ in questions]
        for rows, batch, hidden in self.runner.batches(encodings, batch_size):
            both = self.runner.head.token_logits(hidden)
            for j, row in enumerate(rows):
                enc = encodings[row]
                logits = both[batch.starts[j]:batch.starts[j + 1]]
                in_context = np.array([s == 1 for s in enc.sequence_ids])
                offsets = enc.offsets
                for score, s, e in best_spans(logits[:, 0], logits[:, 1], in_context, max_answer_len, top_k):
                    candidates[owner[row]].append((score, offsets[s][0], offsets[e][1]))
        results = []
        for c, found in zip(contexts, candidates):
            found.sort(key=lambda t: -t[0])
            answers = [{"answer": c[s:e], "score": score, "start": int(s), "end": int(e)}
                       for score, s, e in found[:top_k]]
            results.append(answers[0] if top_k == 1 else answers)
        return _one_or_many(single, results)


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, in_context: np.ndarray, max_answer_len: int,
               top_k: int) -> list[tuple[float, int, int]]:
    """The ``top_k`` spans (score, start token, end token) of one window: start and end inside the
    context, start ≤ end < start + max_answer_len, scored softmax(start)[s] · softmax(end)[e] with
    the softmax taken over the context tokens."""
    if not in_context.any():
        return []
    p_start = softmax(np.where(in_context, start_logits, -np.inf))
    p_end = softmax(np.where(in_context, end_logits, -np.inf))
    scores = np.triu(np.tril(np.outer(p_start, p_end), max_answer_len - 1))
    allowed = np.outer(in_context, in_context)
    allowed = np.triu(np.tril(allowed, max_answer_len - 1))
    flat = np.where(allowed, scores, -1.0).ravel()
    best = np.argsort(-flat, kind="stable")[:top_k]
    n = len(start_logits)
    return [(float(flat[b]), int(b // n), int(b % n)) for b in best if flat[b] >= 0]
