"""Beam search with transformers' semantics (``generate(num_beams=n, do_sample=False)``, transformers 5.x),
in numpy, for one input at a time; knows nothing of models, caches or files.

Algorithm (transformers' vectorised ``_beam_search``, batch of one):

* State: ``num_beams`` running beams (generated ids + summed log-probabilities; at the start one real beam
  with score 0 and ``num_beams - 1`` copies of it with score -1e9, so that the first step expands one beam)
  and up to ``num_beams`` finished hypotheses (ids + length-penalised score).
* Per step: float32 ``log_softmax`` of the last-position logits → the processors of processors.py on the
  log-probabilities, in generate()'s order → add each beam's running score → the top
  ``K = max(2, 1 + n_eos) · num_beams`` (beam, token) candidates over the flattened ``[num_beams · vocab]`` scores.
* A candidate "hits a stopping criterion" if its token is an EOS id or the generation reaches
  ``max_new_tokens``. Among the best ``num_beams`` candidates, the hits become finished hypotheses with
  score ``sum_logprobs / generated_len ** length_penalty`` (``generated_len`` counts the new tokens only,
  EOS included; the prefix — prompt or decoder start — is not counted) and the finished pool keeps the best
  ``num_beams``. The next running beams are the best ``num_beams`` candidates that did not hit.
* Stop when every candidate hits (max length), or ``early_stopping is True`` and ``num_beams`` hypotheses
  are finished, or transformers' early-stop heuristic says no running beam can beat the worst finished
  hypothesis: best running score / L ** length_penalty ≤ worst finished score, with L = tokens generated so
  far, except ``early_stopping="never"`` with ``length_penalty > 0``, where L = ``max_new_tokens``.
* Return the best ``num_return_sequences`` finished hypotheses.

Numerics follow transformers: everything is float32 (scores, the division by the length penalty) and the
log-softmax is ``(x - max) - log(sum(exp(x - max)))`` in float32. Ties in a top-k (exactly equal float32
scores) are broken by the lower flat index (beam-major); torch.topk leaves that order unspecified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..kernels.search import log_softmax_rows, top_k_flat
from .params import GenerationParams, id_tuple, is_int
from .processors import Processors

# transformers' "this beam does not exist / may not be chosen" score.
_NEG = np.float32(-1e9)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis of a [rows, V] (or [V]) array, computed as torch does on CPU
    (shift by the max first; the sum of exponentials carried in float64)."""
    x = np.ascontiguousarray(logits, dtype=np.float32)
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    log_softmax_rows(flat, out)
    return out.reshape(x.shape)


