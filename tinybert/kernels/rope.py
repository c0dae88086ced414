"""Rotary position embeddings (RoPE) as transformers computes them for Llama-family models.

Per head, with half = d/2, a row x at position p is rotated pair-wise, pairing x[i] with x[i+half]
(transformers' ``rotate_half`` convention, not the interleaved x[2i], x[2i+1] of the RoPE paper):

    x[i]      <- x[i] cos(p θ_i) - x[i+half] sin(p θ_i)
    x[i+half] <- x[i+half] cos(p θ_i) + x[i] sin(p θ_i)          for i < half

θ_i ("inverse frequencies") is theta ** (-2i/d), possibly rescaled by the rope type; the tables
are cos/sin(p θ_i) times ``attention_scaling``.

Canonical rope dict (what ``rope_tables`` takes and ``rope_from_hf_config`` returns):

    {"type": "default", "theta": float, "attention_scaling": float}
    {"type": "linear",  "theta": float, "factor": float, "attention_scaling": float}
    {"type": "llama3",  "theta": float, "factor": float, "low_freq_factor": float,
     "high_freq_factor": float, "original_max_position_embeddings": int, "attention_scaling": float}

"attention_scaling" is optional (default 1.0); transformers uses 1.0 for all three types (it is
not 1 only for yarn and longrope, which are unsupported). Other keys are ignored.

Layouts: cos, sin float32 [max_positions, d/2] (transformers duplicates them over both halves; the
kernel reads the half table twice). ``apply_rope``: x float32 [N, heads, d] rotated in place,
positions int32 [N].

Precision: the tables follow transformers' float32 operation order step by step (including
``c / t`` being evaluated as ``(1 / t) * c`` and comparisons against Python floats happening in
float32), so the angles p·θ_i are the same float32 numbers whenever θ_i is. One step cannot be
reproduced portably: transformers raises theta to a float32 power with PyTorch's SIMD powf (SLEEF,
<= 1 ulp, not correctly rounded; the result depends on the CPU's vector width), whereas we round
the float64 power to float32. For some (theta, d) pairs one θ_i then differs by 1 ulp, which
moves cos/sin at position p by up to about p·θ_i·2**-24: the same size as the float32 rounding of
the angle that transformers itself does, so neither table is closer to exact RoPE.
"""

import math

import numpy as np
from numba import njit, prange

from .jitcache import fast_cache_loading

SUPPORTED_TYPES = ("default", "linear", "llama3")
# Below this many elements a parallel launch (~15 µs) costs more than the rotation itself: a
# decode step (N = 1) rotates a few thousand values.
PARALLEL_MIN_WORK = 1 << 16


def _f32(value) -> np.float32:
    return np.float32(value)


