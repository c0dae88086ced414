"""The checkpoint's tokenizer as tokenizer.json text (built from vocab.txt for WordPiece models)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from tinybert.errors import ConversionError, ModelFileError
from tinybert.tokenizer import check_tokenizer_json

from .files import read_json, read_text, source_file


def _lowercase(folder: Path) -> bool:
    if (folder / "tokenizer_config.json").is_file():
        return bool(read_json(folder, "tokenizer_config.json", dict).get("do_lower_case", True))
    return True


def tokenizer_json(folder: Path) -> str:
    """tokenizer.json text for the folder, checked to load with the ``tokenizers`` library."""
    if (folder / "tokenizer.json").is_file():
        text = read_text(folder, "tokenizer.json")
    elif (folder / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        vocab = source_file(folder, "vocab.txt")
        lowercase = _lowercase(folder)
        try:
            wordpiece = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
        except Exception as exc:  # tokenizers raises TypeError, Exception, ... for a vocabulary it cannot use
            raise ConversionError(f"{vocab}: not a usable WordPiece vocabulary ({exc})") from None
        text = wordpiece._tokenizer.to_str()
    else:
        raise ConversionError(f"{folder}: no tokenizer.json (or vocab.txt for WordPiece models)")
    try:
        check_tokenizer_json(text)      # what would hang or abort the process in tokenizers, refused first
    except ModelFileError as exc:
        raise ConversionError(f"{folder}: {exc}") from None
    try:
        Tokenizer.from_str(text)
    except BaseException as exc:  # tokenizers' own exception type, or a Rust panic (a BaseException): a BPE
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):    # merge whose result is not in the vocabulary
            raise
        raise ConversionError(f"{folder}: tokenizer does not load: {exc}") from None
    return text


def _special(value: object) -> str | None:
    # special_tokens_map.json / tokenizer_config.json store a token as a string or an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def tokenizer_options(folder: Path, text: str) -> dict:
    """What decoding and fill-mask need from tokenizer_config.json / special_tokens_map.json:
    the mask token and transformers' ``clean_up_tokenization_spaces`` (its default is False)."""
    settings: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            settings.update(read_json(folder, name, dict))
    mask = _special(settings.get("mask_token"))
    if mask is None:
        # Fall back to the conventional names among the tokenizer's special tokens.
        added = {t.get("content") for t in json.loads(text).get("added_tokens") or [] if isinstance(t, dict)}
        mask = next((m for m in ("[MASK]", "<mask>") if m in added), None)
    return {"mask_token": mask,
            "clean_up_tokenization_spaces": bool(settings.get("clean_up_tokenization_spaces", False))}
