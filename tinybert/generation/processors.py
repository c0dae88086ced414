"""Logits processors and warpers, written once for greedy search, sampling and beam search.

transformers' order (``GenerationMixin._get_logits_processor``), on the scores of the last position
(float32 [rows, V]; raw logits for greedy and sampling, log-probabilities for beam search):

    repetition penalty → no-repeat n-gram → bad tokens → min new tokens → forced BOS → forced EOS
    then, when sampling: temperature → top-k → top-p → min-p

Every processor reads only its own row and that row's history (prefix included, as transformers passes
the whole sequence), so a row's result never depends on the batch it is in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .params import GenerationParams, id_tuple


def apply_repetition_penalty(scores: np.ndarray, seen: Sequence[np.ndarray], penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: each id already in the sequence (prompt
    included) has its score divided by ``penalty`` if positive, multiplied if negative."""
    out = scores.copy()
    for row, ids in enumerate(seen):
        ids = np.unique(ids)
        s = out[row, ids]
        out[row, ids] = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty))
    return out


def banned_ngram_tokens(seq: np.ndarray, n: int) -> np.ndarray:
    """Tokens that would repeat an n-gram of ``seq`` (transformers' NoRepeatNGramLogitsProcessor): every
    token that followed an earlier occurrence of the last n-1 tokens."""
    if n <= 0 or seq.size < n:
        return seq[:0]
    windows = np.lib.stride_tricks.sliding_window_view(seq, n)
    match = (windows[:, :-1] == seq[seq.size - n + 1:]).all(axis=1)
    return windows[match, -1]


class Processors:
    """The processors one search applies at each step: ``scores = processors(scores, histories, t)``.

    ``histories[r]``: every id of row r so far (prefix included); ``t``: tokens generated so far (the
    same for every row of a search); ``max_new_tokens``: this search's budget (the forced EOS goes at
    its last step); ``prefix_length``: where the generated tokens start (forced BOS applies while the
    whole sequence has length 1).
    """

    def __init__(self, params: GenerationParams, eos_ids: Sequence[int], max_new_tokens: int,
                 prefix_length: int) -> None:
        self.eos = tuple(sorted(set(int(e) for e in eos_ids)))
        rep = params.repetition_penalty
        self.repetition_penalty = None if rep is None or rep == 1 else float(rep)
        self.ngram = params.no_repeat_ngram_size
        self.bad = list(sorted(set(params.bad_token_ids) - set(self.eos)))     # transformers exempts EOS
        self.min_new_tokens = params.min_new_tokens if self.eos else 0
        self.forced_bos = params.forced_bos_token_id
        self.forced_eos = list(id_tuple(params.forced_eos_token_id))
        self.max_new_tokens = max_new_tokens
        self.prefix_length = prefix_length

    def __call__(self, scores: np.ndarray, histories: Sequence[np.ndarray], t: int) -> np.ndarray:
        """The processed scores (a new array when anything applies, else ``scores`` itself)."""
        if self.repetition_penalty is not None:
            scores = apply_repetition_penalty(scores, histories, self.repetition_penalty)
        forced_bos = self.forced_bos is not None and self.prefix_length + t == 1
        forced_eos = bool(self.forced_eos) and t == self.max_new_tokens - 1
        if not (self.ngram or self.bad or t < self.min_new_tokens or forced_bos or forced_eos):
            return scores
        if self.repetition_penalty is None:
            scores = scores.copy()
        if self.ngram:
            for r, seq in enumerate(histories):
                scores[r, banned_ngram_tokens(seq, self.ngram)] = -np.inf
        if self.bad:
            scores[:, self.bad] = -np.inf
        if t < self.min_new_tokens:
            scores[:, self.eos] = -np.inf
        if forced_bos:
            scores[:] = -np.inf
            scores[:, self.forced_bos] = 0.0
        if forced_eos:
            scores[:] = -np.inf
            scores[:, self.forced_eos] = 0.0
        return scores


def softmax64(x: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (shifted by the row max; rows of -inf but one entry stay exact)."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def warp(scores: np.ndarray, params: GenerationParams) -> np.ndarray:
    """Temperature, top-k, top-p and min-p as transformers' warpers (removed tokens get -inf).

    A temperature so small that a score divided by it overflows float32 is the limit T → 0: the row keeps
    only its best score(s), i.e. greedy search, never NaN probabilities."""
    t = np.float32(params.temperature)          # 0 when the temperature underflows float32
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = scores / t
    collapse = ~np.isfinite(scaled.max(axis=1)) & np.isfinite(scores.max(axis=1))
    if collapse.any():
        best = scores[collapse] == scores[collapse].max(axis=1, keepdims=True)
        scaled[collapse] = np.where(best, np.float32(0), np.float32(-np.inf))
    scores = scaled
    if params.top_k is not None:
        k = min(params.top_k, scores.shape[1])
        kth = np.partition(scores, -k, axis=1)[:, -k][:, None]
        scores = np.where(scores < kth, -np.inf, scores).astype(np.float32)
    if params.top_p is not None and params.top_p < 1:
        order = np.argsort(scores, axis=1, kind="stable")                 # ascending, as transformers
        ordered = np.take_along_axis(scores, order, axis=1)
        remove_sorted = np.cumsum(softmax64(ordered), axis=1) <= (1 - params.top_p)
        remove_sorted[:, -1] = False                                     # keep at least one token
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=1)
        scores = np.where(remove, -np.inf, scores).astype(np.float32)
    if params.min_p is not None:
        probs = softmax64(scores)
        remove = probs < params.min_p * probs.max(axis=1, keepdims=True)
        remove[np.arange(len(probs)), probs.argmax(axis=1)] = False       # keep at least one token
        scores = np.where(remove, -np.inf, scores).astype(np.float32)
    return scores


def pick(scores: np.ndarray, params: GenerationParams, rng: np.random.Generator) -> np.ndarray:
    """The next id of each row of processed ``scores`` [R, V]: argmax (temperature 0) or a draw."""
    if params.greedy:
        return np.argmax(scores, axis=1)
    probs = softmax64(warp(scores, params))
    # Inverse-CDF draws: one uniform per row, reproducible for a given seed.
    u = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=1)
    # First id whose cumulative probability exceeds the draw: ids with probability 0 are never picked.
    picks = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
    return np.minimum(picks, probs.shape[1] - 1)
