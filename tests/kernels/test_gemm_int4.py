"""int4 GEMM (kernels/gemm_int4.py): every path bit-identical to a numpy reference of the scheme."""

from __future__ import annotations

import numpy as np
import pytest

from tinybert.kernels import gemm_int4
from tinybert.kernels.gemm_int4 import GROUP, Int4Weight, linear_int4, pack_codes


def _row_scale_centre(row: np.ndarray) -> tuple[np.float32, np.float32]:
    """quant.py's 8-bit row: centred on the midpoint of [min, max], scale max |x - c| / 127 (1 for a flat row)."""
    if not np.isfinite(row).all():
        return np.float32(np.nan), np.float32(0)
    lo, hi = np.float64(row.min()), np.float64(row.max())
    centre = np.float32((hi + lo) * 0.5)
    half = max(hi - np.float64(centre), np.float64(centre) - lo)
    return (np.float32(half / 127) if half > 0 else np.float32(1)), centre


def reference(x: np.ndarray, q: np.ndarray, scales: np.ndarray, mins: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The scheme of gemm_int4's docstring in numpy: codes q uint8 [N, K], scales / offsets float16 [N, G]."""
    m_rows, k_dim = x.shape
    n_dim, g_dim = scales.shape
    kp = g_dim * GROUP
    qp = np.zeros((n_dim, kp), dtype=np.int64)
    qp[:, :k_dim] = q
    s32, m32 = scales.astype(np.float32), mins.astype(np.float32)
    w = (s32.repeat(GROUP, 1)[:, :k_dim].astype(np.float64) * q - m32.repeat(GROUP, 1)[:, :k_dim])
    wsum = w.sum(axis=1).astype(np.float32)
    out = np.empty((m_rows, n_dim), dtype=np.float32)
    for m in range(m_rows):
        xs, c = _row_scale_centre(x[m])
        xq = np.zeros(kp, dtype=np.int64)
        if not np.isnan(xs):
            xq[:k_dim] = np.rint((x[m] - c) * (np.float32(1) / xs)).astype(np.int64)
        d = (qp * xq).reshape(n_dim, g_dim, GROUP).sum(axis=2).astype(np.float32)   # exact: |D| < 2**24
        gs = xq.reshape(g_dim, GROUP).sum(axis=1).astype(np.float32)
        acc = np.zeros(n_dim, dtype=np.float32)
        for g in range(g_dim):
            acc = acc + (s32[:, g] * d[:, g] - m32[:, g] * gs[g])
        y = acc * xs + bias
        out[m] = y + c * wsum
    return out


def _case(rng, m_rows: int, n_dim: int, k_dim: int, extreme: bool = False):
    g = -(-k_dim // GROUP)
    q = rng.integers(0, 16, (n_dim, k_dim)).astype(np.uint8)
    scales = rng.uniform(1e-3, 0.05, (n_dim, g)).astype(np.float16)
    mins = rng.uniform(-0.4, 0.4, (n_dim, g)).astype(np.float16)
    x = rng.standard_normal((m_rows, k_dim)).astype(np.float32) * 3
    if extreme:
        q[:, ::3] = 15
        q[:, 1::3] = 0
        scales[:, ::2] = np.float16(60000)       # near float16's largest
        mins[:, 1::2] = np.float16(-60000)
        x[:, ::5] = 1e30
        x[:, 1::5] = -1e30
        x[0, :] = 0                              # a flat row
    bias = rng.standard_normal(n_dim).astype(np.float32)
    return x, q, scales, mins, bias


SHAPES = [(1, 1, 1), (1, 16, 32), (1, 17, 33), (1, 48, 896), (1, 33, 100), (3, 5, 31), (7, 40, 64), (4, 20, 64),
          (8, 33, 96), (16, 31, 257), (37, 64, 160), (2, 130, 4864 // 8)]


@pytest.mark.parametrize("path", ["portable", "vnni", "vnni-emulated", None])
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_identical_to_numpy(shape, path):
    rng = np.random.default_rng(hash(shape) % 2**32)
    x, q, scales, mins, bias = _case(rng, *shape)
    weight = Int4Weight(pack_codes(q), scales, mins, shape[2])
    got = linear_int4(x, weight, bias, path)
    np.testing.assert_array_equal(got, reference(x, q, scales, mins, bias))


@pytest.mark.parametrize("path", ["portable", "vnni", "vnni-emulated"])
def test_extreme_values(path):
    rng = np.random.default_rng(5)
    x, q, scales, mins, bias = _case(rng, 4, 35, 97, extreme=True)
    weight = Int4Weight(pack_codes(q), scales, mins, 97)
    with np.errstate(over="ignore", invalid="ignore"):
        want = reference(x, q, scales, mins, bias)
    got = linear_int4(x, weight, bias, path)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", ["portable", "vnni", "vnni-emulated"])
def test_non_finite_rows_give_nan(path):
    rng = np.random.default_rng(6)
    x, q, scales, mins, bias = _case(rng, 3, 20, 64)
    x[1, 7] = np.nan
    x[2, 3] = np.inf
    got = linear_int4(x, Int4Weight(pack_codes(q), scales, mins, 64), bias, path)
    assert np.isfinite(got[0]).all() and np.isnan(got[1:]).all()


def test_close_to_float():
    """Not a bit test: the scheme's error is the 8-bit activations' alone (weights taken as dequantised)."""
    rng = np.random.default_rng(7)
    x, q, scales, mins, bias = _case(rng, 5, 64, 200)
    codes = pack_codes(q)
    want = x @ gemm_int4.dequantize(codes, scales, mins, 200).T + bias
    got = linear_int4(x, Int4Weight(codes, scales, mins, 200), bias)
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


def test_codes_round_trip_and_checks():
    rng = np.random.default_rng(8)
    q = rng.integers(0, 16, (5, 45)).astype(np.uint8)
    codes = pack_codes(q)
    assert codes.shape == (5, 32)
    assert codes[0, 0] == q[0, 0] | (q[0, 16] << 4)     # low nibble k, high nibble k + 16
    np.testing.assert_array_equal(gemm_int4.unpack_codes(codes, 45), q)
    s = np.ones((5, 2), dtype=np.float16)
    with pytest.raises(ValueError):
        Int4Weight(codes, s, s, 70)          # 70 needs 3 groups
    with pytest.raises(ValueError):
        Int4Weight(codes.astype(np.int8), s, s, 45)
    with pytest.raises(ValueError):
        Int4Weight(codes, s[:, :1], s, 45)
    with pytest.raises(ValueError):
        linear_int4(np.zeros((2, 44), np.float32), Int4Weight(codes, s, s, 45), np.zeros(5, np.float32))
    with pytest.raises(ValueError):
        linear_int4(np.zeros((2, 45), np.float32), Int4Weight(codes, s, s, 45), np.zeros(5, np.float32), "avx9")


def test_vnni_layout_round_trip():
    """pack_vnni / unpack_vnni are inverses (a loaded weight keeps one layout and derives the other)."""
    rng = np.random.default_rng(9)
    x, q, scales, mins, bias = _case(rng, 2, 37, 96)
    codes = pack_codes(q)
    panels = gemm_int4.pack_vnni(codes, scales, mins)
    assert panels.shape == (3, 3, gemm_int4.BLOCK_BYTES) and panels.ctypes.data % 64 == 0
    back = gemm_int4.unpack_vnni(panels, 37)
    np.testing.assert_array_equal(back[0], codes)
    np.testing.assert_array_equal(back[1], scales.astype(np.float32))
    np.testing.assert_array_equal(back[2], mins.astype(np.float32))
    _, q, scales, mins, _ = _case(rng, 1, 48, 96)
    codes = pack_codes(q)
    weight = Int4Weight(codes, scales, mins, 96)
    # one layout: 5 bits per weight in the VNNI panels, 6 in the portable arrays (float32 scales), not both
    assert weight.nbytes == (1.25 if gemm_int4._vnni_native() else 1.5) * codes.nbytes
