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
