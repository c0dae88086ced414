"""Text → padded id arrays with the Hugging Face ``tokenizers`` library."""

from __future__ import annotations

import json
import re
import zlib
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


# Texts longer than this many characters are tokenized a bounded prefix at a time (see TextTokenizer).
PREFIX_CHARS = 1 << 20
# A prefix is used only if it yields this many tokens past the truncation length, so that its cut cannot
# change the tokens that are kept.
PREFIX_MARGIN = 64
# Windowed tokenization (a stride) keeps every token of a text: it takes texts up to this many characters.
WINDOWED_CHARS = 1 << 22


class CompactText:
    """A long text held zlib-compressed, as str(text) on demand: a 151k-token vocabulary's tokenizer.json is 28 M
    characters, 81 MB as a Python str, kept only to build more tokenizers from (about 6 MB this way)."""

    def __init__(self, text: str) -> None:
        self._data = zlib.compress(text.encode("utf-8", "surrogatepass"), 1)

    def __str__(self) -> str:
        return zlib.decompress(self._data).decode("utf-8", "surrogatepass")


def load_tokenizer(stored: str | CompactText, max_length: int) -> TextTokenizer:
    """A tokenizer from tokenizer.json text that truncates to ``max_length`` and never pads."""
    text = str(stored)
    check_tokenizer_json(text)
    try:
        tokenizer = Tokenizer.from_str(text)
    except BaseException as exc:  # tokenizers' own exception type, or a Rust panic (a BaseException): a BPE
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):    # merge whose result is not in the vocabulary
            raise
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
    return TextTokenizer(tokenizer, stored if isinstance(stored, CompactText) else CompactText(text), max_length)


# A group holding a repetition and repeated itself, "(a+)+", "(a*)*", "(?:ab+){2,}": the regex engine
# (Oniguruma, backtracking) can take exponential time on a near-match.
_NESTED_REPEAT = re.compile(r"[+*]|\{\d*,\d*\}|\{\d{2,}\}")


def check_tokenizer_json(tokenizer_json: str) -> None:
    """Refuse a tokenizer.json that tokenizers would choke on in ways no exception reports: regular expressions
    that nest repetitions (catastrophic backtracking: one short text could take minutes, uninterruptibly), BPE
    merges whose second part its continuing-subword prefix would cut inside a character (the process aborts),
    and nesting deeper than the JSON parser's stack (a RecursionError)."""
    try:
        spec = json.loads(tokenizer_json)
    except RecursionError:
        raise ModelFileError("tokenizer metadata nests deeper than the JSON parser's stack") from None
    except ValueError:
        return      # Tokenizer.from_str reports it
    for pattern in _regexes(spec):
        if _nests_repetition(pattern):
            raise ModelFileError(f"tokenizer regex {pattern[:80]!r} nests repetitions (exponential backtracking)")
    _check_bpe_merges(spec)


def _check_bpe_merges(spec: object) -> None:
    """tokenizers builds each BPE merge (a, b) as a + b with the first len(continuing_subword_prefix) bytes
    of b cut off, without looking: where that cut falls inside a character of b, the invalid UTF-8 string it
    makes aborts the process when its error message reaches Python (tokenizers 0.23: merge "a 你" with
    prefix "#"); where b is shorter than the prefix it panics. Both are refused here. Files without a prefix
    (GPT-2, Llama, ...) cost nothing."""
    model = spec.get("model") if isinstance(spec, dict) else None
    prefix = model.get("continuing_subword_prefix") if isinstance(model, dict) else None
    merges = model.get("merges") if isinstance(model, dict) else None
    if not isinstance(prefix, str) or not prefix or not isinstance(merges, list):
        return
    cut = len(prefix.encode("utf-8"))
    for merge in merges:
        parts = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not isinstance(parts, list) or len(parts) != 2 or not isinstance(parts[1], str):
            continue    # not a pair: Tokenizer.from_str reports it
        second = parts[1].encode("utf-8")
        if len(second) < cut or (len(second) > cut and second[cut] & 0xC0 == 0x80):
            raise ModelFileError(f"tokenizer BPE merge {str(merge)[:80]!r}: its second part does not begin with the "
                                 f"continuing-subword prefix {prefix[:20]!r}")


def _regexes(node: object, depth: int = 0) -> list[str]:
    if depth > 64:
        return []
    if isinstance(node, dict):
        found = [node["Regex"]] if isinstance(node.get("Regex"), str) else []
        return found + [r for value in node.values() for r in _regexes(value, depth + 1)]
    if isinstance(node, list):
        return [r for value in node for r in _regexes(value, depth + 1)]
    return []


def _nests_repetition(pattern: str) -> bool:
    """Whether a group that contains a repetition is itself repeated (+, *, {n,}, {n,m})."""
    stack: list[bool] = []      # per open group: has it a repetition inside?
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":        # a character class: skip to its end (its + and * are literal)
            i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif c == "(":
            stack.append(False)
        elif c == ")" and stack:
            repeated_inside = stack.pop()
            follow = _NESTED_REPEAT.match(pattern, i + 1)
            if repeated_inside and follow:
                return True
            if stack and (repeated_inside or follow):
                stack[-1] = True
        elif stack and _NESTED_REPEAT.match(pattern, i):
            stack[-1] = True
        i += 1
    return False


