"""Text → padded id arrays with the Hugging Face ``tokenizers`` library."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from .errors import InputError, ModelFileError


@dataclass
class Packed:
    """Token ids of a batch of texts, concatenated without padding."""

    ids: np.ndarray        # int32 [T]
    type_ids: np.ndarray   # int32 [T]
    starts: np.ndarray     # int64 [B+1]: text b is ids[starts[b]:starts[b+1]]


def load_tokenizer(text: str, max_length: int) -> Tokenizer:
    """A tokenizer from tokenizer.json text that truncates to ``max_length`` and never pads."""
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own exception type
        raise ModelFileError(f"tokenizer metadata does not load: {exc}") from None
    tokenizer.no_padding()
    try:
        tokenizer.enable_truncation(max_length=max_length)
        # A tokenizer.json can parse and still be broken (a template naming a token it does not define):
        # the Rust code then panics on the first text. Find out now, on a probe, not on the user's input.
        probes = [tokenizer.encode("Probe text, 0."), tokenizer.encode("Probe", "pair")]
        tokenizer.decode([0, 1])
    except BaseException as exc:  # pyo3 raises a panic as PanicException, a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelFileError(f"tokenizer metadata does not work: {type(exc).__name__}: {exc}") from None
    for probe in probes:     # the template's special ids and type ids show here, at load, not on the first text
        _int32(probe.ids, "token id")
        _int32(probe.type_ids, "type id")
    return tokenizer


def _int32(values: list[int], what: str) -> np.ndarray:
    """Ids of the file's tokenizer as int32, the runtime's id type. The tokenizer (vocabulary, template) may hold
    ids up to 2**32 - 1; a larger one than int32 holds is the file's fault (numpy 2 would raise OverflowError on
    the conversion, numpy 1 wrap it to a negative id). Walking the whole vocabulary at load instead would cost a
    quarter of a small model's load time. Arrays (TokenIds) were checked when they were made."""
    if isinstance(values, np.ndarray):
        return values.astype(np.int32, copy=False)
    if values and max(values) >= 2 ** 31:
        raise ModelFileError(f"the tokenizer metadata gives a {what} of {max(values)}, beyond the int32 ids tinybert "
                             "uses")
    return np.array(values, dtype=np.int32)


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
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"texts[{i}] is not valid Unicode (lone surrogate: undecodable input bytes?)") from None
    return list(texts)


@dataclass
class TokenIds:
    """What the encoder needs of one tokenizer ``Encoding``, in 8 bytes per token: an Encoding also
    holds the token strings, offsets and masks (~200 bytes per token; 6 MB for 1,000 sentences)."""

    ids: np.ndarray        # int32 [n]
    type_ids: np.ndarray   # int32 [n]


def token_ids(tokenizer: Tokenizer, texts: list[str], slice_size: int = 1024) -> list[TokenIds]:
    """Tokenize ``texts`` (``slice_size`` at a time, so that only one slice's Encodings exist at once)
    and keep only their ids and type ids."""
    out = []
    for start in range(0, len(texts), slice_size):
        out.extend(TokenIds(_int32(e.ids, "token id"), _int32(e.type_ids, "type id"))
                   for e in tokenizer.encode_batch(texts[start:start + slice_size]))
    return out


def pack(encodings: list) -> Packed:
    """Concatenate the encodings (tokenizer Encodings or TokenIds) of one batch; offsets in ``starts``."""
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    starts = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    if not encodings:
        return Packed(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32), starts)
    ids = np.concatenate([_int32(e.ids, "token id") for e in encodings])
    type_ids = np.concatenate([_int32(e.type_ids, "type id") for e in encodings])
    return Packed(ids, type_ids, starts)


def check_pairs(texts: list[str], pairs: object) -> list[str]:
    """The second texts of sentence pairs: one string per first text, checked like texts."""
    pairs = check_texts(pairs)
    if len(pairs) != len(texts):
        raise InputError(f"text_pair has {len(pairs)} texts for {len(texts)} texts")
    return pairs


class Decoder:
    """ids → text as transformers' fast tokenizers decode: the ``tokenizers`` decoder, then
    ``clean_up_tokenization_spaces`` when the checkpoint asks for it (transformers skips that
    clean-up for BPE models, which it would damage)."""

    def __init__(self, tokenizer: Tokenizer, clean_up_tokenization_spaces: bool) -> None:
        self.tokenizer = tokenizer
        self.clean_up = clean_up_tokenization_spaces and type(tokenizer.model).__name__ != "BPE"

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                                  (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def __getattr__(self, name: str) -> object:
        # Everything else (token_to_id, model, ...) is the tokenizer's own.
        return getattr(self.tokenizer, name)
