"""The checkpoint's tokenizer as tokenizer.json text (built from vocab.txt for WordPiece models)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from tinybert.errors import ConversionError


def _lowercase(folder: Path) -> bool:
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            return bool(json.loads(cfg_path.read_text()).get("do_lower_case", True))
        except ValueError:
            raise ConversionError(f"{cfg_path}: not valid JSON") from None
    return True


def tokenizer_json(folder: Path) -> str:
    """tokenizer.json text for the folder, checked to load with the ``tokenizers`` library."""
    path = folder / "tokenizer.json"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    elif (folder / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        wordpiece = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=_lowercase(folder))
        text = wordpiece._tokenizer.to_str()
    else:
        raise ConversionError(f"{folder}: no tokenizer.json (or vocab.txt for WordPiece models)")
    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own exception type
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
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                raise ConversionError(f"{path}: not valid JSON") from None
            if isinstance(data, dict):
                settings.update(data)
    mask = _special(settings.get("mask_token"))
    if mask is None:
        # Fall back to the conventional names among the tokenizer's special tokens.
        added = {t.get("content") for t in json.loads(text).get("added_tokens") or [] if isinstance(t, dict)}
        mask = next((m for m in ("[MASK]", "<mask>") if m in added), None)
    return {"mask_token": mask,
            "clean_up_tokenization_spaces": bool(settings.get("clean_up_tokenization_spaces", False))}
