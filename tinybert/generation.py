"""Choosing the next token, with transformers' semantics; knows nothing of models or files.

Per step, on the logits of the last position (float32 [B, V]), in transformers' order:
    repetition penalty (every id seen so far: s < 0 → s·p, else s/p) → temperature (s/T)
    → top-k (keep the k best) → top-p (keep the smallest set whose probability reaches p)
    → greedy argmax (temperature 0) or a draw from softmax.
Text side: ``StopMatcher`` cuts output where a stop string starts; ``IncrementalDecoder`` turns
ids into text pieces without splitting a UTF-8 character across byte-level tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 means greedy; top_k/top_p None mean off."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def validate(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number ≥ 0, got {t!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool)
                                       or self.top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise InputError(f"top_p must be in (0, 1] or None, got {p!r}")
        r = self.repetition_penalty
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not np.isfinite(r)
                              or r <= 0):
            raise InputError(f"repetition_penalty must be a positive number or None, got {r!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or self.seed < 0):
            raise InputError(f"seed must be a non-negative integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(scores: np.ndarray, seen: list[np.ndarray], penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: each id already in the sequence (prompt
    included) has its score divided by ``penalty`` if positive, multiplied if negative."""
    out = scores.copy()
    for row, ids in enumerate(seen):
        ids = np.unique(ids)
        s = out[row, ids]
        out[row, ids] = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty))
    return out


def warp(scores: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Temperature, top-k and top-p as transformers' logits warpers (removed tokens get -inf)."""
    scores = scores / np.float32(params.temperature)
    if params.top_k is not None:
        k = min(params.top_k, scores.shape[1])
        kth = np.partition(scores, -k, axis=1)[:, -k][:, None]
        scores = np.where(scores < kth, -np.inf, scores).astype(np.float32)
    if params.top_p is not None and params.top_p < 1:
        order = np.argsort(scores, axis=1, kind="stable")                 # ascending, as transformers
        ordered = np.take_along_axis(scores, order, axis=1)
        probs = _softmax(ordered)
        remove_sorted = np.cumsum(probs, axis=1) <= (1 - params.top_p)
        remove_sorted[:, -1] = False                                     # keep at least one token
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=1)
        scores = np.where(remove, -np.inf, scores).astype(np.float32)
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def next_tokens(logits: np.ndarray, seen: list[np.ndarray], params: SamplingParams,
                rng: np.random.Generator) -> np.ndarray:
    """The next id of each row of ``logits`` [B, V] (``seen``: ids so far per row)."""
    scores = logits
    if params.repetition_penalty is not None and params.repetition_penalty != 1:
        scores = apply_repetition_penalty(scores, seen, params.repetition_penalty)
    if params.greedy:
        return np.argmax(scores, axis=1)
    probs = _softmax(warp(scores, params))
    # Inverse-CDF draws: one uniform per row, reproducible for a given seed.
    u = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=1)
    # First id whose cumulative probability exceeds the draw: ids with probability 0 are never picked.
    picks = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
    return np.minimum(picks, probs.shape[1] - 1)


class StopMatcher:
    """Finds the earliest stop string in generated text."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop

    def cut(self, text: str) -> int | None:
        """Index where the first stop string starts in ``text``, or None."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def holdback(self, text: str) -> int:
        """How many trailing characters could still become a stop string (not yet safe to stream)."""
        keep = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if s.startswith(text[-n:]):
                    keep = max(keep, n)
                    break
        return keep


class IncrementalDecoder:
    """ids → text pieces. Byte-level BPE splits multi-byte characters across tokens; a piece is
    released only once the decoded text no longer ends in an incomplete character (U+FFFD)."""

    def __init__(self, decode) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        """Add a token; return the newly completed text (may be empty)."""
        self.ids.append(int(token))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece
