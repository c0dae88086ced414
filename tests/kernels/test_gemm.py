"""Correctness tests for the linear-layer kernels: tinybert/kernels/gemm.py (dispatch), gemm_pairs.py,
gemm_vnni.py, gemm_fp32.py, quant.py and cpu.py (no timing).

The integer part of every int8 path is exact, so each path is checked twice:
  * allclose (rtol 1e-6) against y = xs * ws * dot + b computed in float64 from int64 dot products;
  * bit-exact equality with the numpy oracles of tests/oracles.py (the shared float32 epilogue
    float32(dot) * xs[m] * ws[n] + b[n] spelled out), and between all paths.
"""

import numpy as np
import pytest
from numba import njit
from oracles import dot_ref, epilogue_ref, linear_int8_ref, qlinear_ref, quantize_centred_ref, quantize_ref

from tinybert.kernels import cpu, gemm_fp32, gemm_pairs
from tinybert.kernels import gemm as g

PATHS = ["simd"]       # the pairs kernel: one vector micro-kernel (AVX2 intrinsic or generic IR) on every CPU


@njit(nogil=True, error_model="numpy")
def quantize_rows(x, xq, xs):
    """The pairs path's row quantiser on its own: xq[m] = rint(x[m] / xs[m]), 12-bit rows."""
    xc = np.empty(x.shape[0], dtype=np.float32)
    for m in range(x.shape[0]):
        gemm_pairs._quantize_row_into(x, m, xs, xc, xq[m], np.float32(g.ACT_QMAX))


def check_out(out, xq, xs, wq, ws, bias, xc=None):
    """out against the exact sums; xc: the row centres of 8-bit rows (their term uses the weight sums)."""
    dot = dot_ref(xq, wq)
    wsum = wq.astype(np.int64).sum(axis=1).astype(np.float32) * ws
    centre = np.zeros((len(xs), len(ws))) if xc is None else xc[:, None].astype(np.float64) * wsum[None, :]
    expected = dot.astype(np.float64) * xs[:, None].astype(np.float64) \
        * ws[None, :].astype(np.float64) + bias[None, :].astype(np.float64) + centre
    # rtol 1e-6 of the terms being summed (a bias can cancel the product to ~0).
    scale = np.abs(dot * xs[:, None].astype(np.float64) * ws[None, :]) + np.abs(bias)[None, :] + np.abs(centre)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.all(np.abs(out - expected) <= 1e-6 * scale + 1e-30)
    assert np.allclose(out, expected, rtol=1e-6, atol=1e-6 * scale.max())
    # The shared epilogue, emulated in float32: every path must match it bit for bit.
    np.testing.assert_array_equal(out, epilogue_ref(dot, xs, ws, bias, xc, wsum))


def make_case(rng, m, n, k, extreme=None):
    if extreme is None:
        xq = rng.integers(-g.ACT_QMAX, g.ACT_QMAX + 1, (m, k)).astype(np.int16)
        wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    elif extreme == "same_sign":
        s = np.where(rng.random(m) < 0.5, -1, 1)[:, None]
        xq = np.broadcast_to(s * g.ACT_QMAX, (m, k)).astype(np.int16)
        wq = np.full((n, k), 127, np.int8)
        wq[::2] = -127
    else:  # random signs, full magnitude
        xq = (rng.choice([-1, 1], (m, k)) * g.ACT_QMAX).astype(np.int16)
        wq = (rng.choice([-1, 1], (n, k)) * 127).astype(np.int8)
    xs = (rng.random(m) * 1e-2 + 1e-4).astype(np.float32)
    ws = (rng.random(n) * 1e-2 + 1e-4).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return xq, xs, wq, ws, bias


SHAPES = [
    (1, 1, 1), (1, 17, 5), (1, 384, 384), (2, 16, 2), (3, 15, 3), (5, 31, 33), (6, 16, 64),
    (7, 33, 255), (13, 40, 770), (16, 384, 384), (97, 50, 1031), (200, 19, 64),
    (100, 70, 513),                   # > MC rows: several chunks, K crosses a KC boundary
    (6, 16, 8192), (5, 20, 8193),     # exactly one int32 block / one k past it
    (7, 18, 2 * 8192 + 3),            # three blocks, odd K
]


# ------------------------------------------------------------------------------------------------
# quantize_rows
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,k", [(1, 1), (3, 7), (16, 384), (130, 770)])
def test_quantize_rows_matches_numpy(m, k):
    rng = np.random.default_rng(m * 1000 + k)
    x = (rng.standard_normal((m, k)) * rng.random((m, 1)) * 10).astype(np.float32)
    x[0, 0] = 1e4 if k > 1 else x[0, 0]         # an outlier in one row
    if m > 2:
        x[2] = 0.0                                # all-zero row -> scale 1, xq 0
    xq = np.empty((m, k), np.int16)
    xs = np.empty(m, np.float32)
    quantize_rows(x, xq, xs)
    xq_ref, xs_ref = quantize_ref(x)
    np.testing.assert_array_equal(xs, xs_ref)
    np.testing.assert_array_equal(xq, xq_ref)
    assert np.abs(xq).max() <= g.ACT_QMAX
    if m > 2:
        assert xs[2] == 1.0 and not xq[2].any()


def test_quantize_rows_half_even():
    # x / scale lands exactly on .5: np.rint rounds half to even.
    x = np.array([[2047.0, 0.5, 1.5, 2.5, -0.5, -1.5]], np.float32)
    xq = np.empty_like(x, dtype=np.int16)
    xs = np.empty(1, np.float32)
    quantize_rows(x, xq, xs)
    assert xs[0] == 1.0
    np.testing.assert_array_equal(xq[0], [2047, 0, 2, 2, 0, -2])


