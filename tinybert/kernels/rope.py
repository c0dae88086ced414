"""Rotary position embeddings (RoPE) as transformers computes them for Llama-family models.

Per head, with half = d/2, a row x at position p is rotated pair-wise, pairing x[i] with x[i+half]
(transformers' ``rotate_half`` convention, not the interleaved x[2i], x[2i+1] of the RoPE paper):

    x[i]      <- x[i] cos(p θ_i) - x[i+half] sin(p θ_i)
    x[i+half] <- x[i+half] cos(p θ_i) + x[i] sin(p θ_i)          for i < half

θ_i ("inverse frequencies") is theta ** (-2i/d), possibly rescaled by the rope type; the tables
are cos/sin(p θ_i) times ``attention_scaling``.

Canonical rope dict (what ``rope_tables`` takes; the converter's convert/rope.py builds it from a
Hugging Face config, whose key names the runtime does not know):

    {"type": "default", "theta": float, "attention_scaling": float}
    {"type": "linear",  "theta": float, "factor": float, "attention_scaling": float}
    {"type": "llama3",  "theta": float, "factor": float, "low_freq_factor": float,
     "high_freq_factor": float, "original_max_position_embeddings": int, "attention_scaling": float}
    {"type": "longrope", "theta": float, "factors": [float] * (d/2), "long_factors": [float] * (d/2),
     "original_max_position_embeddings": int, "attention_scaling": float}

"attention_scaling" is optional (default 1.0); transformers uses 1.0 for the first three types. longrope
(Phi-3; "su" in older configs) divides θ_i by factors[i]. transformers' longrope (modeling_rope_utils.py)
takes its short factors while a forward's positions stay below original_max_position_embeddings (L) and its
long ones for every position of a forward that reaches L. These tables are built from "factors"; the long
tables are the same dict with "factors" replaced by "long_factors" (tinybert/layers/attention.py
RotaryTables builds both and picks per sequence). "long_factors" is optional: files of earlier converters
lack it, and their context is capped at L (config.py checks max_positions against it). The attention_scaling
(√(1 + ln s / ln L) for s = context / L) is the same for both sets, at every length. Other keys are ignored
here; a file's rope dict is checked before (tinybert/config.py: exactly these keys, positive values,
low_freq_factor < high_freq_factor).

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

SUPPORTED_TYPES = ("default", "linear", "llama3", "longrope")
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
    if kind == "longrope":
        # transformers: 1.0 / (ext_factors * base ** (arange / d)), the product in float32
        inv = _f32(1.0) / (np.asarray(rope["factors"], dtype=np.float32) * power)
    elif kind == "linear":
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
