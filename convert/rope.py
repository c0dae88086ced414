"""Hugging Face RoPE settings → the runtime's canonical rope dict (tinybert/kernels/rope.py).

The converter is the only code that knows Hugging Face names (``rope_scaling``, ``rope_parameters``,
``rope_type``, ``rope_theta``, ...): the file carries the canonical dict in its config, and the runtime's
``rope_tables`` reads that alone.  Which rope types exist is the runtime's vocabulary
(``SUPPORTED_TYPES``), so a type the kernels cannot build is refused here, at conversion.
"""

from __future__ import annotations

import math

from tinybert.kernels.rope import SUPPORTED_TYPES


def _number(value: object, name: str) -> float:
    """float(value) of a config value, or ValueError naming it (float() raises TypeError for lists and the like)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"rope parameter {name} must be a number, got {value!r:.60}")
    try:
        return float(value)
    except OverflowError:       # an int too large for a float
        raise ValueError(f"rope parameter {name} is out of range") from None


def rope_from_hf_config(cfg: dict) -> dict:
    """The canonical rope dict for a Llama-family config.json dict.

    Reads transformers 5's ``rope_parameters`` ({"rope_type", "rope_theta", "factor", ...}) and the
    older top-level ``rope_theta`` + ``rope_scaling`` ({"type" or "rope_type", "factor", ...}), with
    transformers' precedence: a non-empty ``rope_scaling`` wins over ``rope_parameters``; theta comes
    from the parameters, else the top-level ``rope_theta``, else 10000; llama3's
    ``original_max_position_embeddings`` from a top-level key of that name, else the parameters,
    else ``max_position_embeddings``.

    longrope (Phi-3's, "su" in early configs) keeps its short factors ("factors"), its long factors
    ("long_factors", when the config has them: transformers rotates a forward reaching past
    original_max_position_embeddings with them; the runtime switches per sequence, tinybert/layers/attention.py)
    and the attention scaling transformers computes, the same for both. Without long factors the context is
    capped at original_max_position_embeddings (convert/decoders.py).

    Raises ValueError for rope types other than default / linear / llama3 / longrope ("dynamic" rescales
    with the sequence length, "yarn" needs extra attention scaling; neither is implemented), for per-layer-type
    (nested) rope parameters (Gemma 3's are split in convert/decoders.py), and for a
    ``partial_rotary_factor`` other than 1 on scaled types (transformers' Llama cannot run it
    either; its default rope ignores the factor, and so do we), and for parameters that are not numbers
    (ranges are the runtime's check: tinybert/config.py).
    """
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"rope parameters must be a dict, got {type(params).__name__}")
    if any(isinstance(value, dict) for value in params.values()):
        raise ValueError("per-layer-type rope parameters are not supported")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "su":            # longrope's name in early Phi-3 configs (transformers renames it too)
        kind = "longrope"
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported rope type {kind!r}: only {', '.join(SUPPORTED_TYPES)} are implemented")
    theta = params.get("rope_theta")
    if theta is None:
        theta = cfg.get("rope_theta")
    rope: dict = {"type": kind, "theta": _number(10000.0 if theta is None else theta, "rope_theta")}
    if kind != "default":
        partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
        if partial is not None and _number(partial, "partial_rotary_factor") != 1.0:
            raise ValueError(f"partial_rotary_factor={partial} is not supported with rope type {kind!r}")
    try:
        if kind in ("linear", "llama3"):
            rope["factor"] = _number(params["factor"], "factor")
        if kind == "llama3":
            rope["low_freq_factor"] = _number(params["low_freq_factor"], "low_freq_factor")
            rope["high_freq_factor"] = _number(params["high_freq_factor"], "high_freq_factor")
        if kind == "longrope":
            rope["factors"] = _factors(params["short_factor"], "short_factor")
            if params.get("long_factor") is not None:
                rope["long_factors"] = _factors(params["long_factor"], "long_factor")
        if kind in ("llama3", "longrope"):
            original = cfg.get("original_max_position_embeddings")
            if original is None:
                original = params.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
            if original is None:
                raise KeyError("original_max_position_embeddings")
            if isinstance(original, float) and original.is_integer():     # 8192.0 in a hand-edited config
                original = int(original)
            if isinstance(original, bool) or not isinstance(original, int):
                raise ValueError(f"original_max_position_embeddings must be an integer, got {original!r:.60}")
            rope["original_max_position_embeddings"] = original
        rope["attention_scaling"] = _longrope_scaling(cfg, params, original) if kind == "longrope" else 1.0
    except KeyError as err:
        raise ValueError(f"rope type {kind!r} needs {err.args[0]!r} in the config") from None
    return rope


def _factors(factors: object, name: str) -> list[float]:
    if not isinstance(factors, list):
        raise ValueError(f"rope {name} must be a list of numbers, got {factors!r:.60}")
    return [_number(f, name) for f in factors]


def _longrope_scaling(cfg: dict, params: dict, original: int) -> float:
    """transformers' _compute_longrope_parameters: the attention_factor given, else √(1 + ln s / ln L) for the
    scale s = factor, or max_position_embeddings / L without one (Phi-3), and 1 for s ≤ 1 (L: the original
    context)."""
    if params.get("attention_factor") is not None:
        return _number(params["attention_factor"], "attention_factor")
    factor = params.get("factor")
    if factor is None:
        factor = _number(cfg["max_position_embeddings"], "max_position_embeddings") / original
    factor = _number(factor, "factor")
    if factor <= 1.0 or original <= 1:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))