def top_k(values: np.ndarray, k: int, add: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of ``values`` (+ ``add[r]`` on row r of a 2-D array), flattened row-major:
    (flat indices, values), best first, ties to the lower index. One pass, O(n)."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    x = x.reshape(-1, x.shape[-1])
    add = np.zeros(x.shape[0], dtype=np.float32) if add is None else np.ascontiguousarray(add, dtype=np.float32)
    k = min(int(k), x.size)
    idx = np.empty(k, dtype=np.int64)
    val = np.empty(k, dtype=np.float32)
    top_k_flat(x, add, idx, val)
    return idx, val


def _length_penalty(length: int, exponent: float) -> np.float32:
    """length ** exponent as a float32 (inf or 0 past float range, as torch computes it; never an error)."""
    with np.errstate(over="ignore", under="ignore"):
        return np.float32(np.power(np.float64(length), np.float64(exponent)))


def beam_search(step: Callable[[np.ndarray, np.ndarray], np.ndarray], prefix: Sequence[int], max_new_tokens: int,
                eos_ids: set[int] | Sequence[int], params: GenerationParams) -> list[dict]:
    """Beam search for ONE input; returns ``num_return_sequences`` dicts ``{"token_ids": [...], "score": float}``,
    best first. ``token_ids`` are the new tokens only (an EOS that ended the hypothesis included);
    ``score`` is the length-penalised beam score transformers reports as ``sequences_scores``.

    ``prefix``: the ids the generation continues — the prompt of a decoder-only model, or the decoder start
    (plus any forced decoder prefix) of an encoder-decoder model. It is what the n-gram ban, the repetition
    penalty and ``forced_bos_token_id`` see (transformers passes the decoder ids only, not the encoder input),
    and it does not count in the length penalty nor towards ``max_new_tokens``/``min_new_tokens``.

    Callback contract, ``logits = step(tokens, parents)``:

    * Call 0 (prefill) has ONE row: ``tokens = [prefix[-1]]``, ``parents = [0]``. The caller returns the logits
      for the position after the whole prefix, shape ``[1, vocab]`` (a decoder-only caller runs its prompt
      here; an encoder-decoder caller runs the encoder and its decoder on ``prefix``).
    * Call s ≥ 1 has ``num_beams`` rows: ``tokens`` and ``parents`` are int64 ``[num_beams]``. Row i of this
      call is row ``parents[i]`` of the previous call (0 for all rows at call 1) extended by ``tokens[i]``:
      the caller reorders its per-row state, e.g. ``cache = cache[parents]`` (rows may be duplicated or
      dropped), feeds ``tokens[i]`` to row i and returns logits ``[num_beams, vocab]`` for the next position.
      All rows then hold ``len(prefix) + s`` tokens.
    * Logits are converted to float32 (as transformers does); the vocab size must not change between calls.
    * ``step`` is called at most ``max_new_tokens`` times and never after the search has ended, which is when
      ``max_new_tokens`` tokens are generated, or (``early_stopping=True``) ``num_beams`` hypotheses have
      finished, or no running beam can still beat the finished ones (transformers' heuristic, see the module
      docstring). With ``eos_ids`` empty only ``max_new_tokens`` (and the heuristic, which then never
      fires) ends it.

    The arrays passed to ``step`` are fresh; the caller may keep them.
    """
    search = BeamSearch(prefix, max_new_tokens, eos_ids, params)
    while not search.done:
        search.advance(step(search.tokens, search.parents))
    return search.results()


class BeamSearch:
    """The search of ``beam_search`` as a state machine, so that a caller can run the searches of several
    inputs side by side in one model batch: while not ``done``, feed ``tokens`` (row i continuing row
    ``parents[i]`` of the previous feed, as in the callback contract) and pass the logits to ``advance``;
    then ``results()``. Each search only ever sees its own rows, so results do not depend on the batch."""

    def __init__(self, prefix: Sequence[int], max_new_tokens: int, eos_ids: set[int] | Sequence[int],
                 params: GenerationParams) -> None:
        params.validate()
        prefix_arr = np.asarray(list(prefix), dtype=np.int64)
        if prefix_arr.ndim != 1 or prefix_arr.size == 0:
            raise InputError("prefix must hold at least one token id (the prompt, BOS or the decoder start)")
        if (prefix_arr < 0).any():
            raise InputError("prefix token ids must be ≥ 0")
        if not is_int(max_new_tokens) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        eos = id_tuple(sorted(set(int(e) for e in eos_ids)))
        if any(e < 0 for e in eos):
            raise InputError(f"eos ids must be ≥ 0, got {eos}")
        self.params = params
        self.max_new_tokens = int(max_new_tokens)
        self.eos = eos
        self.processors = Processors(params, eos, int(max_new_tokens), prefix_arr.size)
        self.eos_arr = np.asarray(eos, dtype=np.int64)
        nb = params.num_beams
        self.n_keep = max(2, 1 + len(eos)) * nb        # enough candidates that ≥ nb of them are not EOS
        self.prefix = prefix_arr
        self.plen = prefix_arr.size
        # Rows of `hist`: prefix + generated ids of each row of the last feed (1 row at the first).
        self.hist = prefix_arr[None, :]
        self.run_scores = np.full(nb, _NEG, dtype=np.float32)
        self.run_scores[0] = 0.0
        self.finished: list[tuple[np.float32, np.ndarray]] = []     # best first, ≤ nb, all scores > -1e9
        self.heuristic_unsatisfied = True
        self.tokens, self.parents = prefix_arr[-1:].copy(), np.zeros(1, dtype=np.int64)
        self.vocab: int | None = None
        self.t = 0
        self.done = False

    @property
    def rows(self) -> int:
        """Rows the next ``advance`` expects logits for (1 at the first step, num_beams after)."""
        return self.hist.shape[0]

    def advance(self, logits: np.ndarray) -> None:
        """One search step from the logits [rows, vocab] of the rows last fed."""
        if self.done:
            raise InputError("the search has ended")
        params, t, nb = self.params, self.t, self.params.num_beams
        hist, max_new_tokens, lp_exp = self.hist, self.max_new_tokens, float(params.length_penalty)
        logits = np.asarray(logits)
        rows = hist.shape[0]
        if logits.ndim != 2 or logits.shape[0] != rows or (self.vocab is not None and logits.shape[1] != self.vocab):
            raise InputError(f"step() must return logits [{rows}, vocab], got shape {logits.shape}")
        if self.vocab is None:
            self.vocab = logits.shape[1]
            params.check_vocabulary(self.vocab, self.eos)
        vocab = self.vocab
        lp = log_softmax(logits)

        # Logits processors, on log-probabilities as transformers' beam search applies them (so the
        # repetition penalty multiplies log-probs, which are all ≤ 0). The first step's single row stands
        # for the nb identical rows transformers processes.
        lp = self.processors(lp, hist, t)

        if rows == 1:
            # Expand the one real beam to nb beams (scores 0, -1e9, ...), exactly as transformers starts.
            lp = np.broadcast_to(lp, (nb, vocab))
        # float32 lp + running score, flattened beam-major as transformers does, and its top candidates
        cand, cand_scores = top_k(lp, self.n_keep, add=self.run_scores)
        cand_beam, cand_tok = cand // vocab, cand % vocab
        hits = np.isin(cand_tok, self.eos_arr) | (t + 1 >= max_new_tokens)

        # Finished hypotheses: only hits among the nb best candidates count; the pool keeps the best nb
        # (existing ones first on ties, as they come first in transformers' concatenation).
        penalty = _length_penalty(t + 1, lp_exp)
        new = [(cand_scores[i] / penalty, i) for i in range(min(nb, cand.size)) if hits[i]]
        if new:
            pool = self.finished + [(s, np.append(hist[cand_beam[i] if rows > 1 else 0, self.plen:], cand_tok[i]))
                                    for s, i in new]
            order = sorted(range(len(pool)), key=lambda j: (-float(pool[j][0]), j))
            # A score ≤ -1e9 loses to transformers' -1e9 placeholders: drop it.
            self.finished = [pool[j] for j in order[:nb] if pool[j][0] > _NEG]

        # Next running beams: the best nb candidates that did not hit a stopping criterion.
        run_cand = cand_scores + np.where(hits, _NEG, np.float32(0))
        sel = np.argsort(-run_cand, kind="stable")[:nb]
        self.run_scores = run_cand[sel]
        if rows == 1:
            parents = np.zeros(nb, dtype=np.int64)          # every virtual beam is the single first row
        else:
            parents = cand_beam[sel].astype(np.int64)
        self.tokens, self.parents = cand_tok[sel].astype(np.int64), parents
        self.hist = np.concatenate([hist[parents], self.tokens[:, None]], axis=1)
        self.t = t + 1

        # Stopping, as transformers' _check_early_stop_heuristic / _beam_search_has_unfinished_sequences.
        best_len = max_new_tokens if params.early_stopping == "never" and lp_exp > 0 else t + 1
        best_possible = self.run_scores[0] / _length_penalty(best_len, lp_exp)
        all_finished = len(self.finished) == nb
        # With a slot still empty transformers compares against its -1e9 placeholder.
        worst = self.finished[-1][0] if all_finished else _NEG
        self.heuristic_unsatisfied = self.heuristic_unsatisfied and bool(best_possible > worst)
        if (not self.heuristic_unsatisfied or (all_finished and params.early_stopping is True) or hits.all()
                or self.t >= max_new_tokens):
            self.done = True

    def results(self) -> list[dict]:
        """The best ``num_return_sequences`` finished hypotheses: dicts ``{"token_ids", "score"}``."""
        found = list(self.finished[: self.params.num_return_sequences])
        # Scores that sink to -1e9 or below (a repetition penalty of 1e30, ...) finish nothing; the running
        # beams then stand in, best first, rather than returning fewer hypotheses than asked for.
        for row in range(self.hist.shape[0]):
            if len(found) >= self.params.num_return_sequences:
                break
            found.append((self.run_scores[row], self.hist[row, self.plen:]))
        return [{"token_ids": [int(i) for i in ids], "score": float(s)} for s, ids in found]
