"""A GGUF file's tokenizer (``tokenizer.ggml.*`` metadata) → tokenizer.json text, special ids and chat template.

Two tokenizer models, as llama.cpp's llama-vocab.cpp reads them:

* ``gpt2``: byte-level BPE (tokens, merges), pre-tokenized by the regex that ``tokenizer.ggml.pre`` names. The
  regexes are those of the Hugging Face tokenizer.json files the GGUF files were made from (llama.cpp runs
  adapted copies of them): GPT-2's, Llama 3's (``llama-bpe``; merges ignored for words in the vocabulary, as
  its tokenizer.json says) and Qwen2's (``qwen2``, NFC-normalised first).
* ``llama``: SentencePiece (tokens, scores, token types), rebuilt as convert/spm.py rebuilds a SentencePiece
  BPE model: llama.cpp's SPM tokenizer merges by score, as sentencepiece's BPE does.

In both, control tokens become special added tokens and user-defined ones added tokens: matched whole in the text
before the model, as transformers and llama.cpp (parsing special tokens, as its chat does) match them, so that a
chat template's special tokens become their ids.

``add_bos_token`` / ``add_eos_token`` become a post-processor, so texts get the ids the model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from tinybert.errors import ConversionError, ModelFileError, UnsupportedModelError
from tinybert.tokenizer import check_tokenizer_json

from .spm import BPE, BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, Piece, SpmModel, build_tokenizer

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
# tokenizer.ggml.pre → (split regex, or None for GPT-2's own; NFC first; ignore_merges), llama-vocab.cpp's names
PRE_TOKENIZERS = {
    "gpt-2": (None, False, False),
    "llama-bpe": (_LLAMA3, False, True), "llama3": (_LLAMA3, False, True), "llama-v3": (_LLAMA3, False, True),
    "qwen2": (_QWEN2, True, False), "deepseek-r1-qwen": (_QWEN2, True, False),
}
_ID_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
            "pad_token": "padding_token_id"}


@dataclass
class Vocab:
    tokens: list[str]
    tokenizer_json: str
    config_ids: dict = field(default_factory=dict)      # bos_token_id, eos_token_id (a list), pad_token_id
    special_tokens: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None


def _byte_level(meta, path: Path, tokens: list[str], types: list[int]) -> Tokenizer:
    pre = meta.string("tokenizer.ggml.pre", default="default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedModelError(f"{path}: GGUF pre-tokenizer {pre[:60]!r} is not supported (supported: "
                                    f"{', '.join(PRE_TOKENIZERS)})")
    regex, nfc, ignore_merges = PRE_TOKENIZERS[pre]
    merges = meta.array("tokenizer.ggml.merges", str)
    if merges is None:
        raise ConversionError(f"{path}: a gpt2 tokenizer without tokenizer.ggml.merges")
    pairs = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ConversionError(f"{path}: tokenizer merge {merge[:60]!r} is not two tokens")
        pairs.append((parts[0], parts[1]))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConversionError(f"{path}: a token of the vocabulary is listed twice")
    try:
        tokenizer = Tokenizer(models.BPE(vocab, pairs, ignore_merges=ignore_merges))
    except Exception as exc:    # tokenizers raises its own exception type (a merge of tokens not in the vocabulary)
        raise ConversionError(f"{path}: the BPE tokenizer does not build: {exc}") from None
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    if regex is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    _add_special_pieces(tokenizer, tokens, types)
    return tokenizer


def _sentencepiece(meta, path: Path, tokens: list[str], types: list[int]) -> Tokenizer:
    scores = meta.array("tokenizer.ggml.scores", float)
    if scores is None or len(scores) != len(tokens):
        raise ConversionError(f"{path}: a llama tokenizer needs one score per token (tokenizer.ggml.scores)")
    model = SpmModel([Piece(t, s, k) for t, s, k in zip(tokens, scores, types)], model_type=BPE,
                     byte_fallback=BYTE in types,
                     add_dummy_prefix=meta.boolean("tokenizer.ggml.add_space_prefix", True),
                     remove_extra_whitespaces=meta.boolean("tokenizer.ggml.remove_extra_whitespaces", False))
    tokenizer = build_tokenizer(model, f"{path}: tokenizer", named_specials=True)
    _add_special_pieces(tokenizer, tokens, types)
    return tokenizer


def _add_special_pieces(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens as special added tokens, user-defined ones as added tokens: both matched whole in text before
    the model (llama.cpp's tokenizer_st_partition, transformers' added tokens), so that a chat template's
    "<start_of_turn>" or "<s>" is its token."""
    added = [AddedToken(tokens[i], special=t == CONTROL, normalized=False)
             for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED) and tokens[i]]
    before = tokenizer.get_vocab_size(with_added_tokens=True)
    tokenizer.add_tokens(added)
    if tokenizer.get_vocab_size(with_added_tokens=True) != before:     # a token's text is not its id's vocab entry
        raise ConversionError("a control or user-defined token is named like another token")


