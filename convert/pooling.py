"""sentence-transformers settings: pooling mode, normalisation and max_seq_length.

Read from ``modules.json`` / ``1_Pooling/config.json`` / ``sentence_bert_config.json`` so that
tinybert's ``encode`` gives the embeddings sentence-transformers would give. A plain transformers
folder gets mean pooling without normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinybert.errors import ConversionError, UnsupportedModelError

_MODES = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
          ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"))


def _json(path: Path, kind: type) -> object:
    try:
        value = json.loads(path.read_text())
    except ValueError:
        raise ConversionError(f"{path}: not valid JSON") from None
    if not isinstance(value, kind):
        raise ConversionError(f"{path}: expected a JSON {'object' if kind is dict else 'list'}")
    return value


def sentence_transformers_settings(folder: Path) -> tuple[dict, int | None]:
    """Return (pooling {"mode", "normalize"}, max_seq_length or None)."""
    pooling = {"mode": "mean", "normalize": False}
    max_seq_length = None
    bert_cfg = folder / "sentence_bert_config.json"
    if bert_cfg.is_file():
        max_seq_length = _json(bert_cfg, dict).get("max_seq_length")
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return pooling, max_seq_length
    for module in _json(modules_path, list):
        if not isinstance(module, dict):
            raise ConversionError(f"{modules_path}: entries must be JSON objects")
        kind = module.get("type", "")
        if kind.endswith(".Pooling"):
            cfg_path = folder / module.get("path", "") / "config.json"
            if not cfg_path.is_file():
                raise ConversionError(f"{cfg_path}: pooling config named in modules.json is missing")
            cfg = _json(cfg_path, dict)
            modes = [mode for key, mode in _MODES if cfg.get(key)]
            if len(modes) != 1 or cfg.get("pooling_mode_weightedmean_tokens") or cfg.get("pooling_mode_lasttoken"):
                raise UnsupportedModelError(
                    f"{cfg_path}: only exactly one of cls/mean/max/mean_sqrt_len pooling is supported")
            pooling["mode"] = modes[0]
        elif kind.endswith(".Normalize"):
            pooling["normalize"] = True
        elif not kind.endswith(".Transformer"):
            raise UnsupportedModelError(f"{modules_path}: module {kind} is not supported")
    return pooling, max_seq_length
