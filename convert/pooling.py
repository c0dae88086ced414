"""sentence-transformers settings: pooling mode, normalisation and max_seq_length; prompts, similarity and
a cross-encoder's activation.

Read from ``modules.json`` / ``1_Pooling/config.json`` / ``sentence_bert_config.json`` /
``config_sentence_transformers.json`` / ``config.json`` so that tinybert's ``encode``, ``similarity`` and
``Classifier.predict`` give what sentence-transformers would give. A plain transformers folder gets mean
pooling without normalisation, no prompts and cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

from tinybert import format as fmt
from tinybert.errors import ConversionError, UnsupportedModelError

from .files import read_json, source_file
from .hfconfig import integer

_MODES = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
          ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
          ("pooling_mode_lasttoken", "lasttoken"))


# A CrossEncoder's activation_fn, as config.json names it (the class's import path). sentence-transformers resolves
# only "torch." paths without trust_remote_code; it falls back to its default for the others, as tinybert does.
_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh"}


def sentence_transformers_settings(folder: Path, hf_config: dict | None = None
                                   ) -> tuple[dict, int | None, dict, list[str]]:
    """Return (pooling {"mode", "normalize"}, max_seq_length or None, the sentence_transformers settings of
    format.check_sentence_transformers, the folders of the Dense modules in modules.json's order).

    The runtime applies Transformer → Pooling → the Dense modules → Normalize: a modules.json whose Dense modules
    come before the Pooling or after the Normalize is refused (UnsupportedModelError) rather than run in
    another order."""
    pooling = {"mode": "mean", "normalize": False}
    settings = fmt.default_sentence_transformers()
    settings["activation_fn"] = _activation(hf_config or {})
    max_seq_length = None
    if (folder / "sentence_bert_config.json").is_file():
        max_seq_length = integer(read_json(folder, "sentence_bert_config.json", dict), "max_seq_length", default=None,
                                 minimum=1, source="sentence_bert_config.json")
    modules_path = folder / "modules.json"
    dense: list[str] = []
    if not modules_path.is_file():
        return pooling, max_seq_length, _checked(settings), dense
    if (folder / "config_sentence_transformers.json").is_file():
        _read_model_config(read_json(folder, "config_sentence_transformers.json", dict), settings)
    pooled = False
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
            if len(modes) != 1 or cfg.get("pooling_mode_weightedmean_tokens"):
                raise UnsupportedModelError(
                    f"{cfg_path}: only exactly one of cls/mean/max/mean_sqrt_len/lasttoken pooling is supported")
            pooling["mode"] = modes[0]
            include_prompt = cfg.get("include_prompt", True)
            if not isinstance(include_prompt, bool):
                raise ConversionError(f"{cfg_path}: include_prompt must be a boolean")
            settings["include_prompt"] = include_prompt
            pooled = True
        elif kind.endswith(".Dense"):
            if not pooled or pooling["normalize"]:
                where = "after the Normalize" if pooled else "before the Pooling"
                raise UnsupportedModelError(f"{modules_path}: a Dense module {where} is not supported (tinybert runs "
                                            "Pooling, the Dense modules, Normalize)")
            dense.append(path)
        elif kind.endswith(".Normalize"):
            pooling["normalize"] = True
        elif not kind.endswith(".Transformer"):
            raise UnsupportedModelError(f"{modules_path}: module {kind} is not supported")
    return pooling, max_seq_length, _checked(settings), dense


def _read_model_config(cfg: dict, settings: dict) -> None:
    """prompts, default_prompt_name, similarity_fn_name and truncate_dim of config_sentence_transformers.json,
    read as SentenceTransformer reads them."""
    source = "config_sentence_transformers.json"
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ConversionError(f"{source}: prompts must be an object")
    # SentenceTransformer always has "query" and "document" prompts (empty unless set) and reads null as empty.
    settings["prompts"] = {"query": "", "document": ""}
    for name, text in prompts.items():
        if text is not None and not isinstance(text, str):
            raise ConversionError(f"{source}: prompt {name!r} must be a string")
        settings["prompts"][name] = text or ""
    default = cfg.get("default_prompt_name")
    if default is not None and (not isinstance(default, str) or default not in settings["prompts"]):
        raise ConversionError(f"{source}: default_prompt_name {default!r} is not one of the prompts")
    settings["default_prompt_name"] = default
    similarity = cfg.get("similarity_fn_name")
    if similarity is not None and not isinstance(similarity, str):
        raise ConversionError(f"{source}: similarity_fn_name must be a string")
    # Names SentenceTransformer does not score with (e.g. "maxsim" of multi-vector models) fall back to cosine.
    settings["similarity_fn_name"] = similarity if similarity in fmt.SIMILARITY_FUNCTIONS else None
    settings["truncate_dim"] = integer(cfg, "truncate_dim", default=None, minimum=1, source=source)


def _activation(hf_config: dict) -> str | None:
    """The CrossEncoder activation_fn config.json records, as a CROSS_ENCODER_ACTIVATIONS name; None for the
    default (sigmoid for one label, identity for more)."""
    st = hf_config.get("sentence_transformers")
    path = st.get("activation_fn") if isinstance(st, dict) else hf_config.get("sbert_ce_default_activation_function")
    if path is None:
        return None
    if not isinstance(path, str):
        raise ConversionError(f"config.json: activation_fn must be a string, got {type(path).__name__}")
    if not path.startswith("torch."):
        return None
    name = path.rsplit(".", 1)[-1]
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"config.json: cross-encoder activation_fn {path[:100]!r} is not supported "
                                    f"(only {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _checked(settings: dict) -> dict:
    problem = fmt.check_sentence_transformers(settings)
    if problem:
        raise ConversionError(f"sentence-transformers settings: {problem}")
    return settings
