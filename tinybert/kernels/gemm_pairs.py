"""int8 linear layers in the "pairs" layout: AVX2 ``vpmaddwd``, or the same IR in generic LLVM vectors.

The kernels every CPU without AVX-512 VNNI runs (gemm.py's dispatch packs "pairs" there), with the
activation scheme of quant.py: the same exact integer sums and float32 epilogue as gemm_vnni.py, so
the two families are bit-identical.  This module imports neither gemm.py nor gemm_vnni.py.

The hot instruction is AVX2 ``vpmaddwd``: 16 int16 x int16 products summed in adjacent pairs into
8 int32 lanes.  To use it without any horizontal reductions the weights are re-laid out once, at
load time, into int8 column panels of NR = 16 output channels, interleaved by pairs of k:

    packed[p, kk, 2*j + t] = wq[p*NR + j, 2*kk + t]      (j < NR, t in {0, 1}; zero padded)

The panels stay int8 in memory (1 byte per weight: the model's RAM and the bytes streamed per
forward pass are halved compared with widening to int16 at load time, which matters at small
batch where the GEMM is bound by DRAM bandwidth).  The micro-kernel sign-extends them as it
loads them: one 16-byte load ``packed[p, kk, 16*v : 16*v + 16]`` widened to 16 x int16
(``vpmovsxbw ymm, m128`` on AVX2) holds k-pair ``kk`` of channels ``p*NR + 8v .. p*NR + 8v + 7``.
Broadcasting the int32 made of the activation pair (xq[m, 2kk], xq[m, 2kk+1]) to all 8 lanes
and applying vpmaddwd adds exactly ``xq[m,2kk]*wq[n,2kk] + xq[m,2kk+1]*wq[n,2kk+1]`` to lane n.
The micro-kernel keeps an MR x NR = 6 x 16 int32 tile in 12 ymm registers (+2 weight vectors,
+1 broadcast, +1 product = 16 of 16).  The activations are quantised straight into row tiles
(``to_row_tiles``): for each group of MR rows, k-pair by k-pair, the MR pairs side by side, so
the micro-kernel walks one pointer with constant offsets (six row pointers cost the registers
that then spilled two accumulators).

The micro-kernel is emitted as LLVM IR via ``numba.extending.intrinsic``.  The explicit
``llvm.x86.avx2.pmadd.wd`` call is only emitted when the target has AVX2 (cpu.HOST_AVX2);
otherwise the same IR is written with generic vector ops (sext, mul, even+odd add), which every
LLVM target can lower (on x86 LLVM pattern-matches it back to the very same vpmovsxbw + vpmaddwd
code: forced on an AVX2 host both spellings compile to identical instructions; NEON gets widening
multiplies).  That vector micro-kernel is the only one: the scalar reference the tests compare
with is numpy (tests/oracles.py), not a second kernel compiled into every driver.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import HOST_AVX2, pairs_path
from .jitcache import fast_cache_loading
from .memory import aligned_empty
from .quant import (
    ACC_BLOCK,
    NO_SUMS,
    QMAX12,
    act_qmax,
    add_centre_term,
    check_scale_bias,
    dequantised_sums,
    layer_input,
    row_scale_centre,
)

# Register/cache blocking of the packed kernel (see module docstring).
NV = 2            # ymm vectors (8 int32 lanes each) per tile row
NR = 8 * NV       # output channels per weight panel
MR = 6            # activation rows per micro-tile: 6*NV = 12 accumulator registers
KC = 512          # k block: a 512 x 16 int8 panel slice (8 KiB) stays in L1; divides ACC_BLOCK
MC = 96           # rows per task (multiple of MR): 96 x 512 int16 activations (96 KiB) sit in L2


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _quantize_row_into(x, m, xs, xc, dst, qmax):
    """xs[m], xc[m] = row_scale_centre(x, m, qmax); dst[k] = rint((x[m, k] - xc[m]) / xs[m]), k < K."""
    scale, centre = row_scale_centre(x, m, qmax)
    xs[m] = scale
    xc[m] = centre
    if np.isnan(scale):
        dst[:x.shape[1]] = 0
        return
    inv = np.float32(1.0) / scale
    for k in range(x.shape[1]):
        dst[k] = np.int16(np.rint((x[m, k] - centre) * inv))



def pack_pairs(wq: np.ndarray) -> np.ndarray:
    """Pack int8 weights [N, K] once, at load time, for ``linear_pairs`` (gemm.pack_weight(wq, "pairs")).

    A C-contiguous int8 array of shape (ceil(N / NR), ceil(K / 2), 2 * NR) with
    ``packed[p, kk, 2*j + t] = wq[p*NR + j, 2*kk + t]`` and zeros past N and K (the zero padding
    makes odd K and partial panels need no special case in the micro-kernel).  The caller keeps
    ws and bias (their length gives N).  Memory: 1 byte per weight, like the raw weight up to
    the padding of the last panel and of an odd K (the micro-kernel sign-extends to int16 as it
    loads).  Told apart from a raw [N, K] weight by ``is_packed`` (3-d vs 2-d).
    """
    wq = np.asarray(wq)
    if wq.ndim != 2 or wq.dtype != np.int8:
        raise TypeError("pack_weight expects int8 weights of shape [N, K]")
    n_dim, k_dim = wq.shape
    packed = aligned_empty((-(-n_dim // NR), -(-k_dim // 2), 2 * NR), np.int8, fill=0)
    _pack_into(np.ascontiguousarray(wq), packed)
    return packed


@njit(cache=True, nogil=True, error_model="numpy")
def _pack_into(wq, packed):
    # Compiled because numpy's reshape/transpose copy is ~10x slower and callers that still pass
    # raw int8 weights to linear_int8 pay for this on every call.  packed must be zero-filled.
    n_dim, k_dim = wq.shape
    for p in range(packed.shape[0]):
        for j in range(min(NR, n_dim - p * NR)):
            row = wq[p * NR + j]
            for k in range(k_dim):
                packed[p, k // 2, 2 * j + (k & 1)] = row[k]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def pairs_rows(wp, ids, out):
    """out[i] = row ids[i] of the int8 weight pack_pairs packed into wp (out int8 [n, ≤ K]; ids checked by the
    caller): see gemm_vnni.quads_rows."""
    lanes = wp.shape[2] // 2
    for i in prange(ids.shape[0]):
        p, j = ids[i] // lanes, ids[i] % lanes
        for k in range(out.shape[1]):
            out[i, k] = wp[p, k // 2, 2 * j + (k & 1)]


def is_packed(w: np.ndarray) -> bool:
    """True for the output of pack_weight (int8, 3-d, last axis 2*NR); False for raw int8 [N, K].

    Both are int8: the number of dimensions tells them apart.
    """
    return w.dtype == np.int8 and w.ndim == 3 and w.shape[2] == 2 * NR


# ----------------------------------------------------------------------------------------------
# Micro-kernels: tile[t_off + i*NR + j] += sum_{kk < kpairs} sum_t x[x_off + i*x_stride + 2kk + t]
#                                                               * wp[w_off + kk*2*NR + 2j + t]
# for i < rows, j < NR.  x: flat int16 activations, wp: flat packed int8 weights, tile: flat int32.
# ----------------------------------------------------------------------------------------------

def _make_simd_microkernel(rows, use_x86_intrinsic):
    """Build the register-blocked micro-kernel for a tile of ``rows`` (1..MR) rows as an intrinsic.

    Activations come as row tiles (see ``to_row_tiles``): k-pair ``kk`` of the tile's MR rows is
    MR consecutive int32 (even, odd) pairs, so one pointer walks the whole tile, 4 * MR bytes per
    k-pair, and every load has a constant displacement.  Generated IR, per k-pair: NV unaligned
    <16 x i8> weight loads sign-extended to <16 x i16> (``vpmovsxbw ymm, m128`` on AVX2); per row
    one i32 load of the activation pair, splatted to <8 x i32> and bitcast to <16 x i16>;
    rows*NV pmaddwd + add into <8 x i32> accumulators that live in registers for the whole loop
    (12 accumulators, 2 weight vectors, a broadcast and a product: all 16 ymm registers).
    """
    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    v16i8 = ir.VectorType(i8, 16)
    v16i16, v8i32, v16i32 = ir.VectorType(i16, 16), ir.VectorType(i32, 8), ir.VectorType(i32, 16)
    even = ir.Constant(ir.VectorType(i32, 8), [2 * j for j in range(8)])
    odd = ir.Constant(ir.VectorType(i32, 8), [2 * j + 1 for j in range(8)])
    splat_mask = ir.Constant(ir.VectorType(i32, 8), [0] * 8)

    def pmaddwd(builder, a, b):
        if use_x86_intrinsic:
            mod = builder.module
            fn = cgutils.get_or_insert_function(
                mod, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd")
            return builder.call(fn, [a, b])
        # Portable spelling of the same operation: lane j = a[2j]*b[2j] + a[2j+1]*b[2j+1].
        prod = builder.mul(builder.sext(a, v16i32), builder.sext(b, v16i32))
        lo = builder.shuffle_vector(prod, prod, even)
        hi = builder.shuffle_vector(prod, prod, odd)
        return builder.add(lo, hi)

    @intrinsic
    def microkernel(typingctx, tile, t_off, x, x_off, wp, w_off, kpairs):
        # The IR hard-codes the element types: refuse anything else at typing time (e.g. an old
        # int16-packed weight) rather than reinterpret its bytes.
        for arr, dtype in ((tile, types.int32), (x, types.int16), (wp, types.int8)):
            if not isinstance(arr, types.Array) or arr.dtype != dtype:
                return None
        sig = types.void(tile, t_off, x, x_off, wp, w_off, kpairs)

        def codegen(context, builder, signature, args):
            tile_a, t_off_v, x_a, x_off_v, wp_a, w_off_v, kpairs_v = args
            tys = signature.args
            t_off_v, x_off_v = (context.cast(builder, v, t, types.int64)
                                for v, t in ((t_off_v, tys[1]), (x_off_v, tys[3])))
            w_off_v, kpairs_v = (context.cast(builder, v, t, types.int64)
                                 for v, t in ((w_off_v, tys[5]), (kpairs_v, tys[6])))
            tile_p = cgutils.create_struct_proxy(tys[0])(context, builder, value=tile_a).data
            x_p = cgutils.create_struct_proxy(tys[2])(context, builder, value=x_a).data
            w_p = cgutils.create_struct_proxy(tys[4])(context, builder, value=wp_a).data

            # The tile viewed as i32* so one load fetches an (even, odd) activation pair.
            x_base = builder.bitcast(builder.gep(x_p, [x_off_v], source_etype=i16), i32.as_pointer())
            w_base = builder.bitcast(builder.gep(w_p, [w_off_v], source_etype=i8),
                                     v16i8.as_pointer())

            accs = [[cgutils.alloca_once_value(builder, ir.Constant(v8i32, None))
                     for _ in range(NV)] for _ in range(rows)]
            with cgutils.for_range(builder, kpairs_v) as loop:
                kk = loop.index
                w_vecs = []
                for v in range(NV):
                    idx = builder.add(builder.mul(kk, ir.Constant(i64, NV)), ir.Constant(i64, v))
                    w8 = builder.load(builder.gep(w_base, [idx], source_etype=v16i8),
                                      align=1, typ=v16i8)
                    w_vecs.append(builder.sext(w8, v16i16))
                x_k = builder.gep(x_base, [builder.mul(kk, ir.Constant(i64, MR))], source_etype=i32)
                for i in range(rows):
                    pair = builder.load(builder.gep(x_k, [ir.Constant(i64, i)], source_etype=i32),
                                        align=4, typ=i32)
                    bcast = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(v8i32, None), pair,
                                               ir.Constant(i32, 0)),
                        ir.Constant(v8i32, None), splat_mask)
                    bcast = builder.bitcast(bcast, v16i16)
                    for v in range(NV):
                        acc = builder.load(accs[i][v], typ=v8i32)
                        builder.store(builder.add(acc, pmaddwd(builder, bcast, w_vecs[v])),
                                      accs[i][v])

            # tile[i, :] += acc[i]  (rows of the tile are NR int32 apart)
            t_base = builder.gep(tile_p, [t_off_v], source_etype=i32)
            for i in range(rows):
                for v in range(NV):
                    ptr = builder.bitcast(
                        builder.gep(t_base, [ir.Constant(i64, i * NR + 8 * v)], source_etype=i32),
                        v8i32.as_pointer())
                    old = builder.load(ptr, align=4, typ=v8i32)
                    builder.store(builder.add(old, builder.load(accs[i][v], typ=v8i32)), ptr,
                                  align=4)
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


# The explicit x86 intrinsic is only emitted when the target has AVX2 (Numba's cache is keyed on
# the target CPU, so a cached AVX2 build is never loaded elsewhere).
_mk1, _mk2, _mk3, _mk4, _mk5, _mk6 = [_make_simd_microkernel(r, HOST_AVX2)
                                       for r in range(1, MR + 1)]


@intrinsic
def _epilogue16(typingctx, tile, rows, out, o0, ldo, xs, m0, ws, bias, n0):
    """out[o0 + r*ldo + j] = float32(tile[r*NR + j]) * xs[m0 + r] * ws[n0 + j] + bias[n0 + j]

    for r < rows, j < NR (a whole 16-channel panel), as <16 x i32> / <16 x float> IR: the same
    float32 operations in the same order as the scalar epilogue (no contraction into an FMA), so
    bit-identical to it.  The scalar loop, compiled inside the parallel task loop, took ~50 cycles
    per 16 outputs: a fifth of a K = 384 task.
    """
    if not (isinstance(tile, types.Array) and tile.dtype == types.int32):
        return None
    for arr in (out, xs, ws, bias):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
            return None
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    v16i32, v16f32 = ir.VectorType(i32, NR), ir.VectorType(f32, NR)
    splat = ir.Constant(ir.VectorType(i32, NR), [0] * NR)
    sig = types.void(tile, rows, out, o0, ldo, xs, m0, ws, bias, n0)

    def codegen(context, builder, signature, args):
        tys = signature.args
        rows_v, o0_v, ldo_v, m0_v, n0_v = [context.cast(builder, args[i], tys[i], types.int64) for i in (1, 3, 4, 6, 9)]
        t_p, out_p, xs_p, ws_p, b_p = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                                       for i in (0, 2, 5, 7, 8)]

        def vptr(base, off, ety, vty):
            return builder.bitcast(builder.gep(base, [off], source_etype=ety), vty.as_pointer())

        ws_v = builder.load(vptr(ws_p, n0_v, f32, v16f32), align=4)
        b_v = builder.load(vptr(b_p, n0_v, f32, v16f32), align=4)
        with cgutils.for_range(builder, rows_v) as loop:
            r = loop.index
            s = builder.load(builder.gep(xs_p, [builder.add(m0_v, r)], source_etype=f32))
            s_v = builder.shuffle_vector(builder.insert_element(ir.Constant(v16f32, None), s, ir.Constant(i32, 0)),
                                         ir.Constant(v16f32, None), splat)
            dot = builder.load(vptr(t_p, builder.mul(r, ir.Constant(i64, NR)), i32, v16i32), align=4)
            y = builder.fadd(builder.fmul(builder.fmul(builder.sitofp(dot, v16f32), s_v), ws_v), b_v)
            builder.store(y, vptr(out_p, builder.add(o0_v, builder.mul(r, ldo_v)), f32, v16f32), align=4)
        return context.get_dummy_value()

    return sig, codegen



@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _microkernel(rows, tile, t_off, x, x_off, wp, w_off, kpairs):
    """The SIMD micro-kernel specialised for ``rows`` (1..MR=6).

    A partial tile gets its own specialisation instead of computing padding rows (M = 1 would
    otherwise cost 6x the work).
    """
    if rows == 6:
        _mk6(tile, t_off, x, x_off, wp, w_off, kpairs)
    elif rows == 5:
        _mk5(tile, t_off, x, x_off, wp, w_off, kpairs)
    elif rows == 4:
        _mk4(tile, t_off, x, x_off, wp, w_off, kpairs)
    elif rows == 3:
        _mk3(tile, t_off, x, x_off, wp, w_off, kpairs)
    elif rows == 2:
        _mk2(tile, t_off, x, x_off, wp, w_off, kpairs)
    else:
        _mk1(tile, t_off, x, x_off, wp, w_off, kpairs)


# ----------------------------------------------------------------------------------------------
# Packed driver
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tile_row(row, m, xt):
    """Scatter one int16 activation row (even length Kp) into its place in the row tiles xt."""
    src = row.view(np.int32)            # (even, odd) pairs
    dst = xt[m // MR].view(np.int32)
    i = m % MR
    for kk in range(src.size):
        dst[kk * MR + i] = src[kk]


@njit(cache=True, nogil=True, error_model="numpy")
def to_row_tiles(xq):
    """Lay int16 activations [M, Kp] (Kp even, C-contiguous) out as the row tiles the pairs
    micro-kernel reads:

        xt[m // MR, 2 * (MR * kk + m % MR) + t] = xq[m, 2 * kk + t]      (t in {0, 1})

    i.e. per tile of MR rows, k-pair by k-pair, the MR rows' (even, odd) int32 pairs side by side.
    Rows past M in the last tile are zero.
    """
    m_rows, kp = xq.shape
    xt = np.zeros(((m_rows + MR - 1) // MR, kp * MR), dtype=np.int16)
    for m in range(m_rows):
        _tile_row(xq[m], m, xt)
    return xt


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_tiles(x, row0, row1, xrow, xt, xs, xc, qmax):
    # Each row is quantised into the contiguous scratch row xrow (where the loop vectorises),
    # then scattered into the tiles as 4-byte stores.
    for m in range(row0, row1):
        _quantize_row_into(x, m, xs, xc, xrow, qmax)
        _tile_row(xrow, m, xt)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_tiles_parallel(x, kp, xt, xs, xc, qmax):
    m_rows = x.shape[0]
    n_parts = (m_rows + 63) // 64
    for part in prange(n_parts):
        xrow = np.zeros(kp, dtype=np.int16)         # column K (odd K) stays zero
        _quantize_tiles(x, part * 64, min(m_rows, part * 64 + 64), xrow, xt, xs, xc, qmax)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _qgemm_packed(xt, xs, wp, ws, bias, out):
    """out = xs[:,None] * ws[None,:] * (xq @ W.T) + bias, W given packed (see pack_weight) and
    the activations xq [M, Kp] given as row tiles xt (see to_row_tiles), Kp = 2 * wp.shape[1].

    Work is split into tasks (MC-row chunk, NR-column panel), chunk-major, shared by prange: a
    batch of a few rows still spreads its panels over both cores.  Inside a task: k blocks of KC
    (the panel slice stays in L1), MR-row micro-tiles accumulating into an int32 tile, flushed to
    float64 every ACC_BLOCK k values.
    """
    m_rows = xs.shape[0]
    kp = xt.shape[1] // MR
    n_dim = out.shape[1]
    n_panels = wp.shape[0]
    x = xt.reshape(xt.size)
    w = wp.reshape(wp.size)
    out_flat = out.reshape(out.size)
    # Equal-sized chunks (a multiple of MR, at most MC rows): with 2 threads splitting the task
    # range in halves, M = 128 as 96 + 32 rows would leave one core idle most of the time.
    n_chunks = (m_rows + MC - 1) // MC
    chunk_rows = ((m_rows + n_chunks - 1) // n_chunks + MR - 1) // MR * MR
    n_chunks = (m_rows + chunk_rows - 1) // chunk_rows
    for task in prange(n_chunks * n_panels):
        chunk = task // n_panels
        p = task - chunk * n_panels
        m0 = chunk * chunk_rows
        rows = min(chunk_rows, m_rows - m0)
        itile = np.zeros(rows * NR, dtype=np.int32)
        single_block = kp <= ACC_BLOCK
        ftile = np.zeros(0 if single_block else rows * NR, dtype=np.float64)
        for kb0 in range(0, kp, ACC_BLOCK):
            kb1 = min(kp, kb0 + ACC_BLOCK)
            for kc0 in range(kb0, kb1, KC):
                kc1 = min(kb1, kc0 + KC)
                w_off = (p * (kp // 2) + kc0 // 2) * (2 * NR)
                for r0 in range(0, rows, MR):
                    _microkernel(min(MR, rows - r0), itile, r0 * NR, x,
                                 (m0 + r0) * kp + kc0 * MR, w, w_off, (kc1 - kc0) // 2)
            if not single_block:
                for e in range(rows * NR):
                    ftile[e] += itile[e]
                itile[:] = 0
        # Epilogue. float32(int32 sum) equals float32(float64(sum)), so the common K <= ACC_BLOCK
        # case skips the float64 tile (at K = 384 that pass costs ~10% of the task).
        n0 = p * NR
        ncols = min(NR, n_dim - n0)
        if single_block and ncols == NR:
            _epilogue16(itile, rows, out_flat, m0 * n_dim + n0, n_dim, xs, m0, ws, bias, n0)
        else:
            for r in range(rows):
                s = xs[m0 + r]
                orow = out[m0 + r, n0:n0 + ncols]
                if single_block:
                    for j in range(ncols):
                        orow[j] = np.float32(itile[r * NR + j]) * s * ws[n0 + j] + bias[n0 + j]
                else:
                    for j in range(ncols):
                        orow[j] = np.float32(ftile[r * NR + j]) * s * ws[n0 + j] + bias[n0 + j]


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_int8_packed(x, wp, ws, bias, out, qmax, wsum):
    """Fused quantise (straight into row tiles) + packed GEMM (one compiled call from Python).
    8-bit rows are centred (qmax <= 127): ``wsum`` = weight_sums, else NO_SUMS."""
    m_rows, k_dim = x.shape
    kp = 2 * wp.shape[1]
    xt = np.empty(((m_rows + MR - 1) // MR, kp * MR), dtype=np.int16)
    if m_rows % MR:
        xt[-1] = 0                      # rows past M: read by no kernel, but keep them defined
    xs = np.empty(m_rows, dtype=np.float32)
    xc = np.empty(m_rows, dtype=np.float32)
    if m_rows * k_dim < 32768:          # a fork/join would cost more than the work
        # np.int64(0), not 0: a literal argument would compile a second specialisation of _quantize_tiles.
        _quantize_tiles(x, np.int64(0), m_rows, np.zeros(kp, dtype=np.int16), xt, xs, xc, qmax)
    else:
        _quantize_tiles_parallel(x, kp, xt, xs, xc, qmax)
    _qgemm_packed(xt, xs, wp, ws, bias, out)
    if qmax <= 127:
        add_centre_term(out, xc, wsum)


def _check_packed(wp, k_dim, n_dim):
    if not is_packed(wp):
        raise TypeError(f"expected a pack_weight() result (int8 [N/{NR}, K/2, {2 * NR}]), got "
                        f"{wp.dtype} {wp.shape}")
    if wp.shape[1] != -(-k_dim // 2) or wp.shape[0] != -(-n_dim // NR):
        raise ValueError(f"packed weight {wp.shape} does not match K={k_dim}, N={n_dim}")


def qlinear_packed(xq, xs, wp, ws, bias, out, path=None):
    """out[m, n] = xs[m] * ws[n] * (xq[m] . wq[n]) + bias[n] with ``wp = pack_pairs(wq)``: the GEMM
    driver on given integers (tests reach extreme sums with it; layers quantise in ``linear_pairs``).

    xq int16 [M, K], xs f32[M], ws f32[N], bias f32[N], out f32[M, N] (all C-contiguous).
    path: None or "simd" (the vector micro-kernel; AVX2 intrinsic if the target has it, else generic
    LLVM vector IR).
    """
    m_rows, k_dim = xq.shape
    _check_packed(wp, k_dim, ws.shape[0])
    if k_dim % 2:
        # The micro-kernel reads activations in (even, odd) pairs: give it an even row length.
        padded = np.zeros((m_rows, k_dim + 1), dtype=np.int16)
        padded[:, :k_dim] = xq
        xq = padded
    pairs_path(path)
    _qgemm_packed(to_row_tiles(np.ascontiguousarray(xq)), xs, wp, ws, bias, out)



def linear_pairs(x: np.ndarray, wp: np.ndarray, ws: np.ndarray, bias: np.ndarray, path=None,
                 act_bits: int = 12) -> np.ndarray:
    """gemm.linear_int8 for pairs-packed weights ``wp``: every argument checked."""
    if x.ndim != 2:
        raise ValueError(f"linear_int8 expects x of shape [M, K], got {x.shape}")
    pairs_path(path)
    m_rows, k_dim = x.shape
    n_dim = ws.shape[0]
    _check_packed(wp, k_dim, n_dim)
    check_scale_bias(ws, bias)
    qmax = act_qmax(act_bits)
    wsum = pairs_weight_sums(wp, ws) if act_bits == 8 else NO_SUMS
    out = np.empty((m_rows, n_dim), dtype=np.float32)
    if m_rows:
        _linear_int8_packed(np.ascontiguousarray(x, dtype=np.float32), wp, ws, bias, out, qmax, wsum)
    return out


def pairs_weight_sums(wp: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """weight_sums of the int8 weight that ``pack_weight(wq, "pairs")`` packed into wp."""
    panels, kpairs, width = wp.shape
    return dequantised_sums(wp.reshape(panels, kpairs, width // 2, 2).sum(axis=(1, 3), dtype=np.int64).reshape(-1), ws)



def check_layer(wp: np.ndarray, ws: np.ndarray, bias: np.ndarray, k_dim: int) -> None:
    """Validate a pairs-packed layer once, at load: packing, scales and bias agree with K and N."""
    _check_packed(wp, k_dim, ws.shape[0])
    check_scale_bias(ws, bias)


def linear_int8_checked_weights(x: np.ndarray, wp: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                                k_dim: int, qmax: np.float32 = QMAX12, wsum: np.ndarray = NO_SUMS) -> np.ndarray:
    """``linear_int8`` for a layer whose ``wp``, ``ws``, ``bias``, input width ``k_dim`` and
    activation range ``qmax`` (``act_qmax``) were checked once with ``check_layer`` (and, for an
    8-bit layer, ``wsum`` = weight_sums with ``check_wsum``): only x is checked per call (a model
    makes 24-72 of these calls per forward pass, and at batch 1 the full checks cost more than the
    GEMM's own launch).
    """
    x = layer_input(x, k_dim)
    out = np.empty((x.shape[0], ws.shape[0]), dtype=np.float32)
    if x.shape[0]:
        _linear_int8_packed(x, wp, ws, bias, out, qmax, wsum)
    return out


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
