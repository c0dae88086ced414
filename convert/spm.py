"""SentencePiece models (Marian's source.spm / target.spm, M2M-100's sentencepiece.bpe.model) rebuilt as
``tokenizers`` Tokenizers.

tinybert's runtime tokenizes with the Hugging Face ``tokenizers`` library only: it has neither
sentencepiece nor protobuf, and the converter must not need them either. So this module reads the
serialised SentencePiece ``ModelProto`` with a small protobuf wire-format reader and rebuilds what
sentencepiece does at encoding time (normalizer, whitespace handling, Unigram Viterbi or BPE merges) out
of ``tokenizers`` parts, following sentencepiece's own source (normalizer.cc, unigram_model.cc,
bpe_model.cc, sentencepiece_processor.cc) rather than transformers' SpmConverter where the two differ.

Marian checkpoints add a joint ``vocab.json`` (piece → model id) on top of the two SentencePiece
models; ``marian_tokenizers`` reproduces transformers' (slow-only) ``MarianTokenizer``: a source
tokenizer with SentencePiece ids plus a map to model ids (``marian_unknown_pieces`` completes it for
text source.spm does not know), and a target tokenizer over model ids for decoding. M2M-100's
folders are the same idea with one model (convert/m2m100.py).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

from tinybert.errors import ConversionError, UnsupportedModelError

from . import files

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2  # TrainerSpec.model_type
_MODEL_TYPES = {UNIGRAM: "Unigram", BPE: "BPE", 3: "word", 4: "char"}
_FLT_MIN = 1.1754943508222875e-38  # sentencepiece starts its max score at FLT_MIN, not at -FLT_MAX
_DEFAULT_UNK_SURFACE = " \u2047 "
_SPACE = "\u2581"  # sentencepiece's escaped whitespace "▁"
# What Python's str.isspace() accepts: MarianTokenizer ends its decoding with str.strip().
_PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                  "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Pieces sentencepiece never matches in text (control, unknown, unused) get names that text cannot
# hold in practice: Unicode noncharacters around the id.
_HIDDEN_OPEN, _HIDDEN_CLOSE = "\ufdd0", "\ufdd1"
# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order (the order in which missing ones get ids).
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# sentencepiece's built-in NFKC-based normalization rules (a model keeps the name of its rule set)
_NFKC_RULES = frozenset({"nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf"})
_MARIAN_DEFAULTS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


# ---------------------------------------------------------------- protobuf wire format


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ConversionError(f"{what}: truncated protobuf (varint runs past the end)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ConversionError(f"{what}: malformed protobuf (varint longer than 10 bytes)")


def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialised message: an int for varints,
    bytes for length-delimited and fixed-width fields."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ConversionError(f"{what}: malformed protobuf (field number 0)")
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ConversionError(f"{what}: truncated protobuf (fixed-width field runs past the end)")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos, what)
            if pos + size > end:
                raise ConversionError(f"{what}: truncated protobuf (field {number} runs past the end)")
            value, pos = buf[pos:pos + size], pos + size
        else:  # 3, 4: deprecated groups, which sentencepiece never writes; 6, 7: invalid
            raise ConversionError(f"{what}: malformed protobuf (wire type {wire})")
        yield number, wire, value


def _expect(wire: int, expected: int, number: int, what: str) -> None:
    if wire != expected:
        raise ConversionError(f"{what}: malformed SentencePiece model (field {number} has wire type {wire})")


def _string(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"{what}: malformed SentencePiece model (a string is not UTF-8)") from None


def _int32(value: int) -> int:
    # int32 fields are varints of the 64-bit two's complement
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass
class Piece:
    piece: str
    score: float
    type: int


@dataclass
class SpmModel:
    """The parts of a SentencePiece ModelProto that encoding and decoding depend on."""

    pieces: list[Piece]
    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_surface: str = _DEFAULT_UNK_SURFACE
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    denormalizer_charsmap: bytes = b""
    unk_id: int = field(init=False, default=-1)

    @property
    def known_chars(self) -> set[str]:
        """Characters that are pieces of their own: sentencepiece's Viterbi only falls back to an
        unknown node at a character that is not (unused pieces do not count)."""
        return {p.piece for p in self.pieces if p.type in (NORMAL, USER_DEFINED) and len(p.piece) == 1}


def _parse_piece(buf: bytes, what: str) -> Piece:
    piece, score, kind = "", 0.0, NORMAL
    for number, wire, value in _fields(buf, what):
        if number == 1:
            _expect(wire, 2, number, what)
            piece = _string(value, what)
        elif number == 2:
            _expect(wire, 5, number, what)
            score = struct.unpack("<f", value)[0]
        elif number == 3:
            _expect(wire, 0, number, what)
            kind = _int32(value)
    return Piece(piece, score, kind)


def _bool(wire: int, value: int | bytes, number: int, what: str) -> bool:
    _expect(wire, 0, number, what)
    return bool(value)


def parse_model(data: bytes, what: str = "SentencePiece model") -> SpmModel:
    """Read a serialised SentencePiece ModelProto; ConversionError if it is malformed or
    inconsistent (as sentencepiece's loader would refuse it), UnsupportedModelError if it is neither a
    Unigram nor a BPE model or treats whitespace as a suffix."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConversionError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    pieces: list[Piece] = []
    # A message field that occurs more than once is merged, which protobuf defines as parsing the
    # concatenation of the occurrences.
    trainer, normalizer, denormalizer = bytearray(), bytearray(), bytearray()
    for number, wire, value in _fields(data, what):
        if number in (1, 2, 3, 5):
            _expect(wire, 2, number, what)
            if number == 1:
                pieces.append(_parse_piece(value, what))
            else:
                {2: trainer, 3: normalizer, 5: denormalizer}[number].extend(value)
    model = SpmModel(pieces)
    for number, wire, value in _fields(bytes(trainer), what):
        if number == 3:
            _expect(wire, 0, number, what)
            model.model_type = _int32(value)
        elif number == 24:
            model.treat_whitespace_as_suffix = _bool(wire, value, number, what)
        elif number == 35:
            model.byte_fallback = _bool(wire, value, number, what)
        elif number == 44:
            _expect(wire, 2, number, what)
            model.unk_surface = _string(value, what)
    for number, wire, value in _fields(bytes(normalizer), what):
        if number == 1:
            _expect(wire, 2, number, what)
            model.normalizer_name = _string(value, what)
        elif number == 2:
            _expect(wire, 2, number, what)
            model.precompiled_charsmap = value
        elif number == 3:
            model.add_dummy_prefix = _bool(wire, value, number, what)
        elif number == 4:
            model.remove_extra_whitespaces = _bool(wire, value, number, what)
        elif number == 5:
            model.escape_whitespaces = _bool(wire, value, number, what)
    for number, wire, value in _fields(bytes(denormalizer), what):
        if number == 2:
            _expect(wire, 2, number, what)
            model.denormalizer_charsmap = value
    _check_model(model, what)
    return model


def _check_model(model: SpmModel, what: str) -> None:
    if model.model_type not in (UNIGRAM, BPE):
        name = _MODEL_TYPES.get(model.model_type, f"type {model.model_type}")
        raise UnsupportedModelError(f"{what}: a SentencePiece {name} model; only Unigram and BPE models are supported")
    if model.treat_whitespace_as_suffix:
        raise UnsupportedModelError(f"{what}: SentencePiece models that treat whitespace as a suffix are not "
                                    "supported")
    if not model.pieces:
        raise ConversionError(f"{what}: no pieces (not a SentencePiece model?)")
    # sentencepiece keeps matchable pieces and reserved ones in two maps, each without duplicates
    seen: tuple[set[str], set[str]] = (set(), set())
    byte_pieces = set()
    for i, p in enumerate(model.pieces):
        if p.type not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
            raise ConversionError(f"{what}: piece {i} has an unknown type {p.type}")
        if not p.piece:
            raise ConversionError(f"{what}: piece {i} is empty")
        if not math.isfinite(p.score):
            raise ConversionError(f"{what}: piece {i} has a score of {p.score}")
        names = seen[p.type in (UNKNOWN, CONTROL, BYTE)]
        if p.piece in names:
            raise ConversionError(f"{what}: piece {p.piece!r} is defined twice")
        names.add(p.piece)
        if p.type == UNKNOWN:
            if model.unk_id >= 0:
                raise ConversionError(f"{what}: more than one unknown piece")
            model.unk_id = i
        if p.type == BYTE:
            if not model.byte_fallback:
                raise ConversionError(f"{what}: byte piece {p.piece!r} although byte_fallback is off")
            byte_pieces.add(p.piece)
    if model.unk_id < 0:
        raise ConversionError(f"{what}: no unknown piece")
    if model.byte_fallback and byte_pieces != {f"<0x{b:02X}>" for b in range(256)}:
        raise ConversionError(f"{what}: byte_fallback is on but the 256 byte pieces are not all there")
    if not any(p.type == NORMAL for p in model.pieces):
        raise ConversionError(f"{what}: no normal pieces")
    if model.byte_fallback and seen[0] & byte_pieces:
        # tokenizers finds byte pieces by name: a normal piece of the same name would shadow one
        raise UnsupportedModelError(f"{what}: a normal piece is named like a byte piece")
    if model.precompiled_charsmap:
        _check_charsmap(model.precompiled_charsmap, what)


def _check_charsmap(blob: bytes, what: str) -> None:
    """Refuse a precompiled_charsmap that could make tokenizers' Precompiled normalizer index out of
    range, which panics (in the runtime, on some text) instead of raising.

    Layout: <trie size: uint32 LE><darts-clone double array of uint32 units><NUL-separated UTF-8
    strings>. Every state reachable from the root is visited: any byte of a text may be looked up
    from it, and every leaf must point at the start of a character of the strings.
    """
    broken = f"{what}: the normalizer's precompiled_charsmap is broken"
    trie_size = struct.unpack("<I", blob[:4])[0] if len(blob) >= 4 else 0
    if trie_size < 4 or trie_size % 4 or 4 + trie_size > len(blob):
        raise ConversionError(broken)
    strings = blob[4 + trie_size:]
    try:
        strings.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(broken) from None
    units = np.frombuffer(blob, dtype="<u4", count=trie_size // 4, offset=4).astype(np.int64)
    n = units.size
    label = units & 0x800000FF
    offset = (units >> 10) << ((units & (1 << 9)) >> 6)
    has_leaf = ((units >> 8) & 1).astype(bool)
    starts = np.ones(len(strings) + 1, dtype=bool)  # a leaf may also point at the end
    starts[:-1] = (np.frombuffer(strings, dtype=np.uint8) & 0xC0) != 0x80
    byte = np.arange(1, 256, dtype=np.int64)  # a NUL byte ends a lookup
    frontier = offset[:1]
    seen: set[int] = set()
    while frontier.size:
        if ((frontier | 0xFF) >= n).any():
            raise ConversionError(broken)
        child = frontier[:, None] ^ byte[None, :]
        child = child[label[child] == byte[None, :]]
        state = child ^ offset[child]
        if (state >= n).any():
            raise ConversionError(broken)
        values = units[state[has_leaf[child]]] & 0x7FFFFFFF
        if (values > len(strings)).any() or not starts[values].all():
            raise ConversionError(broken)
        fresh = [s for s in np.unique(state).tolist() if s not in seen]
        seen.update(fresh)
        frontier = np.asarray(fresh, dtype=np.int64)


# ---------------------------------------------------------------- SentencePiece → tokenizers


def _onig_escape(text: str) -> str:
    # tokenizers' Regex is Oniguruma: escape every non-alphanumeric character as a code point
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):X}}}" for c in text)