def _with_bos_eos(tokenizer: Tokenizer, tokens: list[str], bos: int | None, eos: int | None) -> None:
    single, pair, special = ["$A"], ["$A", "$B"], []
    for token_id, where in ((bos, "start"), (eos, "end")):
        if token_id is None:
            continue
        text = tokens[token_id]
        if not text or any(c.isspace() for c in text) or ":" in text or text.startswith("$"):
            raise UnsupportedModelError(f"token {text!r} cannot go into a tokenizer template")
        single = [text, *single] if where == "start" else [*single, text]
        pair = [text, "$A", text, "$B"] if where == "start" else [*pair, text]
        special.append((text, token_id))
    if special:
        tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_from_gguf(meta, path: Path) -> Vocab:
    """The tokenizer of the GGUF file read by ``meta`` (gguf_read._Metadata)."""
    kind = meta.string("tokenizer.ggml.model")
    tokens = meta.array("tokenizer.ggml.tokens", str)
    if kind is None or tokens is None:
        raise ConversionError(f"{path}: no tokenizer (tokenizer.ggml.model, tokenizer.ggml.tokens)")
    if not tokens:
        raise ConversionError(f"{path}: tokenizer.ggml.tokens is empty")
    types = meta.array("tokenizer.ggml.token_type", int) or [NORMAL] * len(tokens)
    if len(types) != len(tokens) or not set(types) <= {NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE}:
        raise ConversionError(f"{path}: tokenizer.ggml.token_type must give a known type for every token")
    if kind == "gpt2":
        tokenizer = _byte_level(meta, path, tokens, types)
    elif kind == "llama":
        tokenizer = _sentencepiece(meta, path, tokens, types)
    else:
        raise UnsupportedModelError(f"{path}: GGUF tokenizer model {kind[:60]!r} is not supported (gpt2, llama)")
    ids = {}
    for name, key in _ID_KEYS.items():
        value = meta.integer(f"tokenizer.ggml.{key}", default=-1, minimum=-1)
        if value >= len(tokens):
            raise ConversionError(f"{path}: tokenizer.ggml.{key} {value} is past the vocabulary")
        if value >= 0:
            ids[name] = value
    add_bos = meta.boolean("tokenizer.ggml.add_bos_token", False)
    add_eos = meta.boolean("tokenizer.ggml.add_eos_token", False)
    for flag, name in ((add_bos, "bos_token"), (add_eos, "eos_token")):
        if flag and name not in ids:
            raise ConversionError(f"{path}: tokenizer.ggml.add_{name} is set but there is no {name} id")
    _with_bos_eos(tokenizer, tokens, ids["bos_token"] if add_bos else None, ids["eos_token"] if add_eos else None)
    text = tokenizer.to_str()
    try:
        check_tokenizer_json(text)
        Tokenizer.from_str(text)
    except ModelFileError as exc:
        raise ConversionError(f"{path}: tokenizer: {exc}") from None
    except Exception as exc:    # tokenizers' own exception type
        raise ConversionError(f"{path}: tokenizer does not load: {exc}") from None
    # generation stops at the end-of-text, end-of-turn and end-of-message tokens, as llama.cpp's does
    stops = [ids["eos_token"]] if "eos_token" in ids else []
    for key in ("eot_token_id", "eom_token_id"):
        value = meta.integer(f"tokenizer.ggml.{key}", default=-1, minimum=-1)
        if 0 <= value < len(tokens) and value not in stops:
            stops.append(value)
    config_ids = {"bos_token_id": ids.get("bos_token"), "eos_token_id": stops or None,
                  "pad_token_id": ids.get("pad_token")}
    template = meta.string("tokenizer.chat_template")
    return Vocab(tokens, text, config_ids, {name: tokens[i] for name, i in ids.items()}, template)
