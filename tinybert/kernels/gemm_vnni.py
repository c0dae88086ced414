"""int8 linear layers on AVX-512 VNNI and AMX: the same exact sums as gemm_pairs.py, four times the width.

Same scheme as ``quant.py`` ("W8A12": int8 weights with a per-output-channel scale, activations
quantised per row to 12-bit integers ``xq`` in [-2047, 2047]), same exact integer dot products,
same float32 epilogue, so these paths are bit-identical to the pairs ones (AVX2 or generic vectors):

    y[m, n] = float32(sum_k xq[m, k] * wq[n, k]) * xs[m] * ws[n] + b[n]

The byte instructions multiply 8-bit operands, so each 12-bit activation is split into two signed
bytes and each weight is stored offset by 128 as an unsigned byte:

    xq = 64 * h + l,   l = ((xq + 32) mod 64) - 32 in [-32, 31],   h = (xq - l) / 64 in [-32, 32]
    u  = wq + 128 in [1, 255]

    sum_k xq*wq = 64 * sum_k h*u + sum_k l*u - 128 * sum_k xq

Both byte sums are exact in int32 (|h * u| <= 32 * 255, for K up to MAX_K); the last term is one
integer per row, taken while quantising; the combination is done in int64.

An 8-bit layer (``act_bits=8``, |xq| <= 127, rows centred as in quant.py) needs no split: l = xq,
h = 0. The VNNI driver then runs the one-plane micro-kernel (half the ``vpdpbusd``) and leaves the h
sums at zero, so the same epilogue applies; AMX runs its two-plane program on the zero h plane (same
sums).

Weight layout ("quads"): panels of NR = 16 output channels, four consecutive k per channel,

    packed[p, kq, 4*j + t] = wq[p*NR + j, 4*kq + t] + 128      (uint8; 128 = zero padding)

with K padded to a multiple of 64 and N to a multiple of 32.  One 64-byte row is what both
instructions want:

* AVX-512 VNNI ``vpdpbusd`` (Zen 4, Ice Lake and later): a panel row is one zmm of weights; the
  four bytes (h[m, 4kq .. 4kq+3]) are broadcast to all 16 lanes straight from memory, and lane j
  gains the 4-term dot product of channel j.  The micro-kernel keeps MR = 6 rows x (h, l) = 12
  zmm accumulators (enough independent chains to hide the instruction's latency).
* AMX ``tdpbsud`` (Sapphire Rapids and later): 16 rows of a panel (64 k x 16 channels) are one
  B tile; 16 activation rows x 64 k are one A tile.  A task holds C tiles for 16 rows x 32
  channels x (h, l) in tmm0-3 and streams A_h, A_l, B_p, B_p+1 through tmm4-7.  For fewer than
  AMX_MIN_ROWS rows the VNNI kernel is used (a tile of mostly padding rows wastes the unit).

Activations are stored as two int8 matrices xh, xl [M padded to 16, K padded to 64] plus the row
sums; the padding is zero and contributes nothing.

Compiled for a CPU without these instructions, both kernels spell them in generic LLVM IR (the same
integer sums, much slower): ``path="vnni"`` / ``"amx"`` then run everything else of the two paths
(packing, splitting, blocking, epilogues) on any CPU, which is how the tests cover them on one
without AVX-512.  The default path never picks an emulation unless TINYBERT_INT8_EMULATE=1.

Layering: the quantiser and the checks come from quant.py (shared with gemm_pairs.py, which this
module does not import, nor it this one); whether the instructions are emitted, and which driver
the default path takes (AMX asks the OS for its tile state then, not at import), come from cpu.py.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu
from .cpu import AMX_EMULATED as AMX_EMULATED  # re-exported: bench/ and tests read the CPU facts here
from .cpu import AMX_MIN_ROWS as AMX_MIN_ROWS
from .cpu import VNNI_AVAILABLE as VNNI_AVAILABLE
from .cpu import VNNI_EMULATED as VNNI_EMULATED
from .cpu import amx_for, quads_path
from .irloop import STREAM_PREFETCH_BYTES, dpbusd, dpbusd_generic, no_unroll
from .irloop import prefetch as prefetch_ir
from .jitcache import fast_cache_loading
from .memory import EPILOGUE_AHEAD_PANELS, aligned_bytes, aligned_empty, last_level_cache_bytes, prefetch
from .quant import NO_SMOOTHING as NO_SMOOTHING  # re-exported: the layers read these two here
from .quant import (
    NO_SUMS,
    QMAX12,
    act_qmax,
    add_centre_block,
    check_scale_bias,
    dequantised_sums,
    layer_input,
    row_scale_centre,
)
from .quant import check_smooth as check_smooth

NR = 16                # output channels per panel: one zmm of int32 lanes
MR = 6                 # activation rows per VNNI micro-tile: 6 rows x 2 panels x (h, l) = 24 zmm
KQ_ALIGN = 64          # K is padded to this (one AMX tile row of bytes)
N_ALIGN = 2 * NR       # N is padded to a pair of panels (the AMX task width)
TILE_ROWS = 16         # AMX tile rows; M is padded to a multiple of it
MC_VNNI = 256          # rows per VNNI task: up to 256 rows share one pass over the weights
KCQ = 128              # VNNI k block in quads: a 128 x 64-byte panel slice (8 KiB) stays in L1
AMX_B_BYTES = 524_288  # AMX task width: as many panel pairs as keep their weights within 512 KiB (L2)
AMX_MAX_BLOCKS = 32    # AMX task height: at most 32 blocks (512 rows)
AMX_TASKS = 16         # parallel tasks to aim for (columns are split further when rows are few)
MAX_K = 200_000        # keeps every int32 byte-sum exact (32 * 255 * MAX_K < 2**31)
WIDE_K = 8192          # up to here |dot| <= 2047 * 127 * K < 2**31: the epilogue may use int32


_TARGET_VNNI = cpu.POLICY.target_vnni   # code generation follows the target alone (cpu.py)
_TARGET_AMX = cpu.POLICY.target_amx


def __getattr__(name: str):
    # AMX_AVAILABLE was a module constant, computed (and the AMX tile state requested) at import.  It is
    # now cpu.amx_available(), asked on first use; reading this name is such a use.
    if name == "AMX_AVAILABLE":
        return cpu.amx_available()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------
# Packing and activation splitting
# ----------------------------------------------------------------------------------------------

def pack_quads(wq: np.ndarray) -> np.ndarray:
    """Pack int8 weights [N, K] once, at load time, into the quad layout (see module docstring).

    Returns a C-contiguous uint8 array (ceil(N / 32) * 2, ceil(K / 64) * 16, 64): 1 byte per
    weight up to the padding.  Told apart from gemm.pack_weight's int8 pairs by its dtype.
    """
    wq = np.asarray(wq)
    if wq.ndim != 2 or wq.dtype != np.int8:
        raise TypeError("pack_quads expects int8 weights of shape [N, K]")
    n_dim, k_dim = wq.shape
    if k_dim > MAX_K:
        raise ValueError(f"K = {k_dim} exceeds the int8 kernels' limit of {MAX_K}")
    n_pad = -(-n_dim // N_ALIGN) * N_ALIGN
    k_pad = -(-k_dim // KQ_ALIGN) * KQ_ALIGN
    packed = aligned_empty((n_pad // NR, k_pad // 4, 4 * NR), np.uint8, fill=128)
    _pack_quads_into(np.ascontiguousarray(wq), packed)
    return packed


@njit(cache=True, nogil=True, error_model="numpy")
def _pack_quads_into(wq, packed):
    n_dim, k_dim = wq.shape
    for n in range(n_dim):
        p, j = n // NR, n % NR
        for k in range(k_dim):
            packed[p, k // 4, 4 * j + (k & 3)] = np.uint8(np.int16(wq[n, k]) + 128)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def quads_rows(wp, ids, out):
    """out[i] = row ids[i] of the int8 weight pack_quads packed into wp (out int8 [n, ≤ K]; ids checked by the
    caller): a tied token table's lookups read the LM head's packed copy, so the table is not held twice."""
    lanes = wp.shape[2] // 4
    for i in prange(ids.shape[0]):
        p, j = ids[i] // lanes, ids[i] % lanes
        for k in range(out.shape[1]):
            out[i, k] = np.int8(np.int16(wp[p, k // 4, 4 * j + (k & 3)]) - 128)


def is_quads(w: np.ndarray) -> bool:
    """True for the output of pack_quads (uint8, 3-d, last axis 64)."""
    return w.dtype == np.uint8 and w.ndim == 3 and w.shape[2] == 4 * NR


def _make_split(low_only: bool):
    @intrinsic
    def split_bytes(typingctx, row, centre, inv, hrow, lrow):
        """q = int(rint((row[k] - centre) * inv)); hrow[k], lrow[k] = h, l of q = 64 h + l; returns
        sum of q (int64).

        ``low_only`` (8-bit activations, |q| <= 127): h = 0, l = q, one signed byte.
        Contiguous 1-d rows. <16 x float> / <16 x i32> IR: written in Python, Numba widens the int32
        arithmetic to int64 and LLVM vectorised the loop four lanes at a time.  Same float32 product and
        round-half-even (``llvm.rint``) as np.rint((x - centre) * inv), so the integers equal gemm_pairs.py's.
        """
        for arr, dtype in ((row, types.float32), (hrow, types.int8), (lrow, types.int8)):
            if not (isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"):
                return None
        f32, i8, i32, i64 = ir.FloatType(), ir.IntType(8), ir.IntType(32), ir.IntType(64)

        def codegen(context, builder, signature, args):
            tys = signature.args
            x_p, h_p, l_p = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                             for i in (0, 3, 4)]
            n = builder.extract_value(cgutils.create_struct_proxy(tys[0])(context, builder, value=args[0]).shape, 0)
            centre = context.cast(builder, args[1], tys[1], types.float32)
            inv = context.cast(builder, args[2], tys[2], types.float32)

            def split(width, k):
                vf = ir.VectorType(f32, width) if width > 1 else f32
                vi = ir.VectorType(i32, width) if width > 1 else i32
                vb = ir.VectorType(i8, width) if width > 1 else i8

                def const(v):
                    return ir.Constant(vi, [v] * width) if width > 1 else ir.Constant(i32, v)

                suffix = f"v{width}f32" if width > 1 else "f32"
                rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf]), f"llvm.rint.{suffix}")
                x = builder.load(builder.bitcast(builder.gep(x_p, [k]), vf.as_pointer()), align=4)
                scale, shift = inv, centre
                if width > 1:
                    zeros = ir.Constant(ir.VectorType(i32, width), [0] * width)

                    def splat(v):
                        one = builder.insert_element(ir.Constant(vf, None), v, ir.Constant(i32, 0))
                        return builder.shuffle_vector(one, ir.Constant(vf, None), zeros)
                    scale, shift = splat(inv), splat(centre)
                q = builder.fptosi(builder.call(rint, [builder.fmul(builder.fsub(x, shift), scale)]), vi)
                if low_only:
                    lo, hi = q, const(0)
                else:
                    lo = builder.sub(builder.and_(builder.add(q, const(32)), const(63)), const(32))
                    hi = builder.ashr(builder.sub(q, lo), const(6))
                builder.store(builder.trunc(hi, vb), builder.bitcast(builder.gep(h_p, [k]), vb.as_pointer()), align=1)
                builder.store(builder.trunc(lo, vb), builder.bitcast(builder.gep(l_p, [k]), vb.as_pointer()), align=1)
                return q

            v16 = ir.VectorType(i32, 16)
            acc = cgutils.alloca_once_value(builder, ir.Constant(v16, [0] * 16))
            blocks = builder.udiv(n, ir.Constant(i64, 16))
            with cgutils.for_range(builder, blocks) as loop:
                q = split(16, builder.mul(loop.index, ir.Constant(i64, 16)))
                builder.store(builder.add(builder.load(acc), q), acc)   # |sum| <= 2047 * MAX_K / 16 per lane
            reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [v16]),
                                                    "llvm.vector.reduce.add.v16i32")
            total = cgutils.alloca_once_value(builder, builder.sext(builder.call(reduce, [builder.load(acc)]), i64))
            done = builder.mul(blocks, ir.Constant(i64, 16))
            with cgutils.for_range(builder, builder.sub(n, done)) as loop:
                q = split(1, builder.add(done, loop.index))
                builder.store(builder.add(builder.load(total), builder.sext(q, i64)), total)
            return builder.load(total)

        return types.int64(row, centre, inv, hrow, lrow), codegen

    return split_bytes


_split_bytes = _make_split(False)
_split_low = _make_split(True)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _split_row(x, m, xh, xl, xs, xc, xsum, qmax, smooth, scratch):
    """Quantise row m exactly as gemm_pairs._quantize_row_into does (8-bit rows centred), and store it
    split into bytes (8-bit rows, qmax <= 127: all of it in xl, xh zero).

    A non-empty ``smooth`` (the layer's 1 / smoothing factors, see blocks.Linear) quantises
    x[m] * smooth instead, formed in ``scratch`` (f32[1, K]) where it stays in L1: the same float32
    products as multiplying the whole input first, without a pass over it in memory."""
    if smooth.shape[0] > 0:
        src, i = scratch, 0
        row, x_row = scratch[0], x[m]
        for k in range(row.shape[0]):
            row[k] = x_row[k] * smooth[k]
    else:
        src, i = x, m
    scale, centre = row_scale_centre(src, i, qmax)
    xs[m] = scale
    xc[m] = centre
    if np.isnan(scale):          # non-finite row: zeros, and a NaN scale poisons the output
        xh[m, :x.shape[1]] = 0
        xl[m, :x.shape[1]] = 0
        xsum[m] = 0
        return
    k = x.shape[1]
    if qmax <= 127:
        xsum[m] = _split_low(src[i], centre, np.float32(1.0) / scale, xh[m, :k], xl[m, :k])
    else:
        xsum[m] = _split_bytes(src[i], centre, np.float32(1.0) / scale, xh[m, :k], xl[m, :k])


SPLIT_BLOCK = 16   # rows per task of the parallel split (one scratch row each)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _smoothing_scratch(x, smooth):
    """The scratch row _split_row forms x[m] * smooth in: f32[1, K], or [1, 0] when there is no smoothing."""
    return np.empty((1, x.shape[1] if smooth.shape[0] > 0 else 0), dtype=np.float32)

@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _split_rows_parallel(x, xh, xl, xs, xc, xsum, qmax, smooth):
    for b in prange((x.shape[0] + SPLIT_BLOCK - 1) // SPLIT_BLOCK):
        scratch = _smoothing_scratch(x, smooth)
        for m in range(b * SPLIT_BLOCK, min(x.shape[0], (b + 1) * SPLIT_BLOCK)):
            _split_row(x, m, xh, xl, xs, xc, xsum, qmax, smooth, scratch)


@njit(cache=True, nogil=True, error_model="numpy")
def _split_rows(x, xh, xl, xs, xc, xsum, qmax, smooth):
    if x.shape[0] * x.shape[1] < 32768:   # a fork/join costs more than a few rows of work
        scratch = _smoothing_scratch(x, smooth)
        for m in range(x.shape[0]):
            _split_row(x, m, xh, xl, xs, xc, xsum, qmax, smooth, scratch)
    else:
        _split_rows_parallel(x, xh, xl, xs, xc, xsum, qmax, smooth)


@njit(cache=True, nogil=True, error_model="numpy")
def split_quantized(xq, xh, xl, xsum):
    """Split already-quantised activations xq int16 [M, K] into xh, xl (int8) and row sums."""
    for m in range(xq.shape[0]):
        total = 0
        for k in range(xq.shape[1]):
            q = np.int32(xq[m, k])
            lo = ((q + 32) & 63) - 32
            xh[m, k] = np.int8((q - lo) >> 6)
            xl[m, k] = np.int8(lo)
            total += q
        xsum[m] = total


# ----------------------------------------------------------------------------------------------
# VNNI micro-kernel: tile[t_off + i*2*NR + j]      += sum_kq u[kq, j] . h[i, 4kq:4kq+4]
#                    tile[t_off + i*2*NR + NR + j] += sum_kq u[kq, j] . l[i, 4kq:4kq+4]
# for i < rows, j < NR, kq < kquads; u = the panel rows at wp[w_off + 64*kq].
# ----------------------------------------------------------------------------------------------

VNNI_PANELS = 2   # 16-channel panels per VNNI micro-tile (24 zmm accumulators for 6 rows)


def _make_vnni_microkernel(rows: int, emit: bool, parts: int = 2, compact: bool = False,
                           panels: int = VNNI_PANELS, prefetch_ahead: int = 0):
    """``rows`` (1..MR) x a pair of 16-channel panels x (h, l) in 4 * rows zmm accumulators.

    Tile row i holds [h of panel 0 | h of panel 1 | l of panel 0 | l of panel 1], 16 int32 each.
    Panel q's weights start at wp[w_off + q * w_pstride].  Each broadcast of four activation bytes
    feeds two vpdpbusd: 2 + 12 loads per 24 products (one panel took 1 + 12 per 12).

    ``parts`` = 1 (8-bit activations): only the l rows are read and only the l accumulators
    updated, so the h ones keep the tile's zeros; half the instructions of (h, l).

    ``compact`` (with parts = 1): tile rows hold l alone, [l of panel 0 | l of panel 1], and the
    kernel takes one more argument, ``first``: non-zero for the first k block, whose sums are
    stored rather than added (so the tile needs no zeroing, and is half the size).

    ``panels`` = 1 (one row, compact): one panel, read as one sequential stream (_gemv_vnni_low);
    ``prefetch_ahead`` > 0 prefetches that stream so many bytes ahead (irloop.prefetch).

    With ``emit`` False (target without AVX-512 VNNI, where the instruction could not be lowered)
    vpdpbusd is emulated in generic IR (``dpbusd_generic``): same sums, for tests.
    """
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16i32 = ir.VectorType(i32, 16)
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    assert parts == 1 or not compact
    ldt = (1 if compact else 2) * panels * NR

    def typed(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, *first):
        for arr, dtype in ((tile, types.int32), (xh, types.int8), (xl, types.int8), (wp, types.uint8)):
            if not isinstance(arr, types.Array) or arr.dtype != dtype:
                return None
        sig = types.void(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, *first)

        def codegen(context, builder, signature, args):
            tys = signature.args
            t_off_v, x_off_v, x_stride_v, w_off_v, w_pstride_v, kq_v = [
                context.cast(builder, args[i], tys[i], types.int64) for i in (1, 4, 5, 7, 8, 9)]
            data = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                    for i in (0, 2, 3, 6)]
            tile_p, xh_p, xl_p, w_p = data
            dp = dpbusd(builder, emit)
            row_ptrs = []                                 # h rows, then l rows
            for src in ((xh_p, xl_p) if parts == 2 else (xl_p,)):
                for i in range(rows):
                    off = builder.add(x_off_v, builder.mul(x_stride_v, ir.Constant(i64, i)))
                    row_ptrs.append(builder.bitcast(builder.gep(src, [off], source_etype=i8),
                                                    i32.as_pointer()))
            w_bases = [builder.bitcast(builder.gep(w_p, [builder.add(w_off_v, builder.mul(w_pstride_v,
                                                                                          ir.Constant(i64, q)))],
                                                   source_etype=i8), v16i32.as_pointer()) for q in range(panels)]
            # accs[part][q][i]: part 0 = h, 1 = l
            accs = [[[cgutils.alloca_once_value(builder, ir.Constant(v16i32, [0] * 16)) for _ in range(rows)]
                     for _ in range(panels)] for _ in range(parts)]
            with cgutils.for_range(builder, kq_v) as loop:
                kq = loop.index
                ws = [builder.load(builder.gep(w_bases[q], [kq], source_etype=v16i32), align=1, typ=v16i32)
                      for q in range(panels)]
                if prefetch_ahead:
                    prefetch_ir(builder, builder.gep(w_bases[0], [kq], source_etype=v16i32), prefetch_ahead)
                for part in range(parts):
                    for i in range(rows):
                        ptr = row_ptrs[part * rows + i]
                        four = builder.load(builder.gep(ptr, [kq], source_etype=i32), align=1, typ=i32)
                        bcast = builder.shuffle_vector(
                            builder.insert_element(ir.Constant(v16i32, None), four, ir.Constant(i32, 0)),
                            ir.Constant(v16i32, None), splat)
                        for q in range(panels):
                            acc = accs[part][q][i]
                            builder.store(dp(builder.load(acc, typ=v16i32), ws[q], bcast), acc)
            no_unroll(builder, loop.index)
            t_base = builder.gep(tile_p, [t_off_v], source_etype=i32)

            def write_back(add):
                for part in range(parts):
                    slot = 0 if compact else (part if parts == 2 else 1)
                    for q in range(panels):
                        for i in range(rows):
                            ptr = builder.bitcast(
                                builder.gep(t_base, [ir.Constant(i64, i * ldt + (slot * panels + q) * NR)],
                                            source_etype=i32), v16i32.as_pointer())
                            acc = builder.load(accs[part][q][i], typ=v16i32)
                            if add:
                                acc = builder.add(builder.load(ptr, align=4, typ=v16i32), acc)
                            builder.store(acc, ptr, align=4)
            if compact:
                first = context.cast(builder, args[10], tys[10], types.int64)
                with builder.if_else(builder.icmp_signed("!=", first, ir.Constant(i64, 0))) as (store, add):
                    with store:
                        write_back(False)
                    with add:
                        write_back(True)
            else:
                write_back(True)
            return context.get_dummy_value()

        return sig, codegen

    if compact:
        @intrinsic
        def microkernel_first(typingctx, tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first):
            return typed(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)
        return microkernel_first

    @intrinsic
    def microkernel(typingctx, tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads):
        return typed(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)

    return microkernel


_vk1, _vk2, _vk3, _vk4, _vk5, _vk6 = [_make_vnni_microkernel(r, _TARGET_VNNI) for r in range(1, MR + 1)]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vnni_microkernel(rows, tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads):
    # Always VNNI_PANELS panels: packed N is padded to a whole number of pairs (N_ALIGN), and the
    # padding channels' outputs are never stored. One family of variants keeps the compile short.
    if rows == 6:
        _vk6(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)
    elif rows == 5:
        _vk5(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)
    elif rows == 4:
        _vk4(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)
    elif rows == 3:
        _vk3(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)
    elif rows == 2:
        _vk2(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)
    else:
        _vk1(tile, t_off, xh, xl, x_off, x_stride, wp, w_off, w_pstride, kquads)


_vl1, _vl2, _vl3, _vl4, _vl5, _vl6 = [_make_vnni_microkernel(r, _TARGET_VNNI, parts=1, compact=True)
                                      for r in range(1, MR + 1)]
_vl1_single = _make_vnni_microkernel(1, _TARGET_VNNI, parts=1, compact=True, panels=1,
                                     prefetch_ahead=STREAM_PREFETCH_BYTES)
_vk1_single = _make_vnni_microkernel(1, _TARGET_VNNI, panels=1,     # _gemv_vnni: one 12-bit row, (h, l)
                                     prefetch_ahead=STREAM_PREFETCH_BYTES)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vnni_microkernel_low(rows, tile, t_off, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first):
    # 8-bit activations: the l plane alone (xl passed for both planes; the kernel reads only l), into a
    # compact tile (l only; the first k block stores, the others add).
    if rows == 6:
        _vl6(tile, t_off, xl, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)
    elif rows == 5:
        _vl5(tile, t_off, xl, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)
    elif rows == 4:
        _vl4(tile, t_off, xl, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)
    elif rows == 3:
        _vl3(tile, t_off, xl, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)
    elif rows == 2:
        _vl2(tile, t_off, xl, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)
    else:
        _vl1(tile, t_off, xl, xl, x_off, x_stride, wp, w_off, w_pstride, kquads, first)


# ----------------------------------------------------------------------------------------------
# AMX: one 16-row x 32-channel block over the whole K
# ----------------------------------------------------------------------------------------------

_AMX_CONFIG = np.zeros(64, dtype=np.uint8)
_AMX_CONFIG[0] = 1                                   # palette 1
for _t in range(8):                                  # every tile: 16 rows of 64 bytes
    _AMX_CONFIG[16 + 2 * _t] = 64
    _AMX_CONFIG[48 + _t] = TILE_ROWS


def _emulate_amx_block(builder, c_p, xh_p, xl_p, x_off, x_stride, w_p, w0, w1, kblocks):
    """amx_block's tile program in generic IR, for a target without AMX (tests).

    tdpbsud adds to C[m, j] the 64-term dot product of A row m (signed bytes) with B column j
    (unsigned bytes, 4 per k quad): for each k quad that is one vpdpbusd of B row kq with A[m, 4kq:4kq+4]
    broadcast, so the C rows accumulate in place in ``c_p`` (its rows are the 64-byte tile rows).
    """
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16i32 = ir.VectorType(i32, 16)
    splat = ir.Constant(v16i32, [0] * 16)

    def at(base, off, ty):
        return builder.bitcast(builder.gep(base, [off], source_etype=i8), ty.as_pointer())

    def const(n):
        return ir.Constant(i64, n)

    with cgutils.for_range(builder, const(4 * TILE_ROWS)) as loop:            # tilezero x 4
        builder.store(ir.Constant(v16i32, [0] * 16), at(c_p, builder.mul(loop.index, const(64)), v16i32), align=4)
    with cgutils.for_range(builder, kblocks) as kb_loop:
        a_off = builder.add(x_off, builder.mul(kb_loop.index, const(64)))
        b_step = builder.mul(kb_loop.index, const(64 * TILE_ROWS))
        with cgutils.for_range(builder, const(TILE_ROWS)) as m_loop:
            a_row = builder.add(a_off, builder.mul(m_loop.index, x_stride))
            for c, a_p, b_base in ((0, xh_p, w0), (1, xh_p, w1), (2, xl_p, w0), (3, xl_p, w1)):
                c_ptr = at(c_p, builder.add(const(1024 * c), builder.mul(m_loop.index, const(64))), v16i32)
                acc = builder.load(c_ptr, align=4)
                for kq in range(TILE_ROWS):
                    four = builder.load(at(a_p, builder.add(a_row, const(4 * kq)), i32), align=1)
                    bcast = builder.shuffle_vector(builder.insert_element(ir.Constant(v16i32, None), four,
                                                                          ir.Constant(i32, 0)),
                                                   ir.Constant(v16i32, None), splat)
                    b_row = builder.load(at(w_p, builder.add(builder.add(b_base, b_step), const(64 * kq)), v16i32),
                                         align=1)
                    acc = dpbusd_generic(builder, acc, b_row, bcast)
                builder.store(acc, c_ptr, align=4)


def _make_amx_intrinsics(emit: bool):
    i8, i64, void = ir.IntType(8), ir.IntType(64), ir.VoidType()
    ptr = i8.as_pointer()

    def declare(builder, name, args):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(void, args), name)

    @intrinsic
    def amx_begin(typingctx, cfg):
        """Load the tile configuration on the calling thread (tiles are per-thread state)."""
        if not isinstance(cfg, types.Array) or cfg.dtype != types.uint8:
            return None

        def codegen(context, builder, signature, args):
            if emit:
                data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0]).data
                builder.call(declare(builder, "llvm.x86.ldtilecfg", [ptr]), [builder.bitcast(data, ptr)])
            return context.get_dummy_value()

        return types.void(cfg), codegen

    @intrinsic
    def amx_end(typingctx):
        """Release the tile state (a thread that keeps it pays for it at every context switch)."""
        def codegen(context, builder, signature, args):
            if emit:
                builder.call(declare(builder, "llvm.x86.tilerelease", []), [])
            return context.get_dummy_value()

        return types.void(), codegen

    @intrinsic
    def amx_block(typingctx, ctile, xh, xl, x_off, x_stride, wp, w_off0, w_off1, kblocks):
        """ctile[0:256] = h x panel0, [256:512] = h x panel1, [512:768] = l x panel0, [768:] = l x panel1.

        Each 16 x 16 int32 (row-major); A rows start at x_off with x_stride bytes between rows;
        panel rows are 64 bytes, 16 per k block.
        """
        for arr, dtype in ((ctile, types.int32), (xh, types.int8), (xl, types.int8), (wp, types.uint8)):
            if not isinstance(arr, types.Array) or arr.dtype != dtype:
                return None
        sig = types.void(ctile, xh, xl, x_off, x_stride, wp, w_off0, w_off1, kblocks)

        def codegen(context, builder, signature, args):
            tys = signature.args
            x_off_v, x_stride_v, w0_v, w1_v, kb_v = [
                context.cast(builder, args[i], tys[i], types.int64) for i in (3, 4, 6, 7, 8)]
            c_p, xh_p, xl_p, w_p = [
                builder.bitcast(cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data, ptr)
                for i in (0, 1, 2, 5)]
            if not emit:
                _emulate_amx_block(builder, c_p, xh_p, xl_p, x_off_v, x_stride_v, w_p, w0_v, w1_v, kb_v)
                return context.get_dummy_value()
            load = declare(builder, "llvm.x86.tileloadd64", [i8, ptr, i64])
            dot = declare(builder, "llvm.x86.tdpbsud", [i8, i8, i8])
            zero = declare(builder, "llvm.x86.tilezero", [i8])
            store = declare(builder, "llvm.x86.tilestored64", [i8, ptr, i64])

            def reg(n):
                return ir.Constant(i8, n)

            for t in range(4):
                builder.call(zero, [reg(t)])
            with cgutils.for_range(builder, kb_v) as loop:
                a_off = builder.add(x_off_v, builder.mul(loop.index, ir.Constant(i64, 64)))
                b_step = builder.mul(loop.index, ir.Constant(i64, 64 * TILE_ROWS))
                builder.call(load, [reg(4), builder.gep(xh_p, [a_off], source_etype=i8), x_stride_v])
                builder.call(load, [reg(5), builder.gep(xl_p, [a_off], source_etype=i8), x_stride_v])
                builder.call(load, [reg(6), builder.gep(w_p, [builder.add(w0_v, b_step)], source_etype=i8),
                                    ir.Constant(i64, 64)])
                builder.call(load, [reg(7), builder.gep(w_p, [builder.add(w1_v, b_step)], source_etype=i8),
                                    ir.Constant(i64, 64)])
                for c, a, b in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)):
                    builder.call(dot, [reg(c), reg(a), reg(b)])
            for t in range(4):
                builder.call(store, [reg(t), builder.gep(c_p, [ir.Constant(i64, 1024 * t)], source_etype=i8),
                                     ir.Constant(i64, 64)])
            return context.get_dummy_value()

        return sig, codegen

    return amx_begin, amx_end, amx_block


_amx_begin, _amx_end, _amx_block = _make_amx_intrinsics(_TARGET_AMX)


def _make_combine16():
    """out[o + j] = float32(64 h[j] + l[j] - comp) * s * ws[n0 + j] + bias[n0 + j] for j < 16, vectorised.

    h = dots[h_off:], l = dots[l_off:] (int32).  The integer is formed in int64 when ``wide`` (K
    above WIDE_K, where the exact dot may pass int32), else in wrapping int32 arithmetic, which
    gives the exact value whenever that value fits; either way it is converted once to float32:
    the same rounding as the pairs path's float32(exact sum).  Multiplies and the add stay separate (no
    FMA contraction), in quant.py's order, so the result is bit-identical.
    """
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    v16i32, v16i64, v16f32 = ir.VectorType(i32, 16), ir.VectorType(i64, 16), ir.VectorType(f32, 16)
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

    @intrinsic
    def combine16(typingctx, dots, h_off, l_off, comp, s, ws, bias, n0, out, o, wide):
        if not (isinstance(dots, types.Array) and dots.dtype == types.int32):
            return None
        for arr in (ws, bias, out):
            if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
                return None
        sig = types.void(dots, h_off, l_off, comp, s, ws, bias, n0, out, o, wide)

        def codegen(context, builder, signature, args):
            tys = signature.args
            h_off_v, l_off_v, comp_v, n0_v, o_v, wide_v = [
                context.cast(builder, args[i], tys[i], types.int64) for i in (1, 2, 3, 7, 9, 10)]
            s_v = context.cast(builder, args[4], tys[4], types.float32)
            d_p, ws_p, b_p, out_p = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                                     for i in (0, 5, 6, 8)]

            def vload(base, off, ety, vty):
                ptr = builder.bitcast(builder.gep(base, [off], source_etype=ety), vty.as_pointer())
                return builder.load(ptr, align=4, typ=vty)

            def bcast(val, vty):
                return builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vty, None), val, ir.Constant(i32, 0)),
                    ir.Constant(vty, None), splat)

            h = vload(d_p, h_off_v, i32, v16i32)
            lo = vload(d_p, l_off_v, i32, v16i32)
            wide = builder.icmp_signed("!=", wide_v, ir.Constant(i64, 0))
            with builder.if_else(wide) as (then, otherwise):
                with then:       # the exact dot may exceed int32: form it in int64
                    h64, lo64 = builder.sext(h, v16i64), builder.sext(lo, v16i64)
                    d64 = builder.sub(builder.add(builder.shl(h64, ir.Constant(v16i64, [6] * 16)), lo64),
                                      bcast(comp_v, v16i64))
                    f_wide = builder.sitofp(d64, v16f32)
                    bb_wide = builder.block
                with otherwise:  # it fits int32, so wrapping int32 arithmetic gives it exactly
                    comp32 = builder.trunc(comp_v, i32)
                    d32 = builder.sub(builder.add(builder.shl(h, ir.Constant(v16i32, [6] * 16)), lo),
                                      bcast(comp32, v16i32))
                    f_narrow = builder.sitofp(d32, v16f32)
                    bb_narrow = builder.block
            dotf = builder.phi(v16f32)
            dotf.add_incoming(f_wide, bb_wide)
            dotf.add_incoming(f_narrow, bb_narrow)
            y = builder.fmul(dotf, bcast(s_v, v16f32))
            y = builder.fmul(y, vload(ws_p, n0_v, f32, v16f32))
            y = builder.fadd(y, vload(b_p, n0_v, f32, v16f32))
            ptr = builder.bitcast(builder.gep(out_p, [o_v], source_etype=f32), v16f32.as_pointer())
            builder.store(y, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return combine16


_combine16 = _make_combine16()


def _make_epilogue(panels: int, low: bool = False):
    """The epilogue of a whole tile (``rows`` rows x ``panels`` 16-channel panels, K <= WIDE_K) as one loop:

        out[o0 + r*ldo + 16*q + j] = float32(64 h - 128 xsum[m0 + r] + l) * xs[m0 + r] * ws[n0 + 16*q + j]
                                     + bias[n0 + 16*q + j]
                                     (+ xc[m0 + r] * wsum[n0 + 16*q + j] when wsum is not empty)

    with h = tile[t_off + r*ldt + q*pstride + j] and l = the same at + l_off.  The same arithmetic as
    ``_combine16``'s narrow branch, bit for bit, and then quant.add_centre_term's (centred 8-bit rows;
    here while the tile is in registers); written as one intrinsic because the per-16-channel
    calls, compiled inside the parallel loops, spent most of their time on spilled loop state and
    negative-index checks (measured: ~90 cycles per 16 outputs).

    ``low``: a compact tile of 8-bit rows (see _make_vnni_microkernel), h = 0 and not read: panel
    q's l at tile[t_off + r*ldt + q*pstride + j] (l_off unused).
    """
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    v16i32, v16f32 = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
    splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

    @intrinsic
    def epilogue(typingctx, tile, t_off, ldt, pstride, l_off, rows, out, o0, ldo, xsum, xs, m0, ws, bias, n0,
                 xc, wsum):
        if not (isinstance(tile, types.Array) and tile.dtype == types.int32
                and isinstance(xsum, types.Array) and xsum.dtype == types.int64):
            return None
        for arr in (out, xs, ws, bias, xc, wsum):
            if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
                return None
        sig = types.void(tile, t_off, ldt, pstride, l_off, rows, out, o0, ldo, xsum, xs, m0, ws, bias, n0, xc, wsum)

        def codegen(context, builder, signature, args):
            tys = signature.args
            t_off_v, ldt_v, pstride_v, l_off_v, rows_v, o0_v, ldo_v, m0_v, n0_v = [
                context.cast(builder, args[i], tys[i], types.int64) for i in (1, 2, 3, 4, 5, 7, 8, 11, 14)]
            c_p, out_p, xsum_p, xs_p, ws_p, b_p, xc_p, wsum_p = [
                cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                for i in (0, 6, 9, 10, 12, 13, 15, 16)]
            wsum_arr = cgutils.create_struct_proxy(tys[16])(context, builder, value=args[16])
            wsum_n = builder.extract_value(wsum_arr.shape, 0)

            def vptr(base, off, ety, vty):
                return builder.bitcast(builder.gep(base, [off], source_etype=ety), vty.as_pointer())

            def bcast(val, vty):
                return builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vty, None), val, ir.Constant(i32, 0)),
                    ir.Constant(vty, None), splat)

            def const(n):
                return ir.Constant(i64, n)

            ws_v = [builder.load(vptr(ws_p, builder.add(n0_v, const(16 * q)), f32, v16f32), align=4)
                    for q in range(panels)]
            b_v = [builder.load(vptr(b_p, builder.add(n0_v, const(16 * q)), f32, v16f32), align=4)
                   for q in range(panels)]

            def rows_loop(centred):
                if centred:
                    sum_v = [builder.load(vptr(wsum_p, builder.add(n0_v, const(16 * q)), f32, v16f32), align=4)
                             for q in range(panels)]
                with cgutils.for_range(builder, rows_v) as loop:
                    r = loop.index
                    m = builder.add(m0_v, r)
                    comp = builder.shl(builder.trunc(builder.load(builder.gep(xsum_p, [m], source_etype=i64)), i32),
                                       ir.Constant(i32, 7))
                    scale = bcast(builder.load(builder.gep(xs_p, [m], source_etype=f32)), v16f32)
                    if centred:
                        centre = bcast(builder.load(builder.gep(xc_p, [m], source_etype=f32)), v16f32)
                    o_row = builder.add(o0_v, builder.mul(r, ldo_v))
                    t_row = builder.add(t_off_v, builder.mul(r, ldt_v))
                    for q in range(panels):
                        t_q = builder.add(t_row, builder.mul(pstride_v, const(q)))
                        if low:
                            dot = builder.sub(builder.load(vptr(c_p, t_q, i32, v16i32), align=4),
                                              bcast(comp, v16i32))
                        else:
                            h = builder.load(vptr(c_p, t_q, i32, v16i32), align=4)
                            lo = builder.load(vptr(c_p, builder.add(t_q, l_off_v), i32, v16i32), align=4)
                            # Wrapping int32 arithmetic gives the exact integer whenever it fits int32
                            # (K <= WIDE_K).
                            dot = builder.sub(builder.add(builder.shl(h, ir.Constant(v16i32, [6] * 16)), lo),
                                              bcast(comp, v16i32))
                        y = builder.fmul(builder.sitofp(dot, v16f32), scale)
                        y = builder.fadd(builder.fmul(y, ws_v[q]), b_v[q])
                        if centred:
                            y = builder.fadd(y, builder.fmul(centre, sum_v[q]))
                        builder.store(y, vptr(out_p, builder.add(o_row, const(16 * q)), f32, v16f32), align=4)

            # wsum's vectors are read only when it has them (an empty wsum: rows that are not centred).
            with builder.if_else(builder.icmp_signed(">", wsum_n, ir.Constant(i64, 0))) as (centred, plain):
                with centred:
                    rows_loop(True)
                with plain:
                    rows_loop(False)
            return context.get_dummy_value()

        return sig, codegen

    return epilogue


_epilogue2 = _make_epilogue(2)   # both drivers run two-panel (32-channel) tiles
_epilogue2_low = _make_epilogue(2, low=True)
_epilogue1_low = _make_epilogue(1, low=True)   # _gemv_vnni_low's one-panel tiles
_epilogue1 = _make_epilogue(1)                 # _gemv_vnni's: [h | l] of one panel


# ----------------------------------------------------------------------------------------------
# Drivers
# ----------------------------------------------------------------------------------------------

# inline="always" matters here and for _vnni_microkernel: a call between jitted functions
# increfs/decrefs every array argument, atomics that the two threads bounce between their caches
# (it made the AMX GEMM 4x slower).
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _finish(out, n_dim, m, n0, ncols, dots, h_off, l_off, xsum, xs, ws, bias, wide):
    """out[m*n_dim + n0 + j] = float32(64 h_j + l_j - 128 xsum[m]) * xs[m] * ws[n0 + j] + bias[n0 + j].

    h_j = dots[h_off + j], l_j = dots[l_off + j]; the integer is exact in int64, and float32 of
    it is the same rounding the pairs epilogue makes.
    """
    comp = np.int64(128) * xsum[m]
    s = xs[m]
    if ncols == NR:
        _combine16(dots, h_off, l_off, comp, s, ws, bias, n0, out, m * n_dim + n0, wide)
        return
    for j in range(ncols):
        dot = np.int64(64) * np.int64(dots[h_off + j]) + np.int64(dots[l_off + j]) - comp
        out[m * n_dim + n0 + j] = np.float32(dot) * s * ws[n0 + j] + bias[n0 + j]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemm_vnni(xh, xl, xsum, xs, wp, ws, bias, out, low, xc, wsum):
    m_rows, n_dim = out.shape
    kp = xh.shape[1]
    kq = wp.shape[1]
    n_groups = wp.shape[0] // VNNI_PANELS     # packed panels come in whole pairs (N_ALIGN)
    # int32 per tile row: h and l of each panel; 8-bit rows (low) have no h, and a compact tile.
    width = (1 if low else 2) * VNNI_PANELS * NR
    wide = kp > WIDE_K
    out_flat = out.reshape(out.size)
    x_h = xh.reshape(xh.size)
    x_l = xl.reshape(xl.size)
    w = wp.reshape(wp.size)
    n_chunks = (m_rows + MC_VNNI - 1) // MC_VNNI
    chunk_rows = ((m_rows + n_chunks - 1) // n_chunks + MR - 1) // MR * MR
    n_chunks = (m_rows + chunk_rows - 1) // chunk_rows
    for task in prange(n_chunks * n_groups):
        chunk = task // n_groups
        p = (task - chunk * n_groups) * VNNI_PANELS
        m0 = chunk * chunk_rows
        rows = min(chunk_rows, m_rows - m0)
        # NR more int32 after the rows: zeros, the h that _finish reads for a compact tile.
        tile = aligned_bytes((rows * width + NR) * 4).view(np.int32)
        if low:
            tile[rows * width:] = 0     # the first k block stores its sums: no zeroing of the rest
        else:
            tile[:] = 0
        for kc0 in range(0, kq, KCQ):
            kc1 = min(kq, kc0 + KCQ)
            w_off = (p * kq + kc0) * 4 * NR
            for r0 in range(0, rows, MR):
                if low:     # 8-bit activations: xh is all zeros, skip its half of the products
                    _vnni_microkernel_low(min(MR, rows - r0), tile, r0 * width, x_l,
                                          (m0 + r0) * kp + 4 * kc0, kp, w, w_off, kq * 4 * NR, kc1 - kc0, kc0 == 0)
                else:
                    _vnni_microkernel(min(MR, rows - r0), tile, r0 * width, x_h, x_l,
                                      (m0 + r0) * kp + 4 * kc0, kp, w, w_off, kq * 4 * NR, kc1 - kc0)
        n0 = p * NR
        ncols = min(VNNI_PANELS * NR, n_dim - n0)
        if ncols == VNNI_PANELS * NR and not wide:
            if low:
                _epilogue2_low(tile, 0, width, NR, 0, rows, out_flat, m0 * n_dim + n0, n_dim, xsum, xs, m0,
                               ws, bias, n0, xc, wsum)
            else:
                _epilogue2(tile, 0, width, NR, VNNI_PANELS * NR, rows, out_flat, m0 * n_dim + n0, n_dim, xsum, xs,
                           m0, ws, bias, n0, xc, wsum)
        else:
            # A partial last pair (or K past WIDE_K): tile row r holds h at [q*NR], l at [(2 + q)*NR]; a
            # compact one l at [q*NR], and h is the zeros after the rows.
            for r in range(rows):
                for q in range(VNNI_PANELS):
                    nq = n0 + q * NR
                    if nq < n_dim:
                        h_off = rows * width if low else r * width + q * NR
                        l_off = r * width + q * NR if low else r * width + (VNNI_PANELS + q) * NR
                        _finish(out_flat, n_dim, m0 + r, nq, min(NR, n_dim - nq), tile, h_off, l_off, xsum, xs,
                                ws, bias, wide)
            if wsum.shape[0] > 0:
                add_centre_block(out_flat, n_dim, m0, rows, n0, ncols, xc, wsum)


ROW_BANDS_MAX = 64
"""Up to this many rows a GEMM splits its rows, not its columns, over the threads (_gemm_vnni_bands)."""
ROW_BANDS_MIN = 8
"""... and from this many: one row would read every weight on each thread for one row of work."""
ROW_BANDS_WEIGHTS = last_level_cache_bytes() // 2
"""Bands only for a model whose int8 weights take at most this (see blocks.use_row_bands): each thread
reads every weight, which is cheap from cache (MiniLM, 10.6 MB: 1 x 16 18 % faster) and not from
memory (BERT-base, 85 MB: 1 x 16 7.6 -> 9.2 ms)."""


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemm_vnni_bands(x, xh, xl, xsum, xs, xc, qmax, smooth, wp, ws, bias, out, wsum, parts):
    """Quantise x to 8-bit rows (qmax <= 127) and multiply it, a few rows (ROW_BANDS_MIN..ROW_BANDS_MAX)
    at a time: ``parts``
    tasks each take a band of rows whole, quantise it, run it against every weight panel and finish
    it.  A band's activations never leave the core that made them, and its input rows are the ones
    that core wrote if the previous kernel split rows the same way (LayerNorm, GELU).  The column
    split had every core read every quantised row (written by one core) and then wait for the whole
    split; at 16 rows that hand-over cost more than the two cores' extra weight reads (each now
    streams all of a layer's weights, from L2/L3).  8-bit rows only: the 12-bit kernels would double
    this function's compile time (8 s of a 33 s cold start) for layers no shipped model has."""
    m_rows, n_dim = out.shape
    kp = xh.shape[1]
    kq = wp.shape[1]
    n_groups = wp.shape[0] // VNNI_PANELS
    width = VNNI_PANELS * NR                  # a compact tile: l only
    wide = kp > WIDE_K
    out_flat = out.reshape(out.size)
    x_l = xl.reshape(xl.size)
    w = wp.reshape(wp.size)
    band = (m_rows + parts - 1) // parts
    for part in prange(parts):
        m0 = part * band
        rows = min(band, m_rows - m0)
        if rows > 0:
            scratch = _smoothing_scratch(x, smooth)
            for m in range(m0, m0 + rows):
                _split_row(x, m, xh, xl, xs, xc, xsum, qmax, smooth, scratch)
            tile = aligned_bytes((rows * width + NR) * 4).view(np.int32)
            tile[rows * width:] = 0
            for g in range(n_groups):
                p = g * VNNI_PANELS
                for kc0 in range(0, kq, KCQ):
                    kc1 = min(kq, kc0 + KCQ)
                    w_off = (p * kq + kc0) * 4 * NR
                    for r0 in range(0, rows, MR):
                        _vnni_microkernel_low(min(MR, rows - r0), tile, r0 * width, x_l, (m0 + r0) * kp + 4 * kc0,
                                              kp, w, w_off, kq * 4 * NR, kc1 - kc0, kc0 == 0)
                n0 = p * NR
                ncols = min(VNNI_PANELS * NR, n_dim - n0)
                if ncols == VNNI_PANELS * NR and not wide:
                    _epilogue2_low(tile, 0, width, NR, 0, rows, out_flat, m0 * n_dim + n0, n_dim, xsum, xs, m0,
                                   ws, bias, n0, xc, wsum)
                else:       # a partial last pair (or K past WIDE_K): l at [r*width + q*NR], h the zeros after
                    for r in range(rows):
                        for q in range(VNNI_PANELS):
                            nq = n0 + q * NR
                            if nq < n_dim:
                                _finish(out_flat, n_dim, m0 + r, nq, min(NR, n_dim - nq), tile, rows * width,
                                        r * width + q * NR, xsum, xs, ws, bias, wide)
                    if wsum.shape[0] > 0:
                        add_centre_block(out_flat, n_dim, m0, rows, n0, ncols, xc, wsum)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_epilogue(ws, bias, wsum, n0):
    # A later panel's scales, bias and sums: read from memory beside the weight stream, each cost a miss per panel
    # (the int4 GEMV's chain took 1.19x its kernels' time without this, 1.05-1.09x with).
    ahead = n0 + EPILOGUE_AHEAD_PANELS * NR
    prefetch(ws, ahead, False)
    prefetch(bias, ahead, False)
    if wsum.shape[0] > 0:
        prefetch(wsum, ahead, False)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemv_vnni_low(xl, xsum, xs, xc, wp, ws, bias, out, wsum, parts):
    """One 8-bit row (quantised into xl [1, Kp]) against every weight panel: the decode step of a batch-1
    generation, bound by the weight bytes it reads.  Each of ``parts`` tasks (one per thread) takes one
    contiguous run of panels and reads it front to back, one panel over the whole K at a time, so that
    each thread's reads are a single sequential stream (what the hardware prefetchers follow best).

    Measured on Zen 4, GPT-2's 49 decode GEMVs from memory in turn, 2 threads, alternating step by step
    in one process: panel pairs read side by side (two streams per thread, a new one every 24 KB at
    K = 768) took 4.6-5.0 ms per chain, one panel at a time 3.9-4.2 ms (0.78-0.91x; the K = 768 layers
    and the LM head gained, the K = 3072 one was unchanged).  Before that, the column split's tasks of
    one pair and one k block each allocated a tile and ran a loop nest per 24 KB (1 thread 14.2 ->
    16.8 GB/s).  Software prefetch 0.5-2 KB ahead did not help; 10 KB ahead (irloop.STREAM_PREFETCH_BYTES) does:
    the same chain of a 135M (0.5B) shape's 120 (96) GEMVs, kernels alone, 33 -> 38.5 GB/s (35 -> 39)."""
    n_dim = out.shape[1]
    kp = xl.shape[1]
    kq = wp.shape[1]
    n_panels = (n_dim + NR - 1) // NR      # padding panels past N are never read
    wide = kp > WIDE_K
    out_flat = out.reshape(out.size)
    x_l = xl.reshape(xl.size)
    w = wp.reshape(wp.size)
    per = (n_panels + parts - 1) // parts
    for part in prange(parts):
        # NR int32 of l, then NR zeros: the h that _finish reads for a compact tile.
        tile = aligned_bytes(2 * NR * 4).view(np.int32)
        tile[NR:] = 0
        for p in range(part * per, min(n_panels, (part + 1) * per)):
            _prefetch_epilogue(ws, bias, wsum, p * NR)
            _vl1_single(tile, 0, x_l, x_l, 0, kp, w, p * kq * 4 * NR, kq * 4 * NR, kq, 1)
            n0 = p * NR
            ncols = min(NR, n_dim - n0)
            if ncols == NR and not wide:
                _epilogue1_low(tile, 0, NR, NR, 0, 1, out_flat, n0, n_dim, xsum, xs, 0, ws, bias, n0, xc, wsum)
            else:
                _finish(out_flat, n_dim, 0, n0, ncols, tile, NR, 0, xsum, xs, ws, bias, wide)
                if wsum.shape[0] > 0:
                    add_centre_block(out_flat, n_dim, 0, 1, n0, ncols, xc, wsum)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemv_vnni(xh, xl, xsum, xs, wp, ws, bias, out, parts):
    """_gemv_vnni_low for one 12-bit row (planes xh, xl [1, Kp]): the same single sequential stream
    of panels per thread, each panel read once against both planes.  The general driver ran one row
    as a 6-row tile by column pairs and k blocks: a 12-bit decode step took 1.2-1.3x the 8-bit one
    (Zen 4, a Llama-shaped chain of GEMVs from memory), for bytes read that are the same."""
    n_dim = out.shape[1]
    kp = xl.shape[1]
    kq = wp.shape[1]
    n_panels = (n_dim + NR - 1) // NR
    wide = kp > WIDE_K
    out_flat = out.reshape(out.size)
    x_h = xh.reshape(xh.size)
    x_l = xl.reshape(xl.size)
    w = wp.reshape(wp.size)
    per = (n_panels + parts - 1) // parts
    for part in prange(parts):
        tile = aligned_bytes(2 * NR * 4).view(np.int32)     # [h | l] of one panel
        for p in range(part * per, min(n_panels, (part + 1) * per)):
            _prefetch_epilogue(ws, bias, NO_SUMS, p * NR)
            tile[:] = 0
            _vk1_single(tile, 0, x_h, x_l, 0, kp, w, p * kq * 4 * NR, kq * 4 * NR, kq)
            n0 = p * NR
            ncols = min(NR, n_dim - n0)
            if ncols == NR and not wide:
                _epilogue1(tile, 0, 2 * NR, NR, NR, 1, out_flat, n0, n_dim, xsum, xs, 0, ws, bias, n0,
                           NO_SUMS, NO_SUMS)
            else:
                _finish(out_flat, n_dim, 0, n0, ncols, tile, 0, NR, xsum, xs, ws, bias, wide)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemm_amx(xh, xl, xsum, xs, wp, ws, bias, out, cfg, xc, wsum):
    m_rows, n_dim = out.shape
    kp = xh.shape[1]
    kq = wp.shape[1]
    n_pairs = (n_dim + 2 * NR - 1) // (2 * NR)
    wide = kp > WIDE_K
    out_flat = out.reshape(out.size)
    n_blocks = (m_rows + TILE_ROWS - 1) // TILE_ROWS
    # Tasks are (row chunk, group of panel pairs). Within a task each 16-row block of A (kp * 32
    # bytes) stays in L1 while it meets every pair of the group, whose weights (up to AMX_B_BYTES)
    # stay in L2 across the chunk's blocks; and the block's output is written a whole row segment
    # at a time. (Pair-outer order wrote each row 128 bytes at a time, a page apart, and ran the
    # 4160 x 1152 x 384 QKV GEMM at a third of the speed of the same work on 256 rows.)
    group = max(1, min(n_pairs, AMX_B_BYTES // (2 * NR * kp)))
    n_chunks = (n_blocks + AMX_MAX_BLOCKS - 1) // AMX_MAX_BLOCKS
    while n_chunks * ((n_pairs + group - 1) // group) < AMX_TASKS and group > 1:
        group = (group + 1) // 2          # few rows: split the columns instead, to feed every thread
    n_groups = (n_pairs + group - 1) // group
    chunk_blocks = (n_blocks + n_chunks - 1) // n_chunks
    for task in prange(n_chunks * n_groups):
        chunk = task // n_groups
        g = task - chunk * n_groups
        _amx_begin(cfg)
        ctile = aligned_bytes(4 * TILE_ROWS * NR * 4).view(np.int32)
        for b in range(chunk * chunk_blocks, min(n_blocks, (chunk + 1) * chunk_blocks)):
            rows = min(TILE_ROWS, m_rows - b * TILE_ROWS)
            for q in range(g * group, min(n_pairs, (g + 1) * group)):
                _amx_block(ctile, xh, xl, b * TILE_ROWS * kp, kp, wp, 2 * q * kq * 4 * NR,
                           (2 * q + 1) * kq * 4 * NR, kp // KQ_ALIGN)
                n0 = q * 2 * NR
                ncols = min(2 * NR, n_dim - n0)
                if ncols == 2 * NR and not wide:
                    # Tiles 0-1 hold h of the two panels, 2-3 l: 16 int32 per tile row.
                    _epilogue2(ctile, 0, NR, TILE_ROWS * NR, 2 * TILE_ROWS * NR, rows, out_flat,
                               b * TILE_ROWS * n_dim + n0, n_dim, xsum, xs, b * TILE_ROWS, ws, bias, n0, xc, wsum)
                else:
                    for r in range(rows):
                        # Channel j < 16 sits in tile 0 (h) / 2 (l) at [r, j]; j >= 16 in tile 1 / 3.
                        m = b * TILE_ROWS + r
                        h0 = r * NR
                        _finish(out_flat, n_dim, m, n0, min(NR, ncols), ctile, h0, h0 + 2 * TILE_ROWS * NR, xsum,
                                xs, ws, bias, wide)
                        if ncols > NR:
                            h1 = h0 + TILE_ROWS * NR
                            _finish(out_flat, n_dim, m, n0 + NR, ncols - NR, ctile, h1, h1 + 2 * TILE_ROWS * NR,
                                    xsum, xs, ws, bias, wide)
                    if wsum.shape[0] > 0:
                        add_centre_block(out_flat, n_dim, b * TILE_ROWS, rows, n0, ncols, xc, wsum)
        _amx_end()


def _check_quads(wp, k_dim, n_dim):
    if not is_quads(wp):
        raise TypeError(f"expected a pack_quads() result (uint8 [N/{NR}, K/4, {4 * NR}]), got {wp.dtype} {wp.shape}")
    if wp.shape[1] != -(-k_dim // KQ_ALIGN) * KQ_ALIGN // 4 or wp.shape[0] != -(-n_dim // N_ALIGN) * N_ALIGN // NR:
        raise ValueError(f"packed weight {wp.shape} does not match K={k_dim}, N={n_dim}")


def _split_buffers(m_rows, k_dim):
    """Zeroed, 64-byte-aligned byte planes [M padded to 16, K padded to 64] (padding must contribute
    nothing)."""
    shape = (-(-m_rows // TILE_ROWS) * TILE_ROWS, -(-k_dim // KQ_ALIGN) * KQ_ALIGN)
    return aligned_empty(shape, np.int8, fill=0), aligned_empty(shape, np.int8, fill=0), np.empty(m_rows, np.int64)


def _run(xh, xl, xsum, xs, wp, ws, bias, out, path):
    if out.shape[0] == 0:
        return
    if path == "amx":
        _gemm_amx(xh, xl, xsum, xs, wp, ws, bias, out, _AMX_CONFIG, NO_SUMS, NO_SUMS)
    else:
        _gemm_vnni(xh, xl, xsum, xs, wp, ws, bias, out, False, NO_SUMS, NO_SUMS)


def qlinear_quads(xq: np.ndarray, xs: np.ndarray, wp: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                  out: np.ndarray, path: str | None = None) -> None:
    """out[m, n] = xs[m] * ws[n] * (xq[m] . wq[n]) + bias[n] with ``wp = pack_quads(wq)``: the drivers on
    given integers (tests reach extreme sums with it; layers quantise in ``linear_quads``).

    xq int16 [M, K] (|xq| <= ACT_QMAX), xs f32[M], ws f32[N], bias f32[N], out f32[M, N].
    path: None (AMX for M >= AMX_MIN_ROWS where available, else VNNI), "vnni" or "amx" (on a CPU
    without the instructions these two run an exact emulation of them: the same result, for tests).
    """
    m_rows, k_dim = xq.shape
    _check_quads(wp, k_dim, ws.shape[0])
    path = quads_path(path, m_rows)
    xh, xl, xsum = _split_buffers(m_rows, k_dim)
    split_quantized(np.ascontiguousarray(xq, dtype=np.int16), xh, xl, xsum)
    _run(xh, xl, xsum, xs, wp, ws, bias, out, path)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _input_buffers(x, wp):
    """The split activations' buffers for x f32[M, K] against quad-packed wp: xh, xl int8 [Mp, Kp]
    (rows padded to TILE_ROWS, K to the packing's), with their padding zeroed, and the per-row
    xsum, xs, xc."""
    m_rows, k_dim = x.shape
    kp = wp.shape[1] * 4
    mp = (m_rows + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS
    # Tile rows must start on cache lines (see memory.py); only the padding needs zeros, as the
    # split writes every other byte (zeroing all of it cost ~10 % of a GEMM).
    xh = aligned_bytes(mp * kp).view(np.int8).reshape((mp, kp))
    xl = aligned_bytes(mp * kp).view(np.int8).reshape((mp, kp))
    xh[m_rows:] = 0
    xl[m_rows:] = 0
    if kp > k_dim:
        xh[:m_rows, k_dim:] = 0
        xl[:m_rows, k_dim:] = 0
    return xh, xl, np.empty(m_rows, dtype=np.int64), np.empty(m_rows, dtype=np.float32), \
        np.empty(m_rows, dtype=np.float32)


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_quads(x, wp, ws, bias, out, qmax, wsum, smooth, threads, row_bands):
    """Split-quantise x and run the VNNI GEMM in one compiled call (a Python-level sequence of
    allocations and calls cost ~10 us per layer, a third of a small GEMM).  8-bit rows are
    centred (qmax <= 127): ``wsum`` = quant.weight_sums, else quant.NO_SUMS; the epilogues add
    the centre term back to each tile (a pass over the whole output afterwards ran serially and
    streamed it from L2).  ``smooth``: multiply x by it first (per input channel; NO_SUMS: no).
    ``threads``: the thread count.  One row takes _gemv_vnni_low (8-bit) or _gemv_vnni (12-bit), one stream per thread;
    ROW_BANDS_MIN..ROW_BANDS_MAX 8-bit rows of a ``row_bands`` layer (a model whose weights stay in
    cache) are split by rows (_gemm_vnni_bands); the rest by columns (_gemm_vnni).  The same result
    either way, bit for bit.  The AMX driver has its own entry point, _linear_quads_amx: compiled in
    here, it added 4.7 s to every cold start on CPUs that never run it."""
    m_rows = x.shape[0]
    if m_rows == 1 and qmax <= 127:
        kp = wp.shape[1] * 4
        xl = aligned_bytes(kp).view(np.int8).reshape((1, kp))
        xl[0, x.shape[1]:] = 0
        xsum = np.empty(1, dtype=np.int64)
        xs = np.empty(1, dtype=np.float32)
        xc = np.empty(1, dtype=np.float32)
        # An 8-bit row's h plane is all zeros and never read: xl stands in for it (its l bytes are written last).
        _split_row(x, 0, xl, xl, xs, xc, xsum, qmax, smooth, _smoothing_scratch(x, smooth))
        _gemv_vnni_low(xl, xsum, xs, xc, wp, ws, bias, out, wsum, max(1, threads))
        return
    if m_rows == 1:
        kp = wp.shape[1] * 4
        xh = aligned_bytes(kp).view(np.int8).reshape((1, kp))
        xl = aligned_bytes(kp).view(np.int8).reshape((1, kp))
        xh[0, x.shape[1]:] = 0
        xl[0, x.shape[1]:] = 0
        xsum = np.empty(1, dtype=np.int64)
        xs = np.empty(1, dtype=np.float32)
        xc = np.empty(1, dtype=np.float32)
        _split_row(x, 0, xh, xl, xs, xc, xsum, qmax, smooth, _smoothing_scratch(x, smooth))
        _gemv_vnni(xh, xl, xsum, xs, wp, ws, bias, out, max(1, threads))
        return
    xh, xl, xsum, xs, xc = _input_buffers(x, wp)
    if row_bands and threads > 1 and ROW_BANDS_MIN <= m_rows <= ROW_BANDS_MAX and qmax <= 127:
        _gemm_vnni_bands(x, xh, xl, xsum, xs, xc, qmax, smooth, wp, ws, bias, out, wsum, min(threads, m_rows // 4))
        return
    _split_rows(x, xh, xl, xs, xc, xsum, qmax, smooth)
    _gemm_vnni(xh, xl, xsum, xs, wp, ws, bias, out, qmax <= 127, xc, wsum)


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_quads_amx(x, wp, ws, bias, out, cfg, qmax, wsum, smooth):
    """_linear_quads on the AMX driver."""
    xh, xl, xsum, xs, xc = _input_buffers(x, wp)
    _split_rows(x, xh, xl, xs, xc, xsum, qmax, smooth)
    _gemm_amx(xh, xl, xsum, xs, wp, ws, bias, out, cfg, xc, wsum)


def _linear(x: np.ndarray, wp: np.ndarray, ws: np.ndarray, bias: np.ndarray, out: np.ndarray, amx: bool,
            qmax: np.float32, wsum: np.ndarray, smooth: np.ndarray, threads: int, row_bands: bool) -> None:
    if amx:
        _linear_quads_amx(x, wp, ws, bias, out, _AMX_CONFIG, qmax, wsum, smooth)
    else:
        _linear_quads(x, wp, ws, bias, out, qmax, wsum, smooth, threads, row_bands)


def linear_quads(x: np.ndarray, wp: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                 path: str | None = None, act_bits: int = 12) -> np.ndarray:
    """y = dequant(W) x for float32 x [M, K] and quad-packed weights (see gemm.linear_int8)."""
    m_rows, k_dim = x.shape
    n_dim = ws.shape[0]
    _check_quads(wp, k_dim, n_dim)
    path = quads_path(path, m_rows)
    qmax = act_qmax(act_bits)
    wsum = quads_weight_sums(wp, ws) if act_bits == 8 else NO_SUMS
    out = np.empty((m_rows, n_dim), dtype=np.float32)
    if m_rows:
        _linear(np.ascontiguousarray(x, dtype=np.float32), wp, ws, bias, out, path == "amx", qmax, wsum,
                NO_SMOOTHING, numba.get_num_threads(), False)
    return out


def quads_weight_sums(wp: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """quant.weight_sums of the int8 weight that ``pack_quads`` packed into wp (padding is 128 = 0)."""
    panels, kquads, width = wp.shape
    sums = wp.reshape(panels, kquads, width // 4, 4).sum(axis=(1, 3), dtype=np.int64).reshape(-1) - 128 * 4 * kquads
    return dequantised_sums(sums, ws)


def linear_quads_checked_weights(x: np.ndarray, wp: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                                 k_dim: int, qmax: np.float32 = QMAX12, wsum: np.ndarray = NO_SUMS,
                                 smooth: np.ndarray = NO_SMOOTHING, threads: int = 1,
                                 row_bands: bool = False) -> np.ndarray:
    """``linear_quads`` for a layer whose ``wp``, ``ws``, ``bias``, true input width ``k_dim`` and
    activation range ``qmax`` (``quant.act_qmax``) were checked once with ``check_layer`` (at load),
    and, for an 8-bit layer, ``wsum`` (quant.weight_sums) with ``quant.check_wsum``.  A non-empty
    ``smooth`` (f32[k_dim], checked with ``check_smooth``) multiplies x per input channel first, as
    the quantiser reads it: the result of ``linear_quads(x * smooth, ...)``, bit for bit.  ``threads``
    (numba.get_num_threads(), which the caller has) and ``row_bands``: see _linear_quads (the same
    result either way).

    Only x is checked here: at batch 1 the full per-call validation and dispatch cost ~8 us of a
    ~40 us GEMM, 24 times per MiniLM forward. (The packing pads K to 64, so only the layer knows
    its true K: an input of the wrong width is an error here, not zeros quietly appended.)
    """
    x = layer_input(x, k_dim)
    out = np.empty((x.shape[0], ws.shape[0]), dtype=np.float32)
    if x.shape[0]:
        _linear(x, wp, ws, bias, out, amx_for(x.shape[0]), qmax, wsum, smooth, threads, row_bands)
    return out


def check_layer(wp: np.ndarray, ws: np.ndarray, bias: np.ndarray, k_dim: int) -> None:
    """Validate a quad-packed layer once: packing, scales and bias agree with K and N."""
    _check_quads(wp, k_dim, ws.shape[0])
    check_scale_bias(ws, bias)



fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
