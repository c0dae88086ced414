"""The language codes of a multilingual translation checkpoint (NLLB-200, M2M-100, mBART-50), read from its
tokenizer: which token each code is, and where transformers' tokenizer class puts the source code.

    NllbTokenizer        codes "fra_Latn"; source ``[code] text </s>``, or ``text </s> [code]`` with
                         ``legacy_behaviour`` (tokenizer_config.json)
    MBart50Tokenizer     codes "fr_XX"; source ``[code] text </s>``
    M2M100Tokenizer      codes "fr" for the tokens "__fr__"; source ``[code] text </s>``

In each, the target language is the first generated token (transformers' ``forced_bos_token_id``). Other
tokenizers give no codes: the model translates as its tokenizer and generation config say.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer

from tinybert.errors import ConversionError

from .files import read_json

# tokenizer class (without "Fast") → the special tokens that are language codes (group 1: the code)
_CODE_TOKENS = {
    "NllbTokenizer": re.compile(r"([a-z]{3}_[A-Z][a-z]{3})"),
    "MBart50Tokenizer": re.compile(r"([a-z]{2}_[A-Z]{2})"),
    "M2M100Tokenizer": re.compile(r"__([a-z]{2,3}(?:_[A-Za-z]+)?)__"),
}


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):     # tokenizer_config.json stores a token as a string or an AddedToken dict
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def language_settings(folder: Path, tokenizer_text: str) -> dict:
    """Seq2SeqConfig's language fields (``language_codes``, ``language_position``, ``source_eos_token_id``)
    for the checkpoint in ``folder`` whose tokenizer.json is ``tokenizer_text``; empty for a tokenizer with
    no language codes."""
    if not (folder / "tokenizer_config.json").is_file():
        return {}
    config = read_json(folder, "tokenizer_config.json", dict)
    name = config.get("tokenizer_class")
    name = name[:-4] if isinstance(name, str) and name.endswith("Fast") else name
    if name not in _CODE_TOKENS:
        return {}
    pattern = _CODE_TOKENS[name]
    tokenizer = Tokenizer.from_str(tokenizer_text)
    added = json.loads(tokenizer_text).get("added_tokens") or []
    codes = {}
    for token in added:
        if isinstance(token, dict) and token.get("special") and isinstance(token.get("content"), str):
            match = pattern.fullmatch(token["content"])
            if match and isinstance(token.get("id"), int):
                codes[match.group(1)] = token["id"]
    if not codes:
        raise ConversionError(f"{folder}: the {name} has no language code tokens")
    eos = _token_text(config.get("eos_token", "</s>"))
    eos_id = tokenizer.token_to_id(eos) if eos else None
    if eos_id is None:
        raise ConversionError(f"{folder}: the end-of-sequence token {eos!r} is not in the tokenizer")
    legacy = name == "NllbTokenizer" and bool(config.get("legacy_behaviour", False))
    return {"language_codes": dict(sorted(codes.items())), "language_position": "suffix" if legacy else "prefix",
            "source_eos_token_id": eos_id}