def _inv_freq(head_dim: int, rope: dict) -> np.ndarray:
    """θ_i, float32 [head_dim // 2], in transformers' operation order (see the module docstring)."""
    kind = rope["type"]
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported rope type {kind!r} (supported: {', '.join(SUPPORTED_TYPES)})")
    # torch: base ** (arange(0, d, 2).float() / d) with the Python-float base cast to float32.
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / _f32(head_dim)
    base = np.float64(_f32(rope["theta"]))
    power = (base ** exponent.astype(np.float64)).astype(np.float32)
    inv = _f32(1.0) / power  # torch's 1.0 / t is reciprocal(t) * 1.0: the same float32 number
    if kind == "linear":
        inv = inv / _f32(rope["factor"])
    elif kind == "llama3":
        factor = _f32(rope["factor"])
        low = float(rope["low_freq_factor"])
        high = float(rope["high_freq_factor"])
        old_len = rope["original_max_position_embeddings"]
        # Python-float thresholds, compared against a float32 tensor: torch compares in float32.
        low_wavelen = _f32(old_len / low)
        high_wavelen = _f32(old_len / high)
        wavelen = (_f32(1.0) / inv) * _f32(2 * math.pi)  # 2π / t in torch is reciprocal(t) * 2π
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = ((_f32(1.0) / wavelen) * _f32(old_len) - _f32(low)) / _f32(high - low)
        smoothed = (_f32(1.0) - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_tables(head_dim: int, max_positions: int, rope: dict) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin float32 [max_positions, head_dim // 2] for positions 0 .. max_positions - 1.

    ``rope`` is the canonical dict of the module docstring. Raises ValueError for an unknown rope
    type, a missing parameter, an odd or non-positive ``head_dim`` or a non-positive
    ``max_positions``. Memory is 4·max_positions·head_dim bytes for the pair, plus twice that
    while building (cos/sin are evaluated in float64 from the float32 angles, then rounded).
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary head_dim must be even and >= 2, got {head_dim}")
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    try:
        inv = _inv_freq(head_dim, rope)
        scaling = _f32(rope.get("attention_scaling", 1.0))
    except KeyError as err:
        raise ValueError(f"rope parameters for type {rope.get('type')!r} lack {err.args[0]!r}") from None
    # float32 product, as transformers' position_ids.float() * inv_freq.
    angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv[None, :]
    wide = angles.astype(np.float64)
    cos = np.cos(wide).astype(np.float32) * scaling
    sin = np.sin(wide).astype(np.float32) * scaling
    return np.ascontiguousarray(cos), np.ascontiguousarray(sin)


def rope_from_hf_config(cfg: dict) -> dict:
    """The canonical rope dict for a Llama-family config.json dict.

    Reads transformers 5's ``rope_parameters`` ({"rope_type", "rope_theta", "factor", ...}) and the
    older top-level ``rope_theta`` + ``rope_scaling`` ({"type" or "rope_type", "factor", ...}), with
    transformers' precedence: a non-empty ``rope_scaling`` wins over ``rope_parameters``; theta comes
    from the parameters, else the top-level ``rope_theta``, else 10000; llama3's
    ``original_max_position_embeddings`` from a top-level key of that name, else the parameters,
    else ``max_position_embeddings``.

    Raises ValueError for rope types other than default / linear / llama3 ("dynamic" rescales with
    the sequence length, "yarn" and "longrope" need extra attention scaling and per-frequency
    factors; none are implemented), for per-layer-type (nested) rope parameters, and for a
    ``partial_rotary_factor`` other than 1 on linear / llama3 (transformers' Llama cannot run it
    either; its default rope ignores the factor, and so do we).
    """
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"rope parameters must be a dict, got {type(params).__name__}")
    if any(isinstance(value, dict) for value in params.values()):
        raise ValueError("per-layer-type rope parameters are not supported")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported rope type {kind!r}: only {', '.join(SUPPORTED_TYPES)} are implemented")
    theta = params.get("rope_theta")
    if theta is None:
        theta = cfg.get("rope_theta")
    rope: dict = {"type": kind, "theta": float(10000.0 if theta is None else theta)}
    if kind != "default":
        partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
        if partial is not None and float(partial) != 1.0:
            raise ValueError(f"partial_rotary_factor={partial} is not supported with rope type {kind!r}")
    try:
        if kind in ("linear", "llama3"):
            rope["factor"] = float(params["factor"])
        if kind == "llama3":
            rope["low_freq_factor"] = float(params["low_freq_factor"])
            rope["high_freq_factor"] = float(params["high_freq_factor"])
            original = cfg.get("original_max_position_embeddings")
            if original is None:
                original = params.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
            if original is None:
                raise KeyError("original_max_position_embeddings")
            rope["original_max_position_embeddings"] = int(original)
    except KeyError as err:
        raise ValueError(f"rope type {kind!r} needs {err.args[0]!r} in the config") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad rope parameter in the config: {err}") from None
    rope["attention_scaling"] = 1.0
    return rope


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def apply_rope(x, positions, cos, sin):
    # Preconditions (unchecked): x float32 [N, heads, d], d even, rotated in place; positions int32
    # [N] with 0 <= positions[r] < cos.shape[0]; cos, sin float32 [max_positions, d // 2] from
    # rope_tables. Any strides give correct results, but only C-contiguous rows vectorise.
    n_rows, heads, d = x.shape
    if n_rows * heads * d < PARALLEL_MIN_WORK:
        for r in range(n_rows):
            _rotate_row(x, r, positions[r], cos, sin)
    else:
        for r in prange(n_rows):
            _rotate_row(x, r, positions[r], cos, sin)


@njit(cache=True, nogil=True, error_model="numpy")
def _rotate_row(x, r, p, cos, sin):
    # No fastmath: without FMA contraction each product rounds on its own as in transformers'
    # q * cos + rotate_half(q) * sin, so the result matches it bit for bit given the same tables.
    heads, d = x.shape[1], x.shape[2]
    half = d // 2
    for h in range(heads):
        for i in range(half):
            c = cos[p, i]
            s = sin[p, i]
            lo = x[r, h, i]
            hi = x[r, h, i + half]
            x[r, h, i] = lo * c - hi * s
            x[r, h, i + half] = hi * c + lo * s


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