# ------------------------------------------------------------------------------------------------
# packing
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k", [(1, 1), (16, 2), (17, 5), (40, 770)])
def test_pack_weight_layout(n, k):
    rng = np.random.default_rng(n + k)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    wp = g.pack_weight(wq, "pairs")
    nr = g.NR
    # 1 byte per weight: the packed panels stay int8 (sign-extended inside the micro-kernel).
    assert wp.dtype == np.int8 and wp.flags.c_contiguous
    assert wp.shape == (-(-n // nr), -(-k // 2), 2 * nr)
    assert wp.nbytes == wp.shape[0] * nr * 2 * wp.shape[1]
    # Raw and packed weights are both int8: told apart by ndim.
    assert g.is_packed(wp) and not g.is_packed(wq)
    assert not g.is_packed(wp.astype(np.int16)) and not g.is_packed(wp.reshape(wp.shape[0], -1))
    for p, kk, j, t in [(0, 0, 0, 0), (wp.shape[0] - 1, wp.shape[1] - 1, nr - 1, 1),
                        ((n - 1) // nr, (k - 1) // 2, (n - 1) % nr, (k - 1) % 2)]:
        row, col = p * nr + j, 2 * kk + t
        want = wq[row, col] if row < n and col < k else 0
        assert wp[p, kk, 2 * j + t] == want
    # Unpacking gives the zero-padded original back.
    unpacked = wp.reshape(wp.shape[0], wp.shape[1], nr, 2).transpose(0, 2, 1, 3)
    unpacked = unpacked.reshape(wp.shape[0] * nr, 2 * wp.shape[1])
    np.testing.assert_array_equal(unpacked[:n, :k], wq)
    assert not unpacked[n:].any() and not unpacked[:, k:].any()


def test_pack_weight_rejects_bad_input():
    with pytest.raises(TypeError):
        g.pack_weight(np.zeros((4, 4), np.int16))
    with pytest.raises(TypeError):
        g.pack_weight(np.zeros((2, 4, 4), np.int8))
    wp = g.pack_weight(np.zeros((20, 10), np.int8), "pairs")
    # An int16 array in the old widened layout is not accepted as packed.
    with pytest.raises(TypeError):
        g.qlinear_packed(np.zeros((2, 10), np.int16), np.ones(2, np.float32), wp.astype(np.int16),
                         np.ones(20, np.float32), np.zeros(20, np.float32),
                         np.empty((2, 20), np.float32))
    with pytest.raises(TypeError):
        g.linear_int8(np.zeros((2, 10), np.float32), wp.astype(np.int16), np.ones(20, np.float32),
                      np.zeros(20, np.float32))
    with pytest.raises(ValueError):
        g.qlinear_packed(np.zeros((2, 12), np.int16), np.ones(2, np.float32), wp,
                         np.ones(20, np.float32), np.zeros(20, np.float32),
                         np.empty((2, 20), np.float32))
    with pytest.raises(ValueError):
        g.linear_int8(np.zeros((2, 10), np.float32), wp, np.ones(20, np.float32),
                      np.zeros(20, np.float32), path="avx512")


# ------------------------------------------------------------------------------------------------
# GEMM paths
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_qlinear_packed(m, n, k, path):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    xq, xs, wq, ws, bias = make_case(rng, m, n, k)
    out = np.full((m, n), np.nan, np.float32)
    g.qlinear_packed(xq, xs, g.pack_weight(wq, "pairs"), ws, bias, out, path=path)
    check_out(out, xq, xs, wq, ws, bias)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("extreme", ["same_sign", "random_sign"])
@pytest.mark.parametrize("m,n,k", [(7, 19, 8192), (6, 16, 8193), (3, 17, 3 * 8192 + 1),
                                   (13, 40, 770),
                                   (3, 1117, 8193)])   # many panels, the last partial
def test_extreme_values(m, n, k, extreme, path):
    # |sum| reaches 2047 * 127 * 8192 = 2_129_731_584, just inside int32, per ACC_BLOCK block.
    rng = np.random.default_rng(k)
    xq, xs, wq, ws, bias = make_case(rng, m, n, k, extreme=extreme)
    out = np.empty((m, n), np.float32)
    g.qlinear_packed(xq, xs, g.pack_weight(wq, "pairs"), ws, bias, out, path=path)
    check_out(out, xq, xs, wq, ws, bias)
    np.testing.assert_array_equal(out, qlinear_ref(xq, xs, wq, ws, bias))


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("path", PATHS + [None])
@pytest.mark.parametrize("m,n,k", [(1, 384, 384), (3, 15, 3), (16, 40, 770), (97, 50, 1031),
                                   (5, 20, 8193)])
def test_linear_int8(m, n, k, path, packed):
    rng = np.random.default_rng(m + n + k)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    x[m // 2] = 0.0                                   # an all-zero row gives exactly the bias
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws = (rng.random(n) * 1e-2).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = g.linear_int8(x, g.pack_weight(wq, "pairs") if packed else wq, ws, bias, path=path)
    xq, xs = quantize_ref(x)
    check_out(y, xq, xs, wq, ws, bias)
    np.testing.assert_array_equal(y[m // 2], bias)
    # Same answer as the unfused reference pipeline.
    xq2 = np.empty((m, k), np.int16)
    xs2 = np.empty(m, np.float32)
    quantize_rows(x, xq2, xs2)
    np.testing.assert_array_equal(y, qlinear_ref(xq2, xs2, wq, ws, bias))
    np.testing.assert_array_equal(y, linear_int8_ref(x, wq, ws, bias))
    # And it approximates the float layer.
    y32 = g.linear_fp32(x, wq.astype(np.float32) * ws[:, None], bias)
    assert np.abs(y - y32).max() <= 1e-3 * (np.abs(y32).max() + 1)


def test_act_bits_must_be_8_or_12():
    with pytest.raises(ValueError, match="8 or 12"):
        g.act_qmax(4)


def test_default_path_is_vector():
    # The vector micro-kernel runs on every CPU (generic LLVM vector IR without AVX2); the scalar
    # reference is numpy now (tests/oracles.py), not a kernel path.
    assert cpu.pairs_path(None) == cpu.pairs_path("simd") == "simd"
    with pytest.raises(ValueError, match="path"):
        cpu.pairs_path("portable")


# ------------------------------------------------------------------------------------------------
# The SIMD micro-kernel in both spellings (x86 intrinsic when available, generic LLVM vectors)
# ------------------------------------------------------------------------------------------------

def _make_runner(mk):
    @njit
    def run(tile, t_off, x, x_off, wp, w_off, kpairs):
        mk(tile, t_off, x, x_off, wp, w_off, kpairs)
    return run


@pytest.mark.parametrize("use_x86", [False, True])
@pytest.mark.parametrize("rows", [1, 4, 6])
def test_microkernel_variants(rows, use_x86):
    if use_x86 and not cpu.HOST_AVX2:
        pytest.skip("target has no AVX2")
    rng = np.random.default_rng(rows)
    run = _make_runner(gemm_pairs._make_simd_microkernel(rows, use_x86))
    k, nr = 38, g.NR
    # Three row tiles of activations; the kernel runs on the second (x_off != 0), whose first
    # `rows` rows it reads.
    xq = rng.integers(-2047, 2048, (3 * g.MR, k)).astype(np.int16)
    xt = gemm_pairs.to_row_tiles(xq)
    assert xt.shape == (3, k * g.MR)
    x, x_off = xt.reshape(-1), xt[0].size
    # Full int8 range, with sign-extension edge cases (-128, -1, 127) in whole rows.
    wq = rng.integers(-128, 128, (2 * nr, k)).astype(np.int8)
    wq[nr], wq[nr + 1], wq[nr + 2] = -128, 127, -1
    wp_full = g.pack_weight(wq, "pairs")
    assert wp_full.dtype == np.int8
    wp = wp_full.reshape(-1)
    wq = wq[nr:]                                      # run on the second panel (w_off != 0)
    w_off = wp_full[0].size
    tile0 = rng.integers(-1000, 1000, 2 * rows * nr).astype(np.int32)
    tile = tile0.copy()
    t_off = nr
    run(tile, t_off, x, x_off, wp, w_off, k // 2)
    xrows = xq[g.MR:g.MR + rows]
    expected = tile0.copy()
    expected[t_off:t_off + rows * nr] += dot_ref(xrows, wq).reshape(-1).astype(np.int32)
    np.testing.assert_array_equal(tile, expected)


def test_to_row_tiles_layout():
    # 7 rows = one full tile and one partial tile whose missing rows are zero.
    xq = np.arange(7 * 4, dtype=np.int16).reshape(7, 4) + 1
    xt = gemm_pairs.to_row_tiles(xq)
    assert xt.shape == (2, 4 * g.MR)
    for m in range(7):
        for k in range(4):
            assert xt[m // g.MR, 2 * (g.MR * (k // 2) + m % g.MR) + k % 2] == xq[m, k]
    assert np.count_nonzero(xt[1]) == 4                # only row 6 lives in the second tile


def test_microkernel_rejects_int16_weights():
    # The IR reads int8 panels: an int16 (old widened layout) array must not type-check.
    from numba.core.errors import TypingError
    run = _make_runner(gemm_pairs._make_simd_microkernel(1, False))
    with pytest.raises(TypingError):
        run(np.zeros(16, np.int32), 0, np.zeros(12, np.int16), 0,
            np.zeros(32, np.int16), 0, 1)


# ------------------------------------------------------------------------------------------------
# fp32 GEMM (Numba micro-kernel on packed panels, no BLAS)
# ------------------------------------------------------------------------------------------------

def check_fp32(y, x, w, bias):
    """y vs float64 x @ w.T + b, with an error bound scaled to fp32 rounding of a K-term sum."""
    k = x.shape[1]
    ref = x.astype(np.float64) @ w.astype(np.float64).T + bias.astype(np.float64)
    mag = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T + np.abs(bias)
    assert y.dtype == np.float32 and y.shape == ref.shape and y.flags.c_contiguous
    # Blocked fp32 summation: error <~ sqrt(K) * eps32 * sum|terms| in practice; 2e-6 * sqrt(K) is
    # ~17 * sqrt(K) ulps of the magnitude, loose for a blocked sum yet far below any indexing bug.
    assert np.all(np.abs(y - ref) <= 2e-6 * np.sqrt(k) * mag + 1e-30)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k) * np.abs(ref).mean())


FP32_SHAPES = [
    (1, 1, 1), (1, 17, 5), (1, 384, 384), (2, 16, 1), (3, 15, 3), (5, 31, 33), (6, 16, 64),
    (7, 33, 255), (13, 40, 770), (16, 384, 384), (97, 50, 1031), (200, 19, 64),
    (100, 70, 513), (193, 48, 1), (16, 1536, 384), (16, 384, 1536),
]


@pytest.mark.parametrize("m,n,k", FP32_SHAPES)
def test_linear_fp32_packed(m, n, k):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    wp = g.pack_weight_fp32(w)
    y = g.linear_fp32(x, wp, bias)
    check_fp32(y, x, w, bias)
    # Raw weights (packed on the fly) give bit-identical results.
    np.testing.assert_array_equal(g.linear_fp32(x, w, bias), y)
    # Rows are independent: each row alone (other micro-tile heights) gives the same values.
    for r in {0, m - 1, m // 2}:
        np.testing.assert_allclose(g.linear_fp32(x[r:r + 1], wp, bias)[0], y[r], rtol=0, atol=0)


@pytest.mark.parametrize("m,n,k", [(1, 384, 384), (16, 20, 770), (130, 40, 3072)])
def test_linear_fp32_inputs(m, n, k):
    rng = np.random.default_rng(n + k)
    x = (rng.standard_normal((m, k)) * 10).astype(np.float32)
    x[m // 2] = 0.0                                   # an all-zero row gives exactly the bias
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    wp = g.pack_weight_fp32(w)
    y = g.linear_fp32(x, wp, bias)
    check_fp32(y, x, w, bias)
    np.testing.assert_array_equal(y[m // 2], bias)
    # Non-contiguous / float64 activations are converted; the result is the same.
    xf = np.asfortranarray(x.astype(np.float64))
    np.testing.assert_array_equal(g.linear_fp32(xf, wp, bias), y)
    # Special values propagate like in BLAS: an inf in row 0 only poisons row 0.
    xi = x.copy()
    xi[0, 0] = np.inf
    yi = g.linear_fp32(xi, wp, bias)
    assert not np.isfinite(yi[0]).all() and np.isfinite(yi[1:]).all()
    np.testing.assert_array_equal(yi[1:], y[1:])
    # Empty batch.
    assert g.linear_fp32(x[:0], wp, bias).shape == (0, n)


@pytest.mark.parametrize("n,k", [(1, 1), (16, 2), (17, 5), (40, 770)])
def test_pack_weight_fp32_layout(n, k):
    rng = np.random.default_rng(n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    wp = g.pack_weight_fp32(w)
    nr = g.NR
    assert wp.dtype == np.float32 and wp.flags.c_contiguous and wp.ctypes.data % 64 == 0
    assert wp.shape == (-(-n // (nr * g.F32_PANELS)) * g.F32_PANELS, k, nr)   # whole groups of panels
    assert g.is_packed_fp32(wp) and not g.is_packed_fp32(w) and not g.is_packed(wp)
    unpacked = wp.transpose(0, 2, 1).reshape(wp.shape[0] * nr, k)
    np.testing.assert_array_equal(unpacked[:n], w)
    assert not unpacked[n:].any()


def test_pack_weight_fp32_rejects_bad_input():
    with pytest.raises(TypeError):
        g.pack_weight_fp32(np.zeros((4, 4), np.float64))
    with pytest.raises(TypeError):
        g.pack_weight_fp32(np.zeros((4, 4), np.int8))
    with pytest.raises(TypeError):
        g.pack_weight_fp32(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(TypeError):
        g.pack_weight_fp32(np.zeros(16, np.float32))
    with pytest.raises(ValueError):
        g.pack_weight_fp32(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError):
        g.pack_weight_fp32(np.zeros((4, 0), np.float32))
    wp = g.pack_weight_fp32(np.zeros((20, 10), np.float32))
    with pytest.raises(ValueError):                  # K mismatch
        g.linear_fp32(np.zeros((2, 12), np.float32), wp, np.zeros(20, np.float32))
    with pytest.raises(ValueError):                  # N (from bias) mismatch: 2 panels vs 3
        g.linear_fp32(np.zeros((2, 10), np.float32), wp, np.zeros(40, np.float32))
    with pytest.raises(ValueError):                  # x not 2-d
        g.linear_fp32(np.zeros(10, np.float32), wp, np.zeros(20, np.float32))


@pytest.mark.parametrize("panels", [1, 2])
@pytest.mark.parametrize("rows", [1, 4, 6])
def test_fp32_microkernel(rows, panels):
    rng = np.random.default_rng(rows * 10 + panels)
    mk = gemm_fp32._make_f32_microkernel(rows, panels)

    @njit
    def run(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate):
        mk(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)

    k, stride, nr = 37, 44, g.NR                      # k not a multiple of the unroll
    width = panels * nr
    ldt = width + 5                                   # tile rows with a gap between them
    x = rng.standard_normal(rows * stride + 10).astype(np.float32)
    w = rng.standard_normal((3 * nr, k)).astype(np.float32)   # three panels; the tile reads 1 or 2
    wp = g.pack_weight_fp32(w).reshape(-1)
    x_off, t_off = 3, nr
    xrows = np.stack([x[x_off + i * stride: x_off + i * stride + k] for i in range(rows)])
    dot = xrows.astype(np.float64) @ w[nr:nr + width].T.astype(np.float64)      # panels 1 (and 2)
    tile0 = rng.standard_normal(t_off + rows * ldt + nr).astype(np.float32)
    inside = np.zeros(tile0.size, bool)
    for i in range(rows):
        inside[t_off + i * ldt:t_off + i * ldt + width] = True
    for accumulate in (0, 1):
        tile = tile0.copy()
        run(tile, t_off, ldt, x, x_off, stride, wp, k * nr, k * nr, k, accumulate)
        expected = tile0.astype(np.float64)
        for i in range(rows):
            seg = slice(t_off + i * ldt, t_off + i * ldt + width)
            expected[seg] = dot[i] + (expected[seg] if accumulate else 0)
        np.testing.assert_allclose(tile, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(tile[~inside], tile0[~inside])    # nothing outside the tile


# ------------------------------------------------------------------------------------------------
# AVX-512 VNNI and AMX kernels on quad-packed weights (gemm_vnni.py): same exact sums
# ------------------------------------------------------------------------------------------------

from tinybert.kernels import gemm_vnni as gv  # noqa: E402

# Native where the CPU has the instructions, else their exact emulation (gemm_vnni docstring). The
# only host that runs neither: an AMX CPU whose OS refused the tile state (or a TINYBERT_INT8_ISA cap).
QUAD_PATHS = [
    pytest.param("vnni", marks=pytest.mark.skipif(not (cpu.VNNI_AVAILABLE or cpu.VNNI_EMULATED),
                                                  reason="VNNI capped by TINYBERT_INT8_ISA")),
    pytest.param("amx", marks=pytest.mark.skipif(not (cpu.AMX_EMULATED or cpu.amx_available()),
                                                 reason="AMX CPU whose OS refused the tile state, or capped")),
]


@pytest.mark.parametrize("n,k", [(1, 1), (16, 2), (17, 5), (33, 64), (40, 770)])
def test_pack_quads_layout(n, k):
    rng = np.random.default_rng(n * 3 + k)
    wq = rng.integers(-128, 128, (n, k)).astype(np.int8)
    wp = gv.pack_quads(wq)
    assert wp.dtype == np.uint8 and wp.flags.c_contiguous and gv.is_quads(wp)
    assert not gv.is_quads(wq) and not g.is_packed(wp)
    assert wp.shape == (-(-n // 32) * 2, -(-k // 64) * 16, 64)
    # Unpack: packed[p, kq, 4j + t] = wq[16p + j, 4kq + t] + 128, and 128 (a zero weight) elsewhere.
    unpacked = wp.reshape(wp.shape[0], wp.shape[1], 16, 4).transpose(0, 2, 1, 3)
    unpacked = unpacked.reshape(wp.shape[0] * 16, wp.shape[1] * 4).astype(np.int16) - 128
    np.testing.assert_array_equal(unpacked[:n, :k], wq)
    assert not unpacked[n:].any() and not unpacked[:, k:].any()


@pytest.mark.parametrize("layout", ["quads", "pairs", "fp32"])
@pytest.mark.parametrize("n,k", [(1, 1), (17, 5), (40, 770), (300, 64)])
def test_packed_rows_are_the_weight_rows(n, k, layout):
    # A tied token table is looked up in the LM head's packed weight: every layout gives the rows back exactly.
    from tinybert.layers.linear import Linear

    rng = np.random.default_rng(n + k)
    ids = rng.integers(0, n, 2 * n + 3).astype(np.int32)
    if layout == "fp32":
        w = rng.standard_normal((n, k)).astype(np.float32)
        np.testing.assert_array_equal(g.packed_rows(g.pack_weight_fp32(w), ids, k), w[ids])
        tensors = {"t.weight": w}
    else:
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        np.testing.assert_array_equal(g.packed_rows(g.pack_weight(w, layout), ids, k), w[ids])
        tensors = {"t.weight": w, "t.weight.scale": rng.random(n).astype(np.float32)}
    layer = Linear(tensors, "t")
    values, scales = layer.rows(ids)
    np.testing.assert_array_equal(values, w[ids])
    np.testing.assert_array_equal(scales, tensors["t.weight.scale"][ids] if layout != "fp32" else np.zeros(0))
    for bad in ([-1], [n]):
        with pytest.raises(IndexError):
            layer.rows(np.array(bad, dtype=np.int32))


def test_pack_quads_rejects_bad_input():
    with pytest.raises(TypeError):
        gv.pack_quads(np.zeros((4, 4), np.int16))
    with pytest.raises(TypeError):
        gv.pack_quads(np.zeros((2, 4, 4), np.int8))
    with pytest.raises(ValueError, match="exceeds"):
        gv.pack_quads(np.zeros((1, gv.MAX_K + 1), np.int8))
    wp = gv.pack_quads(np.zeros((20, 10), np.int8))
    with pytest.raises(ValueError, match="does not match"):
        g.linear_int8(np.zeros((2, 70), np.float32), wp, np.ones(20, np.float32), np.zeros(20, np.float32))
    with pytest.raises(ValueError, match="path"):
        g.linear_int8(np.zeros((2, 10), np.float32), wp, np.ones(20, np.float32), np.zeros(20, np.float32),
                      path="portable")
    if not (cpu.AMX_EMULATED or cpu.amx_available()):     # AMX code compiled in, but not usable here
        with pytest.raises(ValueError, match="AMX"):
            g.linear_int8(np.zeros((2, 10), np.float32), wp, np.ones(20, np.float32), np.zeros(20, np.float32),
                          path="amx")
    if not gv.VNNI_AVAILABLE:     # the default path never picks an emulation by itself
        with pytest.raises(ValueError, match="VNNI"):
            g.linear_int8(np.zeros((2, 10), np.float32), wp, np.ones(20, np.float32), np.zeros(20, np.float32))


def test_best_layout_follows_the_cpu():
    assert g.best_layout() == ("quads" if gv.VNNI_AVAILABLE else "pairs")
    assert g.pack_weight(np.zeros((3, 3), np.int8)).dtype == (np.uint8 if gv.VNNI_AVAILABLE else np.int8)
    with pytest.raises(ValueError):
        g.pack_weight(np.zeros((3, 3), np.int8), layout="triples")


@pytest.mark.parametrize("path", QUAD_PATHS)
@pytest.mark.parametrize("m,n,k", SHAPES + [(300, 33, 130), (17, 64, 64), (64, 31, 8191)])
def test_qlinear_quads(m, n, k, path):
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    xq, xs, wq, ws, bias = make_case(rng, m, n, k)
    out = np.full((m, n), np.nan, np.float32)
    gv.qlinear_quads(xq, xs, gv.pack_quads(wq), ws, bias, out, path=path)
    check_out(out, xq, xs, wq, ws, bias)


@pytest.mark.parametrize("path", QUAD_PATHS)
@pytest.mark.parametrize("extreme", ["same_sign", "random_sign"])
@pytest.mark.parametrize("m,n,k", [(7, 19, 8192), (6, 16, 8193), (3, 17, 3 * 8192 + 1), (20, 40, 770)])
def test_quads_extreme_values(m, n, k, extreme, path):
    # Full-magnitude activations and weights: |dot| reaches 2047 * 127 * K, past int32 for K > 8192
    # (the int64 epilogue), and the byte sums reach 32 * 255 * K.
    rng = np.random.default_rng(k + 1)
    xq, xs, wq, ws, bias = make_case(rng, m, n, k, extreme=extreme)
    out = np.empty((m, n), np.float32)
    gv.qlinear_quads(xq, xs, gv.pack_quads(wq), ws, bias, out, path=path)
    check_out(out, xq, xs, wq, ws, bias)
    np.testing.assert_array_equal(out, qlinear_ref(xq, xs, wq, ws, bias))


# The default path (None) takes quads only where they are native (test_pack_quads_rejects_bad_input).
@pytest.mark.parametrize("path", QUAD_PATHS + ([None] if gv.VNNI_AVAILABLE else []))
# One row (the decode GEMVs, _gemv_vnni / _gemv_vnni_low) with a partial last panel and past WIDE_K too.
@pytest.mark.parametrize("m,n,k", [(1, 384, 384), (1, 50, 1031), (1, 17, gv.WIDE_K + 100), (3, 15, 3),
                                   (16, 40, 770), (97, 50, 1031), (260, 96, 384)])
@pytest.mark.parametrize("bits", [12, 8])
def test_linear_quads_matches_pairs_bit_for_bit(m, n, k, path, bits):
    # 8-bit layers run the one-byte-plane VNNI kernel; AMX and pairs the 12-bit ones on 8-bit values.
    rng = np.random.default_rng(m + n + k)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    x[m // 2] = 0.0
    if m > 2:
        x[m - 1, 0] = 40.0                            # an outlier feature
    if m > 3:
        x[1] = 2.5                                    # a constant row: all of it is the centre (8-bit)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws = (rng.random(n) * 1e-2).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = g.linear_int8(x, gv.pack_quads(wq), ws, bias, path=path, act_bits=bits)
    np.testing.assert_array_equal(y, g.linear_int8(x, g.pack_weight(wq, "pairs"), ws, bias, act_bits=bits))
    np.testing.assert_array_equal(y, linear_int8_ref(x, wq, ws, bias, bits))
    np.testing.assert_array_equal(y[m // 2], bias)
    if bits == 12:
        xq, xs = quantize_ref(x)
        xc = None
    else:
        xq, xs, xc = quantize_centred_ref(x)
        assert np.abs(xq).max() <= g.ACT8_QMAX and (m == 1 or xq.min() == -xq.max() == -g.ACT8_QMAX)
    assert m == 1 or np.abs(xq).max() == (g.ACT_QMAX if bits == 12 else g.ACT8_QMAX)
    check_out(y, xq, xs, wq, ws, bias, xc)


@pytest.mark.parametrize("path", PATHS + QUAD_PATHS)
def test_8_bit_rows_are_centred(path):
    """A one-sided row (GELU outputs lie in [-0.17, max]) centred on its midpoint gets a grid twice as
    fine as a symmetric one: about half the error of symmetric 8-bit rows against the float layer."""
    rng = np.random.default_rng(7)
    m, n, k = 64, 96, 512
    z = rng.standard_normal((m, k)) * 2
    x = (0.5 * z * (1 + np.tanh(0.7978845608 * (z + 0.044715 * z ** 3)))).astype(np.float32)   # GELU
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws = (rng.random(n) * 1e-2).astype(np.float32)
    bias = np.zeros(n, np.float32)
    weight = wq.astype(np.int8) if path in PATHS else gv.pack_quads(wq)
    y = g.linear_int8(x, weight, ws, bias, path=path, act_bits=8)
    exact = x.astype(np.float64) @ (wq.astype(np.float64) * ws[:, None]).T
    xq, xs = quantize_ref(x, g.ACT8_QMAX)                       # symmetric 8-bit rows, for comparison
    symmetric = (xq * xs[:, None]).astype(np.float64) @ (wq.astype(np.float64) * ws[:, None]).T
    ratio = np.abs(y - exact).mean() / np.abs(symmetric - exact).mean()
    assert 0.35 < ratio < 0.65, ratio


@pytest.mark.parametrize("path", QUAD_PATHS)
@pytest.mark.parametrize("bits", [12, 8])
def test_quads_non_finite_row_gives_nan_row(path, bits):
    # A NaN or inf activation must not become integers made of garbage: its row comes out NaN (the
    # models' finiteness check then raises) and the other rows are untouched.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    x[3, 7], x[11, 0] = np.nan, np.inf
    wq = rng.integers(-127, 128, (24, 64)).astype(np.int8)
    ws, bias = np.full(24, 0.01, np.float32), np.zeros(24, np.float32)
    y = g.linear_int8(x, gv.pack_quads(wq), ws, bias, path=path, act_bits=bits)
    assert np.isnan(y[3]).all() and np.isnan(y[11]).all()
    good = np.ones(20, bool)
    good[[3, 11]] = False
    np.testing.assert_array_equal(y[good], g.linear_int8(x[good], g.pack_weight(wq, "pairs"), ws, bias,
                                                         act_bits=bits))


def test_kernel_choice_follows_numba_target(tmp_path):
    # Pinned to an older CPU (as under valgrind), the AVX-512 paths must switch off even on a host
    # that has them: their instructions could not be compiled for that target.
    import subprocess
    import sys

    code = ("from tinybert.kernels import gemm, gemm_vnni as gv; "
            "print(gv.VNNI_AVAILABLE, gv.AMX_AVAILABLE, gemm.best_layout())")
    env = {"PATH": "/usr/bin:/bin", "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2,+popcnt,+bmi2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "pairs"]


def test_int8_isa_cap(tmp_path):
    # TINYBERT_INT8_ISA caps the instruction sets (avx512vnni: what a CPU without AMX runs); a
    # bad value is refused at import rather than silently ignored. The processes share one kernel
    # cache: what a capped process compiles and caches must still be right for an uncapped one.
    import subprocess
    import sys

    code = """
import numpy as np
from tinybert.kernels import gemm, gemm_vnni as gv
rng = np.random.default_rng(0)
x = rng.standard_normal((40, 200)).astype(np.float32)
wq = rng.integers(-127, 128, (48, 200)).astype(np.int8)
ws, b = np.full(48, 0.01, np.float32), np.zeros(48, np.float32)
ref = gemm.linear_int8(x, gemm.pack_weight(wq, "pairs"), ws, b)
paths = [None] + (["vnni"] if gv.VNNI_AVAILABLE else []) + (["amx"] if gv.AMX_AVAILABLE else [])
same = all(np.array_equal(gemm.linear_int8(x, gemm.pack_weight(wq), ws, b, path=p if gv.VNNI_AVAILABLE else None), ref)
           for p in paths)
print(gv.VNNI_AVAILABLE, gv.AMX_AVAILABLE, gemm.best_layout(), same)
"""
    runs = {}
    for cap in ("avx2", "avx512vnni", "nonsense", "amx", "emulate"):
        env = {"PATH": "/usr/bin:/bin", "NUMBA_CACHE_DIR": str(tmp_path), "TINYBERT_INT8_ISA": cap}
        if cap == "emulate":     # the quads paths on any CPU: native where it has them, else emulated
            env.update(TINYBERT_INT8_ISA="amx", TINYBERT_INT8_EMULATE="1")
        runs[cap] = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert runs["avx2"].stdout.split() == ["False", "False", "pairs", "True"], runs["avx2"].stderr
    assert runs["avx512vnni"].stdout.split() == [str(gv.VNNI_AVAILABLE), "False",
                                                 "quads" if gv.VNNI_AVAILABLE else "pairs", "True"]
    assert runs["nonsense"].returncode != 0 and "TINYBERT_INT8_ISA" in runs["nonsense"].stderr
    assert runs["amx"].stdout.split() == [str(gv.VNNI_AVAILABLE), str(cpu.amx_available()), g.best_layout(), "True"]
    assert runs["emulate"].stdout.split() == ["True", str(cpu.amx_available() or cpu.AMX_EMULATED), "quads", "True"], \
        runs["emulate"].stderr


@pytest.mark.parametrize("path", QUAD_PATHS)
@pytest.mark.parametrize("m,k", [(3, 3), (17, 70), (33, 385)])
def test_linear_quads_padding_over_reused_memory(m, k, path):
    # The byte planes are allocated uninitialised and only their padding is zeroed. A first call at
    # the padded size fills blocks of exactly that size with non-zero bytes; the odd-sized call that
    # follows gets them back from the allocator, so any padding left unzeroed changes its result.
    rng = np.random.default_rng(m * k)
    mp, kp = -(-m // gv.TILE_ROWS) * gv.TILE_ROWS, -(-k // gv.KQ_ALIGN) * gv.KQ_ALIGN
    n = 40
    big = gv.pack_quads(rng.integers(-127, 128, (n, kp)).astype(np.int8))
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws = (rng.random(n) * 1e-2).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    expected = linear_int8_ref(x, wq, ws, bias)
    for _ in range(3):
        gv.linear_quads(np.full((mp, kp), 1e3, np.float32), big, ws, bias, path=path)
        np.testing.assert_array_equal(gv.linear_quads(x, gv.pack_quads(wq), ws, bias, path=path), expected)


def test_packed_weights_start_on_cache_lines():
    # AMX tile rows and zmm loads that straddle two cache lines run several times slower
    # (tinybert/kernels/memory.py), so every packing must return 64-byte-aligned data.
    from tinybert.kernels.memory import aligned_bytes, aligned_empty

    rng = np.random.default_rng(0)
    for n, k in [(1, 1), (17, 5), (40, 770), (384, 1536)]:
        wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
        assert gv.pack_quads(wq).ctypes.data % 64 == 0
        assert g.pack_weight(wq, "pairs").ctypes.data % 64 == 0
        assert g.pack_weight_fp32(wq.astype(np.float32)).ctypes.data % 64 == 0
    for shape, dtype in [((3, 5), np.int8), (7, np.float32), ((2, 3, 64), np.uint8)]:
        a = aligned_empty(shape, dtype, fill=3)
        assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.dtype == dtype and np.all(a == 3)

    @njit
    def offsets(sizes):
        out = np.empty(sizes.size, np.int64)
        for i in range(sizes.size):
            out[i] = aligned_bytes(sizes[i]).ctypes.data % 64
        return out

    assert not offsets(np.array([1, 63, 64, 1000, 12345, 1 << 20])).any()


@pytest.mark.parametrize("path", QUAD_PATHS)
def test_split_rounds_half_to_even_like_the_pairs_path(path):
    # Row max 2047 makes the scale exactly 1, so x * inv lands on .5 ties; the vectorised split
    # (first 16-element blocks) and its scalar tail must both round them to even, as np.rint does.
    k = 16 * 3 + 5
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1000.5, -1000.5], np.float32)
    x = np.tile(ties, (4, -(-k // ties.size)))[:, :k].copy()
    x[:, 7] = 2047.0
    x[1] = -x[1]
    rng = np.random.default_rng(3)
    wq = rng.integers(-127, 128, (40, k)).astype(np.int8)
    ws = (rng.random(40) * 1e-2).astype(np.float32)
    bias = np.zeros(40, np.float32)
    y = gv.linear_quads(x, gv.pack_quads(wq), ws, bias, path=path)
    np.testing.assert_array_equal(y, g.linear_int8(x, g.pack_weight(wq, "pairs"), ws, bias))
    np.testing.assert_array_equal(y, linear_int8_ref(x, wq, ws, bias))
    xq = np.rint(x).astype(np.int64)              # scale 1: the quantised row is rint(x) itself
    assert np.array_equal(xq[0, :9], [0, 2, 2, 0, -2, -2, 1000, 2047, 0])
    np.testing.assert_array_equal(y, ((xq @ wq.T.astype(np.int64)).astype(np.float32) * ws).astype(np.float32))


# What every int8 Linear runs: the layer is checked once at load, each call checks only its input.
LAYOUTS = [
    pytest.param("pairs"),
    pytest.param("quads", marks=pytest.mark.skipif(not (gv.VNNI_AVAILABLE or gv.VNNI_EMULATED),
                                                   reason="VNNI capped by TINYBERT_INT8_ISA")),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layer_fast_path_matches_checked_path(layout):
    rng = np.random.default_rng(11)
    k = 69 if layout == "pairs" else 70       # each packing pads K: to 70 (pairs) or 128 (quads)
    wq = rng.integers(-127, 128, (40, k)).astype(np.int8)
    ws, bias = (rng.random(40) * 1e-2).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    if layout == "pairs":
        wp, mod, fast = g.pack_weight(wq, "pairs"), g, g.linear_int8_checked_weights

        def checked(x):
            return g.linear_int8(x, wp, ws, bias)
    else:
        path = None if gv.VNNI_AVAILABLE else "vnni"       # the layer path runs what is compiled in
        wp, mod, fast = gv.pack_quads(wq), gv, gv.linear_quads_checked_weights

        def checked(x):
            return gv.linear_quads(x, wp, ws, bias, path=path)
    mod.check_layer(wp, ws, bias, k)
    for m in (0, 1, 5, 16, 33):
        x = rng.standard_normal((m, k)).astype(np.float32)
        expected = checked(x)
        assert expected.shape == (m, 40)
        np.testing.assert_array_equal(fast(x, wp, ws, bias, k), expected)
        # float64 or strided inputs are converted, not refused.
        np.testing.assert_array_equal(fast(x.astype(np.float64), wp, ws, bias, k), expected)
        wide = np.zeros((m, 2 * k), np.float32)
        wide[:, ::2] = x
        np.testing.assert_array_equal(fast(wide[:, ::2], wp, ws, bias, k), expected)
    with pytest.raises(ValueError):
        fast(np.zeros((2, k + 1 if layout == "pairs" else k - 1), np.float32), wp, ws, bias, k)   # same packing
    with pytest.raises(ValueError):
        fast(np.zeros(k, np.float32), wp, ws, bias, k)
    with pytest.raises(ValueError):
        mod.check_layer(wp, ws, bias, 130)                     # K does not match the packing
    with pytest.raises(ValueError):
        mod.check_layer(wp, ws, bias[:39], k)                  # bias length: the kernel would read past it
    with pytest.raises(ValueError):
        mod.check_layer(wp, ws.astype(np.float64), bias, k)    # scale dtype
    if layout == "pairs":       # the general entry point checks the bias against N as well
        with pytest.raises(ValueError):
            g.linear_int8(np.zeros((2, k), np.float32), wp, ws, bias[:39])


@pytest.mark.skipif(not (gv.VNNI_AVAILABLE or gv.VNNI_EMULATED), reason="VNNI capped by TINYBERT_INT8_ISA")
@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("m,k", [(1, 64), (7, 384), (16, 384), (100, 384), (90, 770)])   # 16: row bands
def test_quads_layer_smooths_its_input_as_it_quantises(m, k, bits):
    # The layer path multiplies x by the smoothing factors row by row inside the quantiser; the result
    # must be that of multiplying the whole input first, bit for bit, non-finite rows included.
    rng = np.random.default_rng(m + k + bits)
    n = 40
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws, bias = (rng.random(n) * 1e-2).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    wp = gv.pack_quads(wq)
    smooth = np.exp(rng.standard_normal(k)).astype(np.float32)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    x[:, rng.integers(0, k)] *= 30                                     # an outlier channel
    if m > 3:
        x[2, 5] = np.nan
    qmax = g.act_qmax(bits)
    wsum = g.weight_sums(wq, ws) if bits == 8 else g.NO_SUMS
    gv.check_layer(wp, ws, bias, k)
    gv.check_smooth(smooth, k)
    path = None if gv.VNNI_AVAILABLE else "vnni"
    expected = gv.linear_quads(x * smooth, wp, ws, bias, path=path, act_bits=bits)
    got = gv.linear_quads_checked_weights(x, wp, ws, bias, k, qmax, wsum, smooth)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, gv.linear_quads(x, wp, ws, bias, path=path, act_bits=bits))
    if m > 3:
        assert np.isnan(got[2]).all() and np.isfinite(np.delete(got, 2, axis=0)).all()
    for bad in (smooth[:-1], smooth.astype(np.float64), np.repeat(smooth, 2)[::2], list(smooth)):
        with pytest.raises(ValueError):
            gv.check_smooth(bad, k)


@pytest.mark.skipif(not (gv.VNNI_AVAILABLE or gv.VNNI_EMULATED), reason="VNNI capped by TINYBERT_INT8_ISA")
@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("m", [gv.ROW_BANDS_MIN, 13, 40, gv.ROW_BANDS_MAX])
def test_row_bands_match_the_column_split(m, bits):
    # A few 8-bit rows split into bands, one per thread, each quantised and multiplied whole by its task
    # (_gemm_vnni_bands), must give the column split's result bit for bit, for any thread count
    # (Numba runs more bands than threads one after another); 12-bit rows keep the column split.
    rng = np.random.default_rng(m + bits)
    n, k = 72, 200                                       # a partial panel pair; K padded to 256
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    x[m // 2, 3] = np.inf
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws, bias = (rng.random(n) * 1e-2).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    wp, qmax = gv.pack_quads(wq), g.act_qmax(bits)
    wsum = g.weight_sums(wq, ws) if bits == 8 else g.NO_SUMS
    smooth = np.exp(rng.standard_normal(k)).astype(np.float32)
    expected = linear_int8_ref(x * smooth, wq, ws, bias, bits)
    np.testing.assert_array_equal(expected, g.linear_int8(x * smooth, g.pack_weight(wq, "pairs"), ws, bias,
                                                          act_bits=bits))
    assert np.isnan(expected[m // 2]).all()
    for threads in (1, 2, 3, 5):                         # 1: the column split itself
        out = np.full((m, n), 7.0, np.float32)
        gv._linear_quads(x, wp, ws, bias, out, qmax, wsum, smooth, threads, True)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.skipif(not (gv.VNNI_AVAILABLE or gv.VNNI_EMULATED), reason="VNNI capped by TINYBERT_INT8_ISA")
@pytest.mark.parametrize("n,k", [(72, 200), (32, 64), (16, 128), (100, 8300)])
def test_one_8_bit_row_streams_each_threads_panels(n, k):
    # One 8-bit row (a batch-1 decode step) takes _gemv_vnni_low: each thread one contiguous run of panels, one
    # panel over the whole K at a time. It must give the reference's result bit for bit for any thread count
    # (more threads than panels included), with a partial last panel, N of one panel (packed with a padding
    # panel), K past WIDE_K, smoothing, and a non-finite row.
    rng = np.random.default_rng(n + k)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    ws, bias = (rng.random(n) * 1e-2).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    wp, qmax, wsum = gv.pack_quads(wq), g.act_qmax(8), g.weight_sums(wq, ws)
    smooth = np.exp(rng.standard_normal(k)).astype(np.float32)
    for bad in (None, np.nan, np.inf):
        x = (rng.standard_normal((1, k)) * 3).astype(np.float32)
        if bad is not None:
            x[0, k // 2] = bad
        expected = linear_int8_ref(x * smooth, wq, ws, bias, 8)
        assert np.isfinite(expected).all() == (bad is None)
        for threads in (1, 2, 3, 7):
            out = np.full((1, n), 7.0, np.float32)
            gv._linear_quads(x, wp, ws, bias, out, qmax, wsum, smooth, threads, False)
            np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------------------------
# CPU dispatch (cpu.py): one module decides, nothing is requested at import, the layers run one way
# ------------------------------------------------------------------------------------------------

ZEN4 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vnni"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx-tile", "amx-int8"}
HASWELL = {"avx2", "fma"}


@pytest.mark.parametrize("features,cap,emulate,layout,amx,grant", [
    (HASWELL, "amx", False, "pairs", False, False),
    (HASWELL, "amx", True, "quads", True, False),            # both quads drivers emulated
    (HASWELL, "avx512vnni", True, "quads", False, False),
    (HASWELL, "avx2", True, "pairs", False, False),          # the cap wins over the emulation
    (ZEN4, "amx", False, "quads", False, False),
    (ZEN4, "amx", True, "quads", True, False),               # native VNNI, emulated AMX
    (ZEN4, "avx512vnni", False, "quads", False, False),
    (ZEN4, "avx2", False, "pairs", False, False),
    (SAPPHIRE_RAPIDS, "amx", False, "quads", True, True),    # native AMX: the OS must grant the tiles
    (SAPPHIRE_RAPIDS, "amx", True, "quads", True, True),
    (SAPPHIRE_RAPIDS, "avx512vnni", False, "quads", False, False),
    (SAPPHIRE_RAPIDS, "avx2", False, "pairs", False, False),
])
def test_int8_policy_for_every_isa_level(features, cap, emulate, layout, amx, grant):
    policy = cpu.int8_policy(frozenset(features), cap, emulate)
    assert (policy.layout, policy.amx_wanted, policy.amx_needs_grant) == (layout, amx, grant)
    # Code generation follows the target alone, never the cap or the emulation switch.
    assert (policy.target_vnni, policy.target_amx) == ("avx512vnni" in features, "amx-int8" in features)


def test_int8_policy_refuses_an_unknown_cap():
    with pytest.raises(ValueError, match="TINYBERT_INT8_ISA"):
        cpu.int8_policy(frozenset(ZEN4), "avx512", False)


@pytest.mark.parametrize("features,cap,emulate,granted,small,large", [
    (HASWELL, "amx", False, False, None, None),          # pairs: the quads default path is refused
    (HASWELL, "amx", True, False, "vnni", "amx"),        # emulated AMX needs no grant
    (ZEN4, "amx", False, False, "vnni", "vnni"),
    (ZEN4, "avx512vnni", True, False, "vnni", "vnni"),
    (SAPPHIRE_RAPIDS, "amx", False, True, "vnni", "amx"),
    (SAPPHIRE_RAPIDS, "amx", False, False, "vnni", "vnni"),   # the OS refused the tile state
    (SAPPHIRE_RAPIDS, "avx512vnni", False, True, "vnni", "vnni"),
])
def test_default_quads_path_under_each_policy(monkeypatch, features, cap, emulate, granted, small, large):
    """The driver a layer gets for a batch-1 GEMM (VNNI) and for one of AMX_MIN_ROWS rows or more, and
    when the AMX permission is asked for: once, by the first GEMM that would run on AMX."""
    policy = cpu.int8_policy(frozenset(features), cap, emulate)
    requests = []

    def request():
        requests.append(1)
        return granted

    monkeypatch.setattr(cpu, "POLICY", policy)
    monkeypatch.setattr(cpu, "VNNI_EMULATED", not policy.target_vnni)
    monkeypatch.setattr(cpu, "AMX_EMULATED", not policy.target_amx)
    monkeypatch.setattr(cpu, "request_amx", request)
    monkeypatch.setattr(cpu, "_amx", None)
    if small is None:
        with pytest.raises(ValueError, match="VNNI"):
            cpu.quads_path(None, 1)
        assert cpu.best_layout() == "pairs" and not requests
        return
    assert cpu.best_layout() == "quads"
    assert cpu.quads_path(None, 1) == small == "vnni" and not cpu.amx_for(cpu.AMX_MIN_ROWS - 1)
    assert not requests                                   # a small GEMM never asks for the tiles
    assert cpu.quads_path(None, cpu.AMX_MIN_ROWS) == large
    assert cpu.quads_path(None, 500) == large and cpu.amx_for(64) == (large == "amx")
    assert len(requests) == int(policy.amx_needs_grant)   # asked once, and only where native AMX runs
    assert cpu.quads_path("vnni", 64) == "vnni"           # a named path runs native or emulated
    if large == "amx" or policy.target_amx is False:
        assert cpu.quads_path("amx", 64) == "amx"
    else:                                                 # native AMX code, but no tiles granted / capped
        with pytest.raises(ValueError, match="AMX"):
            cpu.quads_path("amx", 64)


def test_importing_tinybert_does_not_request_amx(tmp_path):
    """The AMX tile state is a process-wide side effect: asked for at the first AMX GEMM, not at import.

    The process is told to compile for a CPU with AMX (NUMBA_CPU_FEATURES; nothing is compiled, so this
    host need not have it), and the libc syscall is intercepted (refused) to see when it is made."""
    import subprocess
    import sys

    code = """
import ctypes
import numba, llvmlite.binding   # their own libraries load first, unwatched
calls = []
real_cdll = ctypes.CDLL
class Watched:
    def __init__(self, *args, **kwargs):
        self._lib = real_cdll(*args, **kwargs)
    def __getattr__(self, name):
        if name == "syscall":
            return lambda *args: calls.append(args) or -1          # record, and refuse
        return getattr(self._lib, name)
ctypes.CDLL = Watched
import tinybert, tinybert_convert
from tinybert.kernels import attention, cpu, gemm, gemm_fp32, gemm_pairs, gemm_vnni, quant
assert cpu.POLICY.amx_wanted and cpu.POLICY.amx_needs_grant and gemm.best_layout() == "quads"
at_import = list(calls)
small = cpu.quads_path(None, 1), cpu.amx_for(cpu.AMX_MIN_ROWS - 1)
before_large = list(calls)
large = cpu.quads_path(None, 64), cpu.amx_for(64), gemm_vnni.AMX_AVAILABLE
print(at_import, before_large, small, large, calls)
"""
    env = {"PATH": "/usr/bin:/bin", "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": ":".join(sys.path),
           "NUMBA_CPU_FEATURES": "+avx2,+fma,+avx512f,+avx512bw,+avx512vnni,+amx-tile,+amx-int8"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("] ", 2)[:2] == ["[", "["], out.stdout        # nothing at import, nothing for M < 16
    assert out.stdout.strip().endswith("('vnni', False) ('vnni', False, False) [(158, 4131, 18)]"), out.stdout


def test_kernel_modules_import_one_way():
    """The kernel modules form layers: cpu.py and quant.py below both int8 families, which import nothing
    of each other, and gemm.py (dispatch) above them; no cycle anywhere in the package."""
    import ast
    from pathlib import Path

    from tinybert import kernels

    folder = Path(kernels.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):      # module level and inside functions alike
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {alias.name for alias in node.names}
        graph[path.stem] = deps - {None}
    assert not graph["cpu"] & set(graph), graph["cpu"]         # detection needs no kernel
    assert graph["quant"] <= {"jitcache"}, graph["quant"]
    assert not graph["gemm_pairs"] & {"gemm", "gemm_vnni", "gemm_fp32"}
    assert not graph["gemm_vnni"] & {"gemm", "gemm_pairs", "gemm_fp32"}
    assert not any("gemm" in graph[m] for m in graph if m != "gemm"), "only the layers import the dispatch"

    def visit(module, stack):
        assert module not in stack, f"import cycle: {' -> '.join(stack + [module])}"
        for dep in graph.get(module, ()):
            visit(dep, stack + [module])

    for module in graph:
        visit(module, [])


# ------------------------------------------------------------------------- the whole model on the quads paths

@pytest.mark.parametrize("isa", ["amx", "avx512vnni"])
def test_quads_kernels_run_the_whole_model_on_any_cpu(isa, minilm_files, sentences, reference_embeddings, tmp_path):
    """all-MiniLM-L6-v2 on the AVX-512 VNNI / AMX kernels, forced with TINYBERT_INT8_EMULATE=1.

    On a CPU without those instructions the kernels emulate them exactly (gemm_vnni.py), so the
    quads layout, the byte split, both drivers and their epilogues run end to end here too. The
    paths are built to give the very same float32 sums as the pairs path, so the embeddings must
    equal this process's bit for bit, and match transformers. A batch of many tokens takes the AMX
    driver (capped at avx512vnni: the VNNI one); a 5-token sentence takes the VNNI driver."""
    import os
    import subprocess
    import sys
    import textwrap

    import tinybert
    from tinybert.kernels import gemm, gemm_vnni

    texts = sentences[:24]
    short = "A short one."
    env = dict(os.environ, TINYBERT_INT8_EMULATE="1", TINYBERT_INT8_ISA=isa)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tinybert
        from tinybert.kernels import gemm, gemm_vnni
        enc = tinybert.Encoder({str(minilm_files["int8"])!r})
        np.save(sys.argv[1], enc.encode({texts!r}, batch_size=24))
        np.save(sys.argv[2], enc.encode({short!r}))
        print(gemm.best_layout(), gemm_vnni.AMX_AVAILABLE, enc.runner.model.blocks[0].attn.qkv._quads)
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    amx = isa == "amx" and (gemm_vnni.AMX_AVAILABLE or gemm_vnni.AMX_EMULATED)
    assert result.stdout.split() == ["quads", str(amx), "True"]
    quads, quads_short = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")

    enc = tinybert.Encoder(minilm_files["int8"])
    np.testing.assert_array_equal(quads, enc.encode(texts, batch_size=24))
    np.testing.assert_array_equal(quads_short, enc.encode(short))
    if not gemm_vnni.VNNI_AVAILABLE:
        assert gemm.best_layout() == "pairs"        # the emulation never runs unless asked for
    cos = (quads * reference_embeddings[:len(texts)]).sum(1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995, (cos.mean(), cos.min())
