"""int4 linear layers: group-wise 4-bit weights, 8-bit activations, exact integer group dots.

Weights (format.py, "int4 weights"): along K in groups of GROUP = 32, unsigned 4-bit codes
q in [0, 15] with one float16 scale s and one float16 offset m per (output channel, group):

    W[n, k] = s[n, g] * q[n, k] - m[n, g],     g = k // 32

stored two codes per byte: byte 16 g + i of row n holds q[n, 32 g + i] in its low nibble and
q[n, 32 g + 16 + i] in its high nibble (llama.cpp's Q4_0 order, so its blocks repack byte for byte).

Activations: each row quantised to 8 bits exactly as the int8 path's 8-bit rows (quant.py:
row_scale_centre, centred on the row's midpoint, ``xq = rint((x - c) * (1 / xs))``, |xq| <= 127).
Then, per group, two exact integers

    D[m, n, g] = sum_{k in g} q[n, k] * xq[m, k]        (|D| <= 15 * 127 * 32 < 2**24)
    S[m, g]    = sum_{k in g} xq[m, k]                   (once per row)

and one float32 epilogue, evaluated left to right in float32 without fused multiply-adds:

    acc = 0;  for g in order:  acc = acc + (s[n, g] * D - m[n, g] * S)
    y[m, n] = acc * xs[m] + b[n];   y[m, n] += c[m] * wsum[n]

with wsum[n] = sum_k W[n, k] over the real k (float32 of a float64 sum, computed at load): the part
of x @ W.T that centring took out.  D and S are below 2**24, so float32(D) and float32(S) are exact,
and every path that computes the same integers gives bit-identical outputs.  K not a multiple of 32
is padded with zero codes and zero activations (the padding adds nothing to D or S).

Paths: ``portable`` (Numba, any CPU; prefill runs here for now) and ``vnni`` (one row, AVX-512
VNNI vpdpbusd on the unsigned codes, emulated in generic IR on other CPUs; see gemm_int4_vnni.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .jitcache import fast_cache_loading
from .quant import ACT8_QMAX, row_scale_centre

GROUP = 32             # weights per (channel, group) scale and offset
GROUP_BYTES = GROUP // 2
MAX_K = 1 << 20        # a bound far above any real width; keeps every index in int64 trivially


class Int4Weight:
    """One int4 layer's weight as the kernels read it: codes uint8 [N, 16 G], scales and offsets as float32
    [N, G], wsum float32 [N], and the true K (the codes are padded to 32 G)."""

    __slots__ = ("codes", "scales", "mins", "wsum", "k_dim", "vnni")

    def __init__(self, codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> None:
        check_int4(codes, scales, mins, k_dim)
        self.codes = np.ascontiguousarray(codes)
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        self.mins = np.ascontiguousarray(mins, dtype=np.float32)
        self.k_dim = k_dim
        self.wsum = weight_sums_int4(self.codes, self.scales, self.mins, k_dim)
        self.vnni = None            # the panel layout of gemm_int4_vnni, packed on first use

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes + self.mins.nbytes


def groups(k_dim: int) -> int:
    """Groups of GROUP along a K-wide row (the last one padded)."""
    return -(-k_dim // GROUP)


def check_int4(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> None:
    """codes uint8 [N, 16 G], scales and offsets float16 or float32 [N, G], G = ceil(k_dim / 32); ValueError else."""
    if not 1 <= k_dim <= MAX_K:
        raise ValueError(f"K = {k_dim} is outside 1 .. {MAX_K}")
    g = groups(k_dim)
    if not (isinstance(codes, np.ndarray) and codes.dtype == np.uint8 and codes.ndim == 2
            and codes.shape[1] == g * GROUP_BYTES and codes.shape[0] >= 1):
        raise ValueError(f"int4 codes must be uint8 [N, {g * GROUP_BYTES}], got "
                         f"{getattr(codes, 'dtype', type(codes))}{getattr(codes, 'shape', '')}")
    for name, a in (("scales", scales), ("offsets", mins)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float16, np.float32) and a.shape == (codes.shape[0], g)):
            raise ValueError(f"int4 {name} must be float16 or float32 [{codes.shape[0]}, {g}], got "
                             f"{getattr(a, 'dtype', type(a))}{getattr(a, 'shape', '')}")


def unpack_codes(codes: np.ndarray, k_dim: int) -> np.ndarray:
    """The codes [N, 16 G] as uint8 [N, k_dim] (numpy; for the converter and tests)."""
    n, g = codes.shape[0], codes.shape[1] // GROUP_BYTES
    b = codes.reshape(n, g, GROUP_BYTES)
    return np.concatenate([b & 0x0F, b >> 4], axis=2).reshape(n, g * GROUP)[:, :k_dim]


def pack_codes(q: np.ndarray) -> np.ndarray:
    """uint8 codes [N, K] in 0..15 → the two-per-byte layout [N, 16 G] (zero codes pad K to 32 G)."""
    n, k = q.shape
    g = groups(k)
    full = np.zeros((n, g * GROUP), dtype=np.uint8)
    full[:, :k] = q
    full = full.reshape(n, g, 2, GROUP_BYTES)
    return (full[:, :, 0] | (full[:, :, 1] << 4)).reshape(n, g * GROUP_BYTES)


def dequantize(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> np.ndarray:
    """W = s * q - m as float32 [N, k_dim] (the float products of the format's definition)."""
    q = unpack_codes(codes, k_dim).astype(np.float32)
    s = np.repeat(scales.astype(np.float32), GROUP, axis=1)[:, :k_dim]
    m = np.repeat(mins.astype(np.float32), GROUP, axis=1)[:, :k_dim]
    return s * q - m


def weight_sums_int4(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> np.ndarray:
    """wsum[n] = sum over the real k of s q - m: float64 sums, rounded once to float32."""
    g = groups(k_dim)
    q = unpack_codes(codes, g * GROUP).astype(np.int64).reshape(codes.shape[0], g, GROUP)
    counts = np.full(g, GROUP, dtype=np.float64)
    counts[-1] = k_dim - (g - 1) * GROUP
    qsum = q[:, :, :].sum(axis=2).astype(np.float64)          # padding codes are zero
    with np.errstate(over="ignore", invalid="ignore"):
        total = (scales.astype(np.float64) * qsum - mins.astype(np.float64) * counts).sum(axis=1)
    return total.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Activations: 8-bit rows, centred, with their group sums
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_row(x, m, xq, xs, xc, gsum):
    qmax = np.float32(ACT8_QMAX)
    scale, centre = row_scale_centre(x, m, qmax)
    xs[m] = scale
    xc[m] = centre
    k_dim = x.shape[1]
    row, q = x[m], xq[m]
    if np.isnan(scale):          # non-finite row: zeros, and the NaN scale poisons the output
        q[:] = 0
        gsum[m, :] = 0
        return
    inv = np.float32(1.0) / scale
    for k in range(k_dim):
        q[k] = np.int8(np.rint((row[k] - centre) * inv))
    q[k_dim:] = 0
    for g in range(gsum.shape[1]):
        s = np.int32(0)
        for i in range(GROUP):
            s += np.int32(q[g * GROUP + i])
        gsum[m, g] = s


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_rows(x, xq, xs, xc, gsum):
    for m in prange(x.shape[0]):
        _quantize_row(x, m, xq, xs, xc, gsum)


def quantize_rows(x: np.ndarray, k_pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xq int8 [M, k_pad], xs f32 [M], xc f32 [M], gsum int32 [M, k_pad / 32]) of float32 x [M, K]."""
    m_rows = x.shape[0]
    xq = np.zeros((m_rows, k_pad), dtype=np.int8)
    xs = np.empty(m_rows, dtype=np.float32)
    xc = np.empty(m_rows, dtype=np.float32)
    gsum = np.zeros((m_rows, k_pad // GROUP), dtype=np.int32)
    if m_rows:
        _quantize_rows(x, xq, xs, xc, gsum)
    return xq, xs, xc, gsum


# ----------------------------------------------------------------------------------------------
# Portable GEMM (any CPU; any M)
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def finish_group(acc, s, d, mn, gs):
    """One group's term of the epilogue, in the order every path uses: acc + (s * D - m * S)."""
    return acc + (s * np.float32(d) - mn * np.float32(gs))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def finish_row(acc, xs, bias, xc, wsum):
    """The epilogue's end: (acc * xs + b) + c * wsum, in float32."""
    y = acc * xs + bias
    return y + xc * wsum


BLOCK_N = 16   # output channels per parallel task


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemm_portable(xq, xs, xc, gsum, codes, scales, mins, bias, wsum, out):
    m_rows, n_dim = out.shape
    n_groups = scales.shape[1]
    kp = n_groups * GROUP
    for task in prange((n_dim + BLOCK_N - 1) // BLOCK_N):
        w = np.empty(kp, dtype=np.int32)
        d = np.empty(n_groups, dtype=np.int32)
        for n in range(task * BLOCK_N, min(n_dim, (task + 1) * BLOCK_N)):
            row = codes[n]
            for b in range(kp // 2):
                g, i = b // GROUP_BYTES, b % GROUP_BYTES
                w[g * GROUP + i] = np.int32(row[b] & np.uint8(15))
                w[g * GROUP + GROUP_BYTES + i] = np.int32(row[b] >> np.uint8(4))
            for m in range(m_rows):
                xr = xq[m]
                for g in range(n_groups):
                    s = np.int32(0)
                    for k in range(g * GROUP, g * GROUP + GROUP):
                        s += w[k] * np.int32(xr[k])
                    d[g] = s
                acc = np.float32(0.0)
                for g in range(n_groups):
                    acc = finish_group(acc, scales[n, g], d[g], mins[n, g], gsum[m, g])
                out[m, n] = finish_row(acc, xs[m], bias[n], xc[m], wsum[n])


def check_bias(bias: np.ndarray, n_dim: int) -> None:
    if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (n_dim,)
            and bias.flags.c_contiguous):
        raise ValueError(f"bias must be contiguous float32 [{n_dim}]")


def linear_int4(x: np.ndarray, weight: Int4Weight, bias: np.ndarray, path: str | None = None) -> np.ndarray:
    """y = x @ W.T + b for float32 x [M, K] and an int4 weight; ``path`` None (the best for M and the CPU),
    "portable" or "vnni" (one row at a time; emulated where the CPU lacks AVX-512 VNNI). Every path gives
    bit-identical results."""
    if x.ndim != 2 or x.shape[1] != weight.k_dim:
        raise ValueError(f"expected input of shape [M, {weight.k_dim}], got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_bias(bias, weight.out_features)
    if path not in (None, "portable", "vnni"):
        raise ValueError(f"unknown int4 path {path!r}")
    kp = weight.scales.shape[1] * GROUP
    out = np.empty((x.shape[0], weight.out_features), dtype=np.float32)
    if x.shape[0] == 0:
        return out
    if path == "vnni" or (path is None and x.shape[0] == 1 and _vnni_native()):
        return _linear_vnni(x, weight, bias, out)
    xq, xs, xc, gsum = quantize_rows(x, kp)
    _gemm_portable(xq, xs, xc, gsum, weight.codes, weight.scales, weight.mins, bias, weight.wsum, out)
    return out


def _vnni_native() -> bool:
    return False


def _linear_vnni(x, weight, bias, out):
    raise NotImplementedError


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