class TextTokenizer:
    """The file's ``tokenizers.Tokenizer`` (truncating to ``max_length``) with two guarantees: a failure
    inside the tokenizer, including a Rust panic (a BaseException), is an InputError; and a long text costs
    memory for the part that is kept, not for all of it (tokenizing costs ~150 bytes per input byte, and a
    30 MB text made the Rust allocator abort the process). Everything else is the tokenizer's own."""

    def __init__(self, tokenizer: Tokenizer, tokenizer_json: CompactText, max_length: int,
                 windows: bool = False) -> None:
        """``windows``: the tokenizer cuts each text into overlapping windows (``Encoding.overflowing``), so
        all of a text is kept: texts past WINDOWED_CHARS characters are refused instead of cut."""
        self.tokenizer, self.json, self.max_length, self.windows = tokenizer, tokenizer_json, max_length, windows
        self._counter: Tokenizer | None = None      # without truncation, for the prefixes of long texts

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True):
        text = self._bounded(text)
        pair = None if pair is None else self._bounded(pair)
        return _guarded(self.tokenizer.encode, text, pair, add_special_tokens=add_special_tokens)

    def encode_batch(self, inputs: list, add_special_tokens: bool = True) -> list:
        inputs = [tuple(self._bounded(t) for t in item) if isinstance(item, (tuple, list)) else self._bounded(item)
                  for item in inputs]
        return _guarded(self.tokenizer.encode_batch, inputs, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return _guarded(self.tokenizer.decode, ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name: str) -> object:
        return getattr(self.tokenizer, name)

    def _bounded(self, text: str) -> str:
        """``text``, or a prefix of it whose tokens, truncated, are the text's own: a prefix cut at
        whitespace that yields PREFIX_MARGIN tokens more than the truncation keeps. Prefixes double from
        16 characters per kept token up to PREFIX_CHARS; a text whose first PREFIX_CHARS characters give
        fewer tokens than that is an InputError (its kept tokens could come from any depth)."""
        if not isinstance(text, str) or len(text) <= max(4096, 16 * self.max_length):
            return text
        if self.windows:
            if len(text) > WINDOWED_CHARS:
                raise InputError(f"a text of {len(text):,} characters is past the {WINDOWED_CHARS:,} that windowed "
                                 "tokenization takes: split it")
            return text
        if self._counter is None:
            self._counter = Tokenizer.from_str(str(self.json))
            self._counter.no_padding()
            self._counter.no_truncation()
        size = min(PREFIX_CHARS, max(4096, 16 * self.max_length))
        while True:
            prefix = _cut(text, size)
            count = len(_guarded(self._counter.encode, prefix, add_special_tokens=False).ids)
            if count >= self.max_length + PREFIX_MARGIN:
                return prefix
            if size >= PREFIX_CHARS:
                raise InputError(f"a text of {len(text):,} characters gives only {count} tokens in its first "
                                 f"{len(prefix):,}: cut it to its first part")
            size = min(PREFIX_CHARS, 2 * size)


def _cut(text: str, size: int) -> str:
    """The first ``size`` characters of ``text``, cut back to the last whitespace in their final quarter if
    there is one (so no word is split)."""
    prefix = text[:size]
    for i in range(len(prefix) - 1, 3 * len(prefix) // 4, -1):
        if prefix[i].isspace():
            return prefix[:i]
    return prefix


def _guarded(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 raises a Rust panic as PanicException, a BaseException
        raise InputError(f"the tokenizer failed on this input: {type(exc).__name__}: {exc}") from None


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


def check_sentences(sentences: object) -> tuple[list[str], bool]:
    """``Encoder.encode``'s input as (a list of texts, whether it was one string), or InputError. As
    sentence-transformers takes them: a str, a list or tuple, a 1-D numpy array of strings, or any other
    iterable of strings (a generator, read once); empty input and empty texts are allowed (an empty text
    encodes as the tokenizer's special tokens alone). Sets and mappings are refused: their order is not the
    caller's."""
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, np.ndarray):
        if sentences.ndim != 1 or sentences.dtype.kind not in "UO":
            raise InputError(f"texts as a numpy array must be 1-D and hold strings, got {sentences.dtype} "
                             f"{sentences.shape}")
        texts = sentences.tolist()
    elif isinstance(sentences, (list, tuple)):
        texts = list(sentences)
    elif isinstance(sentences, (bytes, bytearray, set, frozenset, dict)) or not hasattr(sentences, "__iter__"):
        raise InputError(f"texts must be a string or a list of strings, got {type(sentences).__name__}")
    else:
        texts = list(sentences)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is a {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"texts[{i}] is not valid Unicode (lone surrogate: undecodable input bytes?)") from None
    return texts, False


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
