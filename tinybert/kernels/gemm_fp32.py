"""fp32 linear layers: y = x @ W.T + b on packed float32 panels, Numba threads, no BLAS.

Same structure as the int8 pairs path (gemm_pairs.py), without BLAS, whose spinning threads would
fight Numba's for the cores between kernels: weights packed once into column panels of NR output
channels, ``packed[p, k, j] = w[p*NR + j, k]`` (zero padded), and an MR x (F32_PANELS * NR) register
tile of ``<16 x float>`` accumulators updated by ``llvm.fmuladd`` (vfmadd231ps with FMA).  Pure
LLVM vector IR: any target lowers it, so the only CPU fact it needs is the register count
(cpu.WIDE_REGISTERS, which sets F32_PANELS at import: a compile-time constant of the kernels).
An op family of its own: it shares no code with the int8 kernels.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import WIDE_REGISTERS
from .jitcache import fast_cache_loading
from .memory import aligned_bytes, aligned_empty

NR = 16           # output channels per weight panel
MR = 6            # activation rows per micro-tile
KC_F32 = 384      # k block: a 384 x 16 fp32 panel slice (24 KiB; 48 KiB for two panels) sits in L1
MC_F32 = 96       # rows per task (multiple of MR): 96 x 384 fp32 activations (144 KiB) sit in L2
KU = 4            # k unroll of the fp32 micro-kernel's loop
F32_LANES = 16    # floats per accumulator vector: one zmm, or two ymm where LLVM splits it
F32_PANELS = 2 if WIDE_REGISTERS else 1
"""Weight panels per fp32 micro-tile: two where 32 vector registers hold the 12 accumulators plus
operands (AVX-512); one elsewhere (on AVX2 a <16 x float> is two ymm, and 16 registers)."""


def _make_f32_microkernel(rows, panels):
    """Register-blocked fp32 micro-kernel for a tile of ``rows`` (1..MR) rows by ``panels`` (1 or 2)
    16-column weight panels, as an intrinsic:

    tile[t_off + i*ldt + 16*q + j] (+)= sum_{k < kc} x[x_off + i*x_stride + k] * wp[w_off + q*w_pstride + k*NR + j]
    for i < rows, q < panels, j < NR; the tile is overwritten when ``accumulate`` is 0, else added to.

    Pure LLVM vector IR (``llvm.fmuladd``: an FMA where the target has one, a multiply and an add
    elsewhere), so any LLVM target can lower it; no CPU check is needed.  A panel row is one
    <16 x float>: one zmm on AVX-512, split by LLVM into two ymm on AVX2.  Either way the tile is
    12 accumulator registers (AVX-512: 6 rows x 2 panels of zmm; AVX2: 6 rows x 1 panel of two
    ymm) plus the panel row and one broadcast: each k costs 8 loads for 12 FMAs.  A second
    accumulator set per row (even and odd k) would not fit AVX2's 16 ymm registers: LLVM spilled
    it to the stack, and the kernel ran at a third of the FMA peak.
    """
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    vf32 = ir.VectorType(f32, F32_LANES)
    splat_mask = ir.Constant(ir.VectorType(i32, F32_LANES), [0] * F32_LANES)

    @intrinsic
    def microkernel(typingctx, tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate):
        sig = types.void(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)

        def codegen(context, builder, signature, args):
            tys = signature.args
            ints = [context.cast(builder, args[i], tys[i], types.int64) for i in (1, 2, 4, 5, 7, 8, 9, 10)]
            t_off_v, ldt_v, x_off_v, x_stride_v, w_off_v, w_pstride_v, kc_v, accumulate_v = ints
            tile_p = cgutils.create_struct_proxy(tys[0])(context, builder, value=args[0]).data
            x_p = cgutils.create_struct_proxy(tys[3])(context, builder, value=args[3]).data
            w_p = cgutils.create_struct_proxy(tys[6])(context, builder, value=args[6]).data
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vf32, [vf32, vf32, vf32]), f"llvm.fmuladd.v{F32_LANES}f32")

            x_rows = [builder.gep(x_p, [builder.add(x_off_v, builder.mul(x_stride_v, ir.Constant(i64, i)))],
                                  source_etype=f32) for i in range(rows)]
            w_bases = [builder.bitcast(builder.gep(w_p, [builder.add(w_off_v, builder.mul(w_pstride_v,
                                                                                          ir.Constant(i64, q)))],
                                                   source_etype=f32), vf32.as_pointer()) for q in range(panels)]
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vf32, [0.0] * F32_LANES))
                     for _ in range(panels)] for _ in range(rows)]

            def k_step(k, accs):  # rows x panels fused multiply-adds for one k
                w_vecs = [builder.load(builder.gep(w_bases[q], [k], source_etype=vf32), align=4, typ=vf32)
                          for q in range(panels)]
                for i in range(rows):
                    xv = builder.load(builder.gep(x_rows[i], [k], source_etype=f32), align=4, typ=f32)
                    bcast = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vf32, None), xv, ir.Constant(i32, 0)),
                        ir.Constant(vf32, None), splat_mask)
                    for q in range(panels):
                        acc = builder.load(accs[i][q], typ=vf32)
                        builder.store(builder.call(fma, [bcast, w_vecs[q], acc]), accs[i][q])

            # Main loop unrolled KU times (fewer loop-counter instructions per FMA), then the rest.
            n_main = builder.udiv(kc_v, ir.Constant(i64, KU))
            with cgutils.for_range(builder, n_main) as loop:
                k0 = builder.mul(loop.index, ir.Constant(i64, KU))
                for u in range(KU):
                    k_step(builder.add(k0, ir.Constant(i64, u)), accs)
            done = builder.mul(n_main, ir.Constant(i64, KU))
            with cgutils.for_range(builder, builder.sub(kc_v, done)) as loop:
                k_step(builder.add(done, loop.index), accs)

            t_base = builder.gep(tile_p, [t_off_v], source_etype=f32)
            add_old = builder.icmp_signed("!=", accumulate_v, ir.Constant(i64, 0))
            for i in range(rows):
                row = builder.gep(t_base, [builder.mul(ldt_v, ir.Constant(i64, i))], source_etype=f32)
                for q in range(panels):
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(i64, F32_LANES * q)], source_etype=f32),
                                          vf32.as_pointer())
                    acc = builder.load(accs[i][q], typ=vf32)
                    with builder.if_then(add_old):
                        builder.store(builder.fadd(builder.load(ptr, align=4, typ=vf32), acc), ptr,
                                      align=4)
                    with builder.if_then(builder.not_(add_old)):
                        builder.store(acc, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


_fk1, _fk2, _fk3, _fk4, _fk5, _fk6 = [_make_f32_microkernel(r, 1) for r in range(1, MR + 1)]
_fw1, _fw2, _fw3, _fw4, _fw5, _fw6 = [_make_f32_microkernel(r, 2) for r in range(1, MR + 1)]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _f32_microkernel(rows, tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate):
    # F32_PANELS is a compile-time constant, so only one family of variants is compiled (the packed
    # weight holds whole groups of F32_PANELS panels; padding panels are zero and never stored).
    if F32_PANELS == 2:
        if rows == 6:
            _fw6(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
        elif rows == 5:
            _fw5(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
        elif rows == 4:
            _fw4(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
        elif rows == 3:
            _fw3(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
        elif rows == 2:
            _fw2(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
        else:
            _fw1(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
    elif rows == 6:
        _fk6(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
    elif rows == 5:
        _fk5(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
    elif rows == 4:
        _fk4(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
    elif rows == 3:
        _fk3(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
    elif rows == 2:
        _fk2(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)
    else:
        _fk1(tile, t_off, ldt, x, x_off, x_stride, wp, w_off, w_pstride, kc, accumulate)


@intrinsic
def _add_bias16(typingctx, tile, ldt, rows, panels, out, o0, ldo, bias, n0):
    """out[o0 + r*ldo + c] = tile[r*ldt + c] + bias[n0 + c] for r < rows, c < 16 * panels, in
    <16 x float> IR (the scalar loop inside the parallel task loop cost ~1 cycle per output)."""
    for arr in (tile, out, bias):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
            return None
    f32, i64 = ir.FloatType(), ir.IntType(64)
    v16 = ir.VectorType(f32, NR)
    sig = types.void(tile, ldt, rows, panels, out, o0, ldo, bias, n0)

    def codegen(context, builder, signature, args):
        tys = signature.args
        ldt_v, rows_v, panels_v, o0_v, ldo_v, n0_v = [context.cast(builder, args[i], tys[i], types.int64)
                                                       for i in (1, 2, 3, 5, 6, 8)]
        t_p, out_p, b_p = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data for i in (0, 4, 7)]

        def vptr(base, off):
            return builder.bitcast(builder.gep(base, [off], source_etype=f32), v16.as_pointer())

        with cgutils.for_range(builder, rows_v) as rloop:
            t_row = builder.mul(rloop.index, ldt_v)
            o_row = builder.add(o0_v, builder.mul(rloop.index, ldo_v))
            with cgutils.for_range(builder, panels_v) as qloop:
                c = builder.mul(qloop.index, ir.Constant(i64, NR))
                y = builder.fadd(builder.load(vptr(t_p, builder.add(t_row, c)), align=4),
                                 builder.load(vptr(b_p, builder.add(n0_v, c)), align=4))
                builder.store(y, vptr(out_p, builder.add(o_row, c)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _sgemm_packed(x, wp, bias, out):
    """out = x @ W.T + bias with W packed by pack_weight_fp32; x f32[M, K] C-contiguous.

    Tasks are (row chunk of at most MC_F32 rows, NR-column panel), chunk-major, shared by prange so
    that a batch of a few rows still spreads its panels over all cores.  Inside a task: k blocks of
    at most KC_F32 (the panel slice stays in L1), MR-row micro-tiles into a float32 tile.
    """
    m_rows, k_dim = x.shape
    n_dim = out.shape[1]
    n_panels = wp.shape[0]
    n_groups = (n_panels + F32_PANELS - 1) // F32_PANELS
    width = F32_PANELS * NR
    xf = x.reshape(m_rows * k_dim)
    w = wp.reshape(wp.size)
    out_flat = out.reshape(out.size)
    n_chunks = (m_rows + MC_F32 - 1) // MC_F32
    chunk_rows = ((m_rows + n_chunks - 1) // n_chunks + MR - 1) // MR * MR
    n_chunks = (m_rows + chunk_rows - 1) // chunk_rows
    n_kb = max(1, (k_dim + KC_F32 - 1) // KC_F32)
    kc = (k_dim + n_kb - 1) // n_kb          # equal k blocks
    for task in prange(n_chunks * n_groups):
        chunk = task // n_groups
        p = (task - chunk * n_groups) * F32_PANELS
        m0 = chunk * chunk_rows
        rows = min(chunk_rows, m_rows - m0)
        tile = aligned_bytes(rows * width * 4).view(np.float32)   # the first k block overwrites it
        for kc0 in range(0, k_dim, kc):
            kc1 = min(k_dim, kc0 + kc)
            w_off = (p * k_dim + kc0) * NR
            for r0 in range(0, rows, MR):
                _f32_microkernel(min(MR, rows - r0), tile, r0 * width, width, xf, (m0 + r0) * k_dim + kc0,
                                 k_dim, w, w_off, k_dim * NR, kc1 - kc0, kc0)  # accumulate unless kc0 == 0
        n0 = p * NR
        ncols = min(F32_PANELS * NR, n_dim - n0)
        whole = ncols // NR
        _add_bias16(tile, width, rows, whole, out_flat, m0 * n_dim + n0, n_dim, bias, n0)
        for r in range(rows):
            for j in range(whole * NR, ncols):
                out_flat[(m0 + r) * n_dim + n0 + j] = tile[r * width + j] + bias[n0 + j]


def pack_weight_fp32(w: np.ndarray) -> np.ndarray:
    """Pack fp32 weights [N, K] once, at load time, for ``linear_fp32``.

    Returns a C-contiguous float32 array of shape (P, K, NR), 64-byte aligned, with
    ``packed[p, k, j] = w[p*NR + j, k]`` and zeros past N (so partial panels need no special case
    in the micro-kernel); P = ceil(N / NR) rounded up to a multiple of F32_PANELS.
    Same memory as the raw weight up to that padding.
    """
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.float32:
        raise TypeError("pack_weight_fp32 expects float32 weights of shape [N, K]")
    n_dim, k_dim = w.shape
    if n_dim == 0 or k_dim == 0:
        raise ValueError(f"pack_weight_fp32 needs a non-empty weight, got shape {w.shape}")
    # Whole groups of F32_PANELS panels (the micro-kernel always reads a group); padding is zero.
    packed = aligned_empty((-(-n_dim // (NR * F32_PANELS)) * F32_PANELS, k_dim, NR), np.float32, fill=0)
    _pack_f32_into(np.ascontiguousarray(w), packed)
    return packed


@njit(cache=True, nogil=True, error_model="numpy")
def _pack_f32_into(w, packed):
    n_dim, k_dim = w.shape
    for p in range(packed.shape[0]):
        for j in range(min(NR, n_dim - p * NR)):
            row = w[p * NR + j]
            for k in range(k_dim):
                packed[p, k, j] = row[k]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def fp32_rows(w, ids, out):
    """out[i] = row ids[i] of the weight pack_weight_fp32 packed into w (out float32 [n, ≤ K]; ids checked by
    the caller): see gemm_vnni.quads_rows."""
    lanes = w.shape[2]
    for i in prange(ids.shape[0]):
        p, j = ids[i] // lanes, ids[i] % lanes
        for k in range(out.shape[1]):
            out[i, k] = w[p, k, j]


def is_packed_fp32(w: np.ndarray) -> bool:
    """True for the output of pack_weight_fp32 (float32, 3-d, last axis NR)."""
    return w.dtype == np.float32 and w.ndim == 3 and w.shape[2] == NR


def linear_fp32(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """y = x @ W.T + bias in fp32 (Numba threads, no BLAS).

    x float32 [M, K]; w is either ``pack_weight_fp32(W)`` (computed once at load time: what
    production uses) or the raw float32 [N, K] weight (packed on every call); bias float32 [N].
    """
    if not is_packed_fp32(w):
        w = pack_weight_fp32(np.asarray(w, dtype=np.float32))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"linear_fp32 expects x of shape [M, K], got {x.shape}")
    m_rows, k_dim = x.shape
    n_dim = bias.shape[0]
    if w.shape[1] != k_dim or w.shape[0] != -(-n_dim // (NR * F32_PANELS)) * F32_PANELS:
        raise ValueError(f"packed weight {w.shape} does not match K={k_dim}, N={n_dim}")
    out = np.empty((m_rows, n_dim), dtype=np.float32)
    if m_rows == 0:
        return out
    _sgemm_packed(x, w, np.ascontiguousarray(bias, dtype=np.float32), out)
    return out


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