def _exact(pieces: list[str]) -> Regex:
    """A regex matching a whole token equal to one of ``pieces`` (decoders apply Replace per token)."""
    return Regex(r"\A(?:" + "|".join(_onig_escape(p) for p in sorted(pieces, key=len, reverse=True)) + r")\z")


def _hidden(kind: str, i: int) -> str:
    return f"{_HIDDEN_OPEN}{kind}{i}{_HIDDEN_CLOSE}"


def _unigram_vocab(model: SpmModel) -> list[tuple[str, float]]:
    """(name, score) per SentencePiece id, arranged so that tokenizers' Viterbi takes sentencepiece's path.

    tokenizers puts every vocabulary entry in its trie and derives the unknown score from the lowest
    score of all entries; sentencepiece matches only normal, user-defined and unused pieces (and skips
    unused ones) and takes the lowest *normal* score. So pieces it never matches get unmatchable names,
    user-defined pieces get sentencepiece's "always win" score, and byte pieces (which must keep their
    names for byte fallback) a score low enough never to beat the characters they spell.
    """
    normal = [p.score for p in model.pieces if p.type == NORMAL]
    min_score = min(normal)
    max_score = max([_FLT_MIN, *normal])
    longest = max(len(p.piece) for p in model.pieces)
    # Every span of text has a path of at most ``longest`` characters' worth of pieces, each ≥ min_score.
    byte_score = min(min_score * (longest + 1), min_score - 1000.0) if min_score < 0 else -1000.0 * (longest + 1)
    vocab = []
    for i, p in enumerate(model.pieces):
        if p.type == NORMAL:
            vocab.append((p.piece, p.score))
        elif p.type == USER_DEFINED:
            # unigram_model.cc: length (in bytes) * max_score - 0.1, computed in float then double
            length = len(p.piece.encode("utf-8"))
            vocab.append((p.piece, float(struct.unpack("<f", struct.pack("<f", length * max_score))[0]) - 0.1))
        elif p.type == BYTE:
            vocab.append((p.piece, byte_score))
        else:
            kind = {UNKNOWN: "U", CONTROL: "C", UNUSED: "N"}[p.type]
            vocab.append((_hidden(kind, i), min_score))
    if len({name for name, _ in vocab}) != len(vocab):
        raise UnsupportedModelError("a piece of the SentencePiece model is named like another one (tokenizers "
                                    "needs distinct names)")
    return vocab


