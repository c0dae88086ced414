"""Numpy oracles of the int8 linear layers: what every kernel path must reproduce, bit for bit.

They live with the tests, not beside the kernels: production never runs them, and a reference
written in numpy (int64 dot products, float32 epilogue spelled out) shares no code, and so no bug,
with the Numba kernels it checks.  (tinybert/kernels/gemm.py used to carry a scalar Numba "portable"
micro-kernel and a raw-weight Numba ``qlinear`` for this; both were compiled Numba code that the
tests compared Numba code with.)  Import as ``from oracles import ...``: pytest puts tests/ on the
path, as it does for ``conftest``.

The scheme is tinybert/kernels/quant.py's: per-row activations, 12-bit symmetric or 8-bit centred on
the row's midpoint, exact integer sums, then

    y = float32(dot) * xs[m] * ws[n] + b[n]      (left to right in float32)
    y += xc[m] * wsum[n]                           (8-bit rows; wsum = weight_sums)

and a row holding a NaN or an inf gives a NaN row.
"""

from __future__ import annotations

import numpy as np

ACT_QMAX = 2047     # tinybert.kernels.quant.ACT_QMAX, restated: the oracle does not import the kernels
ACT8_QMAX = 127


def quantize_ref(x: np.ndarray, qmax: int = ACT_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row quantisation of finite rows: (xq int16, xs float32), xs = max|x| / qmax (1 for a
    zero row), xq = rint(x * float32(1 / xs)) (half to even)."""
    amax = np.abs(x).max(axis=1)
    scale = np.where(amax > 0, amax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    inv = (np.float32(1.0) / scale).astype(np.float32)
    xq = np.rint(x * inv[:, None]).astype(np.int16)
    return xq, scale


def quantize_centred_ref(x: np.ndarray, qmax: int = ACT8_QMAX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit rows of finite values: x ~ c + xs * xq, c the midpoint of the row's range (xq, xs, c)."""
    lo, hi = x.min(axis=1).astype(np.float64), x.max(axis=1).astype(np.float64)
    c = ((hi + lo) * 0.5).astype(np.float32)
    half = np.maximum(hi - c, c - lo)
    scale = np.where(half > 0, (half / qmax).astype(np.float32), np.float32(1.0)).astype(np.float32)
    inv = (np.float32(1.0) / scale).astype(np.float32)
    xq = np.rint((x - c[:, None]) * inv[:, None]).astype(np.int16)
    return xq, scale, c


def dot_ref(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """The exact integer dot products xq @ wq.T, int64 [M, N]."""
    return xq.astype(np.int64) @ wq.astype(np.int64).T


def weight_sums_ref(wq: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """ws[n] * sum_k wq[n, k] as float32."""
    return wq.astype(np.int64).sum(axis=1).astype(np.float32) * ws


def epilogue_ref(dot: np.ndarray, xs: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                 xc: np.ndarray | None = None, wsum: np.ndarray | None = None) -> np.ndarray:
    """The shared float32 epilogue of the exact sums ``dot`` (the centre term when ``xc`` is given)."""
    out = dot.astype(np.float64).astype(np.float32) * xs[:, None] * ws[None, :] + bias[None, :]
    if xc is not None:
        out = out + xc[:, None] * wsum[None, :]
    return out


def qlinear_ref(xq: np.ndarray, xs: np.ndarray, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """out[m, n] = float32(xq[m] . wq[n]) * xs[m] * ws[n] + bias[n] for given integers (xq int16, wq int8)."""
    return epilogue_ref(dot_ref(xq, wq), xs, ws, bias)


def linear_int8_ref(x: np.ndarray, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray, act_bits: int = 12) -> np.ndarray:
    """What gemm.linear_int8(x, pack_weight(wq), ws, bias, act_bits=act_bits) returns on every path:
    x float32 [M, K], wq raw int8 [N, K]."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    safe = np.where(finite[:, None], x, np.float32(0))
    if act_bits == 12:
        xq, xs = quantize_ref(safe, ACT_QMAX)
        out = epilogue_ref(dot_ref(xq, wq), xs, ws, bias)
    elif act_bits == 8:
        xq, xs, xc = quantize_centred_ref(safe, ACT8_QMAX)
        out = epilogue_ref(dot_ref(xq, wq), xs, ws, bias, xc, weight_sums_ref(wq, ws))
    else:
        raise ValueError(f"activation bits must be 8 or 12, got {act_bits!r}")
    out[~finite] = np.nan
    return out
