"""Text → padded id arrays with the Hugging Face ``tokenizers`` library."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from .errors import InputError, ModelFileError


@dataclass
class Batch:
    """Right-padded token ids of a batch of texts."""

    ids: np.ndarray        # int32 [B, S]
    mask: np.ndarray       # uint8 [B, S], 1 for real tokens
    type_ids: np.ndarray   # int32 [B, S]


def load_tokenizer(text: str, max_length: int) -> Tokenizer:
    """A tokenizer from tokenizer.json text that truncates to ``max_length`` and never pads."""
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own exception type
        raise ModelFileError(f"tokenizer metadata does not load: {exc}") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def check_texts(texts: object) -> list[str]:
    """The texts as a list, or InputError: a str counts as one text; empty input is an error."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError("texts is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"texts[{i}] is empty or whitespace only")
    return list(texts)


def pad(encodings: list, pad_id: int) -> Batch:
    """Right-pad the encodings of one batch to its longest member."""
    seq = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), seq), pad_id, dtype=np.int32)
    mask = np.zeros((len(encodings), seq), dtype=np.uint8)
    type_ids = np.zeros((len(encodings), seq), dtype=np.int32)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        type_ids[row, :n] = enc.type_ids
    return Batch(ids, mask, type_ids)