def _charsmap(model: SpmModel, what: str) -> normalizers.Normalizer | None:
    if not model.precompiled_charsmap:
        return None
    try:
        charsmap = normalizers.Precompiled(model.precompiled_charsmap)
        charsmap.normalize_str("tinybert \u00e9\u3000")
    except Exception as exc:  # tokenizers raises its own exception type
        raise ConversionError(f"{what}: the normalizer's precompiled_charsmap does not load: {exc}") from None
    return charsmap


def _normalizer(model: SpmModel, what: str, check_user_defined: bool = True) -> normalizers.Normalizer | None:
    """normalizer.cc in tokenizers terms: the precompiled character map, then (with
    remove_extra_whitespaces) no leading, trailing or repeated spaces, then spaces → "▁" and the
    dummy prefix."""
    charsmap = _charsmap(model, what)
    steps: list[normalizers.Normalizer] = []
    if charsmap is not None and model.normalizer_name in _NFKC_RULES:
        # tokenizers applies the map per grapheme and takes the *shortest* rule matching its start,
        # where sentencepiece takes the longest rule at each character: decomposed text ("Vie\u0323\u0302t")
        # would lose accents. Composing first is harmless for NFKC-based rules (NFKC ∘ NFC = NFKC);
        # full NFKC also spares "ｆ\u0301" its accent, but the nmt_* rules keep some characters
        # NFKC changes (the full-width tilde), so those get NFC only.
        steps.append(normalizers.NFC() if model.normalizer_name.startswith("nmt_") else normalizers.NFKC())
    if charsmap is not None:
        steps.append(charsmap)
    mapping = normalizers.Sequence(list(steps))
    for p in model.pieces if check_user_defined else ():
        # sentencepiece copies user-defined pieces past its normalizer; tokenizers cannot, which
        # only matters when the normalizer would change them
        if p.type == USER_DEFINED and (" " in p.piece or mapping.normalize_str(p.piece) != p.piece):
            raise UnsupportedModelError(f"{what}: user-defined piece {p.piece!r} would be changed by the model's "
                                        "normalizer, which sentencepiece skips for such pieces")
    space = _SPACE if model.escape_whitespaces else " "
    if model.remove_extra_whitespaces:
        # sentencepiece counts only " " (after the character map) as whitespace here
        steps += [normalizers.Replace(Regex(r"\A +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", _SPACE))
    if model.add_dummy_prefix:
        # Prepend leaves an empty text alone, as sentencepiece does once extra whitespace is removed
        steps.append(normalizers.Prepend(space))
    if model.remove_extra_whitespaces:
        # ... but at the end it strips escaped spaces, so also "▁"s the text itself ends with
        steps.append(normalizers.Replace(Regex(rf"{_onig_escape(space)}+\z"), ""))
    return normalizers.Sequence(steps) if steps else None


def _spm_decoder(model: SpmModel) -> decoders.Decoder:
    """Roughly sentencepiece's decode of the ids this tokenizer produces (control pieces vanish, the
    unknown piece reads " ⁇ ", byte pieces become UTF-8, "▁" a space, the dummy prefix goes)."""
    steps: list[decoders.Decoder] = [
        decoders.Replace(Regex(rf"\A{_onig_escape(_HIDDEN_OPEN)}C\d+{_onig_escape(_HIDDEN_CLOSE)}\z"), ""),
        decoders.Replace(Regex(rf"\A{_onig_escape(_HIDDEN_OPEN)}U\d+{_onig_escape(_HIDDEN_CLOSE)}\z"),
                         model.unk_surface),
    ]
    for i, p in enumerate(model.pieces):
        if p.type == UNUSED:
            steps.append(decoders.Replace(Regex(rf"\A{_onig_escape(_hidden('N', i))}\z"), p.piece))
    if model.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if model.add_dummy_prefix or model.remove_extra_whitespaces:
        # sentencepiece drops the first piece's "▁" (not the unknown surface's leading space), and with
        # remove_extra_whitespaces that of every following piece while the text is still empty
        many = "+" if model.remove_extra_whitespaces else ""
        steps.append(decoders.Replace(Regex(rf"\A{_onig_escape(_SPACE)}{many}"), ""))
    steps.append(decoders.Replace(_SPACE, " "))
    return decoders.Sequence(steps)


def _bpe_model(model: SpmModel, what: str, named_specials: bool = False) -> models.BPE:
    """bpe_model.cc in tokenizers terms.

    sentencepiece splits the text into characters and repeatedly merges the adjacent pair whose concatenation
    is a piece of the highest score, the leftmost of equal ones; a run of characters that are not pieces comes
    out as one unknown piece (sentencepiece_processor.cc). tokenizers' BPE merges the pair of lowest rank, the
    leftmost of equal ones, and fuses runs of unknown characters: so every split of every normal piece into two
    normal pieces is a merge, ranked by the piece's score (then its id). The two can differ only where two
    splits of one piece are both mergeable at overlapping places (sentencepiece takes the leftmost, tokenizers
    the split with the shorter left part) or two pieces have equal scores (never in trained models, whose
    scores are minus the merge order); tests/convert/test_spm.py found no such text among tens of thousands
    of fuzzed ones.
    """
    vocab: dict[str, int] = {}
    for i, p in enumerate(model.pieces):
        if named_specials and p.type in (CONTROL, USER_DEFINED, UNUSED):
            # the caller matches control and user-defined pieces whole, as added tokens, before the model: they keep
            # their names (no merge makes them); unused ones are never produced
            vocab[_hidden("N", i) if p.type == UNUSED else p.piece] = i
            continue
        if p.type in (UNUSED, USER_DEFINED):
            # sentencepiece merges through unused pieces and then splits them again (its rev_merge), and
            # keeps user-defined pieces whole wherever they start a symbol: neither has a tokenizers part
            kind = "unused" if p.type == UNUSED else "user-defined"
            raise UnsupportedModelError(f"{what}: BPE models with {kind} pieces are not supported")
        vocab[p.piece if p.type in (NORMAL, BYTE) else _hidden("U" if p.type == UNKNOWN else "C", i)] = i
    if len(vocab) != len(model.pieces):
        raise UnsupportedModelError(f"{what}: a piece of the SentencePiece model is named like another one "
                                    "(tokenizers needs distinct names)")
    normal = {p.piece for p in model.pieces if p.type == NORMAL}
    for p in model.pieces:
        if p.type == NORMAL and not set(p.piece) <= normal:
            # sentencepiece would merge an unknown character into it; tokenizers cannot (an unknown
            # character is the unknown token there). Trained models never have such pieces.
            raise UnsupportedModelError(f"{what}: piece {p.piece!r} holds a character that is not a piece of its "
                                        "own")
    order = sorted((i for i, p in enumerate(model.pieces) if p.type == NORMAL),
                   key=lambda i: (-model.pieces[i].score, i))
    merges = []
    for i in order:
        piece = model.pieces[i].piece
        merges += [(piece[:k], piece[k:]) for k in range(1, len(piece))
                   if piece[:k] in normal and piece[k:] in normal]
    try:
        return models.BPE(vocab, merges, unk_token=_hidden("U", model.unk_id), fuse_unk=True,
                          byte_fallback=model.byte_fallback)
    except Exception as exc:  # tokenizers raises its own exception type
        raise ConversionError(f"{what}: cannot build the BPE model: {exc}") from None


def build_tokenizer(model: SpmModel, what: str, named_specials: bool = False) -> Tokenizer:
    """The tokenizer of a SentencePiece model; its ids are the SentencePiece ids. With ``named_specials`` (BPE
    models only) control and user-defined pieces keep their names in the vocabulary, for the caller to add as
    added tokens: matched whole in text before the model, as transformers' and llama.cpp's tokenizers do, where
    sentencepiece never matches control pieces."""
    if named_specials and model.model_type != BPE:
        raise UnsupportedModelError(f"{what}: named special pieces are implemented for BPE models only")
    if model.model_type == BPE:
        tokenizer = Tokenizer(_bpe_model(model, what, named_specials))
    else:
        try:
            tokenizer = Tokenizer(models.Unigram(_unigram_vocab(model), model.unk_id, model.byte_fallback))
        except Exception as exc:  # tokenizers raises its own exception type
            raise ConversionError(f"{what}: cannot build the Unigram model: {exc}") from None
    normalizer = _normalizer(model, what, check_user_defined=not named_specials)
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    # No pre-tokenizer: sentencepiece segments the whole normalized text at once.
    tokenizer.decoder = _spm_decoder(model)
    return tokenizer


def _eos_processor(eos: str, eos_id: int, what: str) -> processors.PostProcessor:
    if not eos or any(c.isspace() for c in eos) or ":" in eos or eos.startswith("$"):
        raise UnsupportedModelError(f"{what}: end-of-sequence piece {eos!r} cannot go into a template")
    # Marian appends one EOS to a single text and to a pair (build_inputs_with_special_tokens)
    return processors.TemplateProcessing(single=["$A", eos], pair=["$A", "$B", eos], special_tokens=[(eos, eos_id)])


def spm_tokenizer(model_bytes: bytes, eos_piece: str | None = "</s>") -> Tokenizer:
    """A ``tokenizers`` Tokenizer (Unigram or BPE, as the model) that segments as sentencepiece's
    ``encode(text, out_type=str)`` and whose ids are the SentencePiece ids (pieces sentencepiece never
    matches in text keep their ids under unmatchable names). With ``eos_piece``, a post-processor
    appends that piece's id to every text (and once after a pair). ConversionError on bad bytes,
    UnsupportedModelError on a model type or feature that is not supported."""
    model = parse_model(model_bytes)
    tokenizer = build_tokenizer(model, "SentencePiece model")
    if eos_piece is not None:
        ids = [i for i, p in enumerate(model.pieces) if p.piece == eos_piece]
        if not ids:
            raise ConversionError(f"SentencePiece model: no piece {eos_piece!r} to end texts with")
        tokenizer.post_processor = _eos_processor(eos_piece, ids[0], "SentencePiece model")
    return tokenizer


# ---------------------------------------------------------------- Marian


def _read_bytes(path: Path, needed_by: str = "Marian tokenizers") -> bytes:
    if not path.is_file():
        raise ConversionError(f"{path.parent}: {path.name} is missing ({needed_by} need it)")
    return files.read_bytes(path.parent, path.name)


def _read_json(path: Path) -> object:
    return files.read_json(path.parent, path.name)


def _read_vocab(path: Path, needed_by: str = "Marian tokenizers") -> dict[str, int]:
    if not path.is_file():
        raise ConversionError(f"{path.parent}: {path.name} is missing ({needed_by} need it)")
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not vocab:
        raise ConversionError(f"{path}: not a non-empty JSON object of piece → id")
    owner: dict[int, str] = {}
    for piece, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ConversionError(f"{path}: piece {piece!r} has id {i!r}, not an integer ≥ 0")
        if i in owner:
            raise ConversionError(f"{path}: pieces {owner[i]!r} and {piece!r} share id {i}")
        owner[i] = piece
    return vocab


def _token_text(value: object) -> str | None:
    # tokenizer_config.json stores a token as a string or an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


@dataclass
class _Marian:
    source: SpmModel
    target: SpmModel
    vocab: dict[str, int]             # vocab.json: source pieces → model ids
    target_vocab: dict[str, int]      # target_vocab.json with separate_vocabs, else vocab.json
    separate: bool
    specials: dict[str, int]          # MarianTokenizer's special tokens → ids, in its order
    eos: str
    unk: str

    def token_id(self, piece: str) -> int:
        """MarianTokenizer's id of a source piece: added (special) tokens first, then vocab.json, else <unk>."""
        if piece in self.specials:
            return self.specials[piece]
        return self.vocab.get(piece, self.specials[self.unk])


def _marian(folder: Path) -> _Marian:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder")
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path}: not a JSON object")
    map_path = folder / "special_tokens_map.json"
    if "added_tokens_decoder" not in config and map_path.is_file():
        # transformers' legacy path: special_tokens_map.json overrides the config's special tokens
        special_map = _read_json(map_path)
        if not isinstance(special_map, dict):
            raise ConversionError(f"{map_path}: not a JSON object")
        config = {**config, **special_map}
    if (folder / "added_tokens.json").is_file() and _read_json(folder / "added_tokens.json"):
        raise UnsupportedModelError(f"{folder / 'added_tokens.json'}: added tokens are not supported")
    source = parse_model(_read_bytes(folder / "source.spm"), str(folder / "source.spm"))
    target = parse_model(_read_bytes(folder / "target.spm"), str(folder / "target.spm"))
    for name, model in (("source.spm", source), ("target.spm", target)):
        if model.model_type != UNIGRAM:  # opus-mt's are; a BPE one is untested against MarianTokenizer
            raise UnsupportedModelError(f"{folder / name}: a SentencePiece BPE model; Marian folders need Unigram "
                                        "models")
    vocab = _read_vocab(folder / "vocab.json")
    separate = bool(config.get("separate_vocabs", False))
    target_vocab = _read_vocab(folder / "target_vocab.json") if separate else vocab

    names = {attr: _token_text(config.get(attr, _MARIAN_DEFAULTS.get(attr))) for attr in _SPECIAL_ATTRIBUTES}
    eos, unk = names["eos_token"], names["unk_token"]
    if eos is None or unk is None:
        raise ConversionError(f"{config_path}: Marian needs an eos_token and an unk_token")
    if unk not in vocab:
        raise ConversionError(f"{folder / 'vocab.json'}: the unknown token {unk!r} is not in it")
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    if not isinstance(extra, list):
        raise ConversionError(f"{config_path}: extra_special_tokens must be a list")
    order: list[str] = []
    for text in [*(names[a] for a in _SPECIAL_ATTRIBUTES), *(_token_text(t) for t in extra)]:
        if text is not None and text not in order:
            order.append(text)

    # Ids as transformers gives them: tokenizer_config.json's added_tokens_decoder, then vocab.json,
    # then new ids after the vocabulary in the order above.
    specials: dict[str, int] = {}
    added = config.get("added_tokens_decoder") or {}
    if not isinstance(added, dict):
        raise ConversionError(f"{config_path}: added_tokens_decoder must be an object")
    for key, value in added.items():
        text = _token_text(value)
        try:
            index = int(key)
        except ValueError:
            raise ConversionError(f"{config_path}: added_tokens_decoder key {key!r} is not an id") from None
        if text is None:
            raise ConversionError(f"{config_path}: added_tokens_decoder entry {key} has no content")
        if text not in order:
            # an added token that is not special would be split off the text but decoded as a piece
            raise UnsupportedModelError(f"{config_path}: added token {text!r} is not one of the special tokens "
                                        f"{order}; such tokens are not supported")
        specials[text] = index
    known = dict(vocab, **specials)
    for text in order:
        if text not in specials:
            specials[text] = known[text] if text in known else len(known)
            known[text] = specials[text]
    specials = {text: specials[text] for text in order}
    return _Marian(source, target, vocab, target_vocab, separate, specials, eos, unk)


