"""How to generate: one settings object for every search, named and meant as transformers' GenerationConfig."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

MAX_BEAMS = 256
"""Beams per input at most: each step scores beams x vocabulary candidates and each beam holds a KV
cache slot, so a beam count in the millions would run for hours or exhaust memory instead of failing."""

_F32_TINY, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)

MAX_NEW_TOKENS = 1 << 31
"""A bound far past any context, so that 10**30 is an InputError rather than an OverflowError later."""


def is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and bool(np.isfinite(x))


def id_tuple(v: int | Sequence[int] | None) -> tuple[int, ...]:
    """None, one id or several → a tuple of ids."""
    if v is None:
        return ()
    return (int(v),) if is_int(v) else tuple(int(i) for i in v)


@dataclass(frozen=True)
class GenerationParams:
    """Settings of one generation call.

    ``num_beams`` > 1 (or ``num_return_sequences`` > 1) runs beam search; otherwise ``temperature`` 0 picks
    greedily and ``temperature`` > 0 samples after ``top_k``, ``top_p`` and ``min_p``. ``seed`` makes draws
    reproducible. The logits processors apply to every search: ``repetition_penalty``,
    ``no_repeat_ngram_size``, ``min_new_tokens`` (no EOS before), ``bad_token_ids`` (single-token
    bad_words_ids; EOS ids are exempt, as in transformers), ``forced_bos_token_id`` (the only token allowed
    while the sequence, prefix included, has length 1) and ``forced_eos_token_id`` (the only token(s) allowed
    at the last step). Beam search alone uses ``length_penalty``, ``early_stopping`` (True, False or "never")
    and ``num_return_sequences``.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    seed: int | None = None
    bad_token_ids: tuple[int, ...] = ()
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None

    @property
    def beam(self) -> bool:
        return self.num_beams > 1 or self.num_return_sequences > 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, names: dict[str, str] | None = None) -> GenerationParams:
        """Raise InputError on a bad value; return self. ``names`` maps a field to the name the caller's
        API gives it (the Translator's ``beam_size`` for ``num_beams``, ...), for the messages."""
        names = names or {}

        def n(field: str) -> str:
            return names.get(field, field)

        if not is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"{n('max_new_tokens')} must be a positive integer, got {self.max_new_tokens!r}")
        for name in ("min_new_tokens", "no_repeat_ngram_size"):
            v = getattr(self, name)
            if not is_int(v) or not 0 <= v <= MAX_NEW_TOKENS:
                raise InputError(f"{n(name)} must be an integer ≥ 0, got {v!r}")
        t = self.temperature
        if not _number(t) or t < 0:
            raise InputError(f"{n('temperature')} must be a finite number ≥ 0, got {t!r}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            raise InputError(f"{n('top_k')} must be a positive integer or None, got {self.top_k!r}")
        for name in ("top_p", "min_p"):
            p = getattr(self, name)
            if p is not None and (not _number(p) or not 0 < p <= 1):
                raise InputError(f"{n(name)} must be in (0, 1] or None, got {p!r}")
        r = self.repetition_penalty
        # It scales float32 scores: a value that is 0 or inf in float32 would make 0/0 = NaN scores.
        if r is not None and (not _number(r) or not _F32_TINY <= float(r) <= _F32_MAX):
            raise InputError(f"{n('repetition_penalty')} must be a positive number within float32's range or None, "
                             f"got {r!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise InputError(f"{n('seed')} must be a non-negative integer or None, got {self.seed!r}")
        if not is_int(self.num_beams) or not 1 <= self.num_beams <= MAX_BEAMS:
            raise InputError(f"{n('num_beams')} must be an integer from 1 to {MAX_BEAMS}, got {self.num_beams!r}")
        lp = self.length_penalty
        if not _number(lp) or abs(lp) > 100:
            raise InputError(f"{n('length_penalty')} must be a number from -100 to 100, got {lp!r}")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            raise InputError(f"{n('early_stopping')} must be True, False or 'never', got {self.early_stopping!r}")
        count = self.num_return_sequences
        if not is_int(count) or count < 1:
            raise InputError(f"{n('num_return_sequences')} must be a positive integer, got {count!r}")
        if count > self.num_beams:
            raise InputError(f"{n('num_return_sequences')} ({count}) cannot exceed {n('num_beams')} "
                             f"({self.num_beams})")
        if self.beam and (self.temperature or self.top_k is not None or self.top_p is not None
                          or self.min_p is not None or self.seed is not None):
            raise InputError("beam search is deterministic: temperature, top_k, top_p, min_p and seed do not apply")
        if self.forced_bos_token_id is not None and (not is_int(self.forced_bos_token_id)
                                                     or self.forced_bos_token_id < 0):
            raise InputError(f"{n('forced_bos_token_id')} must be a token id or None, "
                             f"got {self.forced_bos_token_id!r}")
        for name in ("forced_eos_token_id", "bad_token_ids"):
            v = getattr(self, name)
            ids = () if v is None else (v,) if is_int(v) else v
            if not isinstance(ids, (tuple, list)) or not all(is_int(i) and i >= 0 for i in ids):
                raise InputError(f"{n(name)} must be token ids, got {v!r}")
        return self

    def check_vocabulary(self, vocab_size: int, eos_ids: Sequence[int]) -> None:
        """Every id these settings name must be a token of the model."""
        used = (*eos_ids, *id_tuple(self.forced_eos_token_id), *self.bad_token_ids,
                *id_tuple(self.forced_bos_token_id))
        if any(not 0 <= int(i) < vocab_size for i in used):
            raise InputError(f"eos/forced/bad token ids must lie in [0, {vocab_size}), got {sorted(set(used))}")
