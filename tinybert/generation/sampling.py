"""Greedy search and sampling for one input, as a state machine with BeamSearch's interface (one row).

While not ``done``: feed ``tokens`` (row 0 continuing row ``parents[0]`` = 0), pass the logits of the
position after them to ``advance``; then ``results()``. transformers' greedy search is argmax over the
processed logits; sampling draws from softmax of the processed and warped logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError
from .params import GenerationParams
from .processors import Processors, pick


class SampleSearch:
    """``stop(ids)`` (optional) says whether the new ids so far end the generation (a stop string);
    ``keep_logits`` keeps the raw logits of every step, as transformers' ``output_logits``; ``logprobs`` (k ≥ 0)
    keeps each chosen token's log-probability and the k most likely tokens', from the raw logits (the model's
    distribution, before processors and warpers: OpenAI's ``logprobs``)."""

    rows = 1

    def __init__(self, prefix: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int], params: GenerationParams,
                 rng: np.random.Generator, stop: Callable[[list[int]], bool] | None = None,
                 keep_logits: bool = False, logprobs: int | None = None) -> None:
        self.prefix = np.asarray(list(prefix), dtype=np.int64)
        if self.prefix.ndim != 1 or self.prefix.size == 0:
            raise InputError("prefix must hold at least one token id (the prompt, BOS or the decoder start)")
        self.params = params
        self.max_new_tokens = int(max_new_tokens)
        self.eos = frozenset(int(e) for e in eos_ids)
        self.processors = Processors(params, tuple(self.eos), self.max_new_tokens, self.prefix.size)
        self.rng = rng
        self.stop = stop
        self.keep_logits = keep_logits
        self.top_logprobs = logprobs
        self.logprobs: list[dict] = []
        self.plen = self.prefix.size
        self.history = self.prefix          # prefix + new ids, for the processors that read it
        self.ids: list[int] = []            # new ids (an EOS that ended the search included)
        self.logits: list[np.ndarray] = []
        self.tokens = self.prefix[-1:].copy()
        self.parents = np.zeros(1, dtype=np.int64)
        self.finish_reason = "length"
        self.t = 0
        self.done = False
        self._checked = False

    def advance(self, logits: np.ndarray) -> None:
        if self.done:
            raise InputError("the search has ended")
        logits = np.asarray(logits, dtype=np.float32)
        if not self._checked:
            self.params.check_vocabulary(logits.shape[1], tuple(self.eos))
            self._checked = True
        if self.keep_logits:
            self.logits.append(logits[0].copy())
        scores = self.processors(logits, (self.history,), self.t)
        token = int(pick(scores, self.params, self.rng)[0])
        if self.top_logprobs is not None:
            self.logprobs.append(token_logprobs(logits[0], token, self.top_logprobs))
        self.ids.append(token)
        self.t += 1
        if token in self.eos:
            self.finish_reason, self.done = "eos", True
        elif self.stop is not None and self.stop(self.ids):
            self.finish_reason, self.done = "stop", True
        elif self.t >= self.max_new_tokens:
            self.done = True
        else:
            self.history = np.append(self.history, token)
            self.tokens = np.array([token], dtype=np.int64)

    def results(self) -> list[dict]:
        """One hypothesis ``{"token_ids", "finish_reason"}`` (+ ``"logits"`` float32 [steps, vocab])."""
        out = {"token_ids": list(self.ids), "finish_reason": self.finish_reason}
        if self.keep_logits:
            out["logits"] = np.stack(self.logits)
        if self.top_logprobs is not None:
            out["logprobs"] = list(self.logprobs)
        return [out]


def token_logprobs(logits: np.ndarray, token: int, k: int) -> dict:
    """log softmax(logits) at ``token``, and the k largest entries, best first (ties by id): {"id", "logprob",
    "top": [(id, logprob), ...]}. In float64: a 150k-entry log-sum-exp in float32 loses the small ones."""
    row = np.asarray(logits, dtype=np.float64)
    peak = row.max()
    total = peak + np.log(np.exp(row - peak).sum())
    top = []
    if k > 0:
        best = np.argpartition(-row, min(k, row.size) - 1)[:k]
        best = best[np.lexsort((best, -row[best]))]
        top = [(int(i), float(row[i] - total)) for i in best]
    return {"id": int(token), "logprob": float(row[token] - total), "top": top}