def _source_tokenizer(m: _Marian, what: str) -> tuple[Tokenizer, list[int]]:
    tokenizer = build_tokenizer(m.source, what)
    # MarianTokenizer splits its special tokens off the raw text (before sentencepiece) and reads a
    # leading ">>code<<" as one token; codes become special tokens here, so that they are split off too.
    codes = [k for k in m.vocab if k.startswith(">>") and k.endswith("<<") and k not in m.specials]
    added = [*m.specials, *codes]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    ids = [m.token_id(p.piece) for p in m.source.pieces]
    ids[m.source.unk_id] = m.specials[m.unk]
    for text in added:
        index = tokenizer.token_to_id(text)
        if index is None:
            raise ConversionError(f"{what}: special token {text!r} did not get an id")
        ids += [m.specials[m.unk]] * (index + 1 - len(ids))
        ids[index] = m.token_id(text)
    tokenizer.post_processor = _eos_processor(m.eos, tokenizer.token_to_id(m.eos), what)
    return tokenizer, ids


def _target_tokenizer(m: _Marian, folder: Path) -> Tokenizer:
    """A WordLevel tokenizer over the target ids whose decoder reproduces MarianTokenizer.decode:
    id → piece through the vocabulary (special tokens skipped), sentencepiece's decode_pieces, "▁" →
    " ", str.strip()."""
    vocab_name = "target_vocab.json" if m.separate else "vocab.json"
    # transformers ≥ 5 decodes with source.spm unless the vocabularies are separate. decode_pieces only
    # depends on the model for pieces that are control, unknown or byte pieces in it.
    spm, spm_name = (m.target, "target.spm") if m.separate else (m.source, "source.spm")
    if spm.denormalizer_charsmap:
        raise UnsupportedModelError(f"{folder / spm_name}: SentencePiece denormalization rules are not supported")
    if m.unk not in m.target_vocab:
        raise ConversionError(f"{folder / vocab_name}: the unknown token {m.unk!r} is not in it")
    tokenizer = Tokenizer(models.WordLevel(m.target_vocab, unk_token=m.unk))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in m.specials])
    for text, index in m.specials.items():
        if tokenizer.token_to_id(text) != index:
            # MarianTokenizer skips the *source* vocabulary's special ids when it decodes target ids
            raise UnsupportedModelError(
                f"{folder}: special token {text!r} has id {index} in MarianTokenizer but "
                f"{tokenizer.token_to_id(text)} in {vocab_name}; transformers would skip the wrong ids when decoding")
    control = [p.piece for p in spm.pieces if p.type == CONTROL and p.piece in m.target_vocab
               and p.piece not in m.specials]
    steps: list[decoders.Decoder] = []
    if control:  # decode_pieces drops control pieces
        steps.append(decoders.Replace(_exact(control), ""))
    unk_piece = spm.pieces[spm.unk_id].piece
    if unk_piece in m.target_vocab and unk_piece not in m.specials:
        steps.append(decoders.Replace(_exact([unk_piece]), spm.unk_surface))
    if spm.byte_fallback:
        steps.append(decoders.ByteFallback())
    # Pieces the model does not know come back verbatim; Marian then turns every "▁" into a space.
    whitespace = "[" + _onig_escape(_PY_WHITESPACE) + "]"
    steps += [decoders.Fuse(), decoders.Replace(_SPACE, " "),
              decoders.Replace(Regex(rf"\A{whitespace}+|{whitespace}+\z"), "")]
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def marian_tokenizers(folder: Path) -> tuple[str, str, list[int]]:
    """(source tokenizer JSON, target tokenizer JSON, source_id_map) for a Marian checkpoint folder
    (source.spm, target.spm, vocab.json, optional tokenizer_config.json / target_vocab.json).

    The source tokenizer segments as source.spm and yields its own ids (special tokens and language
    codes get ids after the SentencePiece ones) with ``</s>`` appended; ``source_id_map[i]`` is the
    model id of its id ``i``, so that mapping the ids reproduces ``MarianTokenizer(text)["input_ids"]``
    except for unknown characters: see ``marian_unknown_pieces``. The target tokenizer's ids are the
    model's target ids and its ``decode(ids, skip_special_tokens=True)`` is MarianTokenizer's.
    ConversionError names a missing or broken file; UnsupportedModelError an unsupported feature.
    """
    folder = Path(folder)
    m = _marian(folder)
    source, id_map = _source_tokenizer(m, str(folder / "source.spm"))
    target = _target_tokenizer(m, folder)
    return source.to_str(), target.to_str(), id_map


def marian_unknown_pieces(folder: Path) -> dict[str, int]:
    """Model ids of the vocabulary entries that source.spm can only produce as unknown text.

    sentencepiece hands a run of characters it has no piece for to MarianTokenizer as that text, and
    MarianTokenizer looks the text up in vocab.json: text unknown to source.spm but known to
    target.spm (hence in the joint vocabulary) gets its own id, not ``<unk>``'s. The source tokenizer
    yields such a run as one token with source.spm's unknown id, whose token string is the run;
    replacing that token's mapped id by ``marian_unknown_pieces(folder).get(token, mapped id)``
    completes the match. Empty when source.spm has byte fallback (it spells unknown text in bytes).
    """
    m = _marian(Path(folder))
    if m.source.byte_fallback:
        return {}
    known = m.source.known_chars
    unk_id = m.specials[m.unk]
    pieces = {k: m.token_id(k) for k in [*m.vocab, *m.specials] if k and not any(c in known for c in k)}
    return {k: i for k, i in pieces.items() if i != unk_id}
