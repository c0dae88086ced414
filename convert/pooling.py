"""sentence-transformers settings: pooling mode, normalisation and max_seq_length.

Read from ``modules.json`` / ``1_Pooling/config.json`` / ``sentence_bert_config.json`` so that
tinybert's ``encode`` gives the embeddings sentence-transformers would give. A plain transformers
folder gets mean pooling without normalisation.
"""

from __future__ import annotations

from pathlib import Path

from tinybert.errors import ConversionError, UnsupportedModelError

from .files import read_json, source_file
from .hfconfig import integer

_MODES = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
          ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"))


def sentence_transformers_settings(folder: Path) -> tuple[dict, int | None]:
    """Return (pooling {"mode", "normalize"}, max_seq_length or None)."""
    pooling = {"mode": "mean", "normalize": False}
    max_seq_length = None
    if (folder / "sentence_bert_config.json").is_file():
        max_seq_length = integer(read_json(folder, "sentence_bert_config.json", dict), "max_seq_length", default=None,
                                 minimum=1, source="sentence_bert_config.json")
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return pooling, max_seq_length
    for module in read_json(folder, "modules.json", list):
        if not isinstance(module, dict):
            raise ConversionError(f"{modules_path}: entries must be JSON objects")
        kind, path = module.get("type", ""), module.get("path", "")
        if not isinstance(kind, str) or not isinstance(path, str):
            raise ConversionError(f"{modules_path}: a module's type and path must be strings, got "
                                  f"{type(kind).__name__} and {type(path).__name__}")
        if kind.endswith(".Pooling"):
            # The path comes from the folder's own file: it must name a folder inside it.
            cfg_name = f"{path}/config.json" if path else "config.json"
            cfg_path = source_file(folder, cfg_name)
            if not cfg_path.is_file():
                raise ConversionError(f"{cfg_path}: pooling config named in modules.json is missing")
            cfg = read_json(folder, cfg_name, dict)
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
