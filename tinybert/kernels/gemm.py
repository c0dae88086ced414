"""Linear layers: y = x @ W.T + b, for int8 weights and for fp32 weights.

int8 scheme ("W8A12"): weights are int8 with one symmetric fp32 scale per output channel
(``W[n, :] ≈ wq[n, :] * ws[n]``); activations are quantised per row (per token) at run time to
signed 12-bit integers held in int16 (``x[m, :] ≈ xq[m, :] * xs[m]``). The dot products are exact
integer sums in int32, so every code path gives bit-identical results:

    y[m, n] = xs[m] * ws[n] * sum_k xq[m, k] * wq[n, k] + b[n]

Why 12-bit activations by default: per-token 8-bit activations in every layer drop
all-MiniLM-L6-v2's embedding cosine to 0.9974 (outlier features); 12 bits give 0.9996,
indistinguishable from int8 weights with fp32 activations. Layers the converter calibrated for it
(convert/smooth.py) quantise to 8 bits instead (``act_bits=8``, qmax = ACT8_QMAX): the same kernels
and sums, and a cheaper path on AVX-512 VNNI. An 8-bit row is centred on the midpoint of its range,
``x[m, :] ≈ c[m] + xq[m, :] * xs[m]`` (a one-sided row, such as GELU outputs, gets twice the
resolution), and the output gains ``c[m] * wsum[n]``, wsum[n] = ws[n] * sum_k wq[n, k]
(``weight_sums``, computed once at load). |xq| <= 2047 and |wq| <= 127 keep a K = 8192 dot product inside int32
(2047 * 127 * 8192 < 2**31); longer rows are summed in blocks of ACC_BLOCK into float64.

Every path rounds the same way: total = float64(sum over ACC_BLOCK blocks of the exact int32
block sums), y = float32(total) * xs[m] * ws[n] + b[n] evaluated left to right in float32 (then,
8-bit rows, y += c[m] * wsum[n]).

CPUs with AVX-512 VNNI (and AMX) run the same sums four times wider: see gemm_vnni.py, whose
"quads" layout ``pack_weight`` chooses there.  This module's kernels read the "pairs" layout.

Pairs path (``pack_weight(wq, "pairs")`` + ``qlinear_packed`` / ``linear_int8``)
-----------------------------------------------------------------------------
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
``llvm.x86.avx2.pmadd.wd`` call is only emitted when the host CPU has AVX2; otherwise the same
IR is written with generic vector ops (sext, mul, even+odd add), which every LLVM target can
lower (on x86 LLVM pattern-matches it back to the very same vpmovsxbw + vpmaddwd code: forced
on an AVX2 host both spellings compile to identical instructions; NEON gets widening multiplies).  ``path=None`` and
``"simd"`` run that vector micro-kernel on every CPU; ``path="portable"`` runs a plain scalar
Numba one (a reference for tests, ~13x slower).  Both read the same packed layout, produce the
same exact int32 sums and share the epilogue, so results are bit-identical.

fp32 path (``pack_weight_fp32`` + ``linear_fp32``)
--------------------------------------------------
Same blocking with float32 panels ``packed[p, k, j] = W[p*NR + j, k]`` and a 6 x 16 tile of
``<8 x float>`` accumulators updated by ``llvm.fmuladd`` (vfmadd231ps with FMA), parallelised
with Numba's threads: the fp32 model never calls BLAS, whose spinning threads would fight
Numba's for the cores between kernels.
"""

import llvmlite.binding as llb
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jitcache import fast_cache_loading
from .memory import aligned_bytes, aligned_empty

ACT_QMAX = 2047
ACT8_QMAX = 127   # layers converted for 8-bit activations (see act_qmax)
QMAX12 = np.float32(ACT_QMAX)
ACC_BLOCK = 8192

# Register/cache blocking of the packed kernel (see module docstring).
NV = 2            # ymm vectors (8 int32 lanes each) per tile row
NR = 8 * NV       # output channels per weight panel
MR = 6            # activation rows per micro-tile: 6*NV = 12 accumulator registers
KC = 512          # k block: a 512 x 16 int8 panel slice (8 KiB) stays in L1; divides ACC_BLOCK
MC = 96           # rows per task (multiple of MR): 96 x 512 int16 activations (96 KiB) sit in L2

def _target_features() -> set[str]:
    """CPU features Numba compiles for: NUMBA_CPU_FEATURES when set, else the host's.

    An instruction the target lacks would abort LLVM instruction selection (under valgrind, for
    one, Numba is pinned to an older CPU than the host's), so availability follows this set.
    """
    if numba.config.CPU_FEATURES:
        return {f[1:] for f in numba.config.CPU_FEATURES.split(",") if f.startswith("+")}
    if numba.config.CPU_NAME and numba.config.CPU_NAME != "host":
        return set()       # a named CPU without a feature list: assume nothing beyond baseline
    return {k for k, v in llb.get_host_cpu_features().items() if v}


SIMD_AVAILABLE = bool(llb.get_host_cpu_features().get("avx2", False))
"""True when the host has AVX2: the vector micro-kernel then calls the vpmaddwd intrinsic
explicitly (otherwise it is written in generic LLVM vector IR, which any target lowers)."""


def _use_simd(path):
    # The vector micro-kernel is the fast path on every CPU (generic IR without AVX2): the scalar
    # one is a reference.
    if path is None or path == "simd":
        return True
    if path == "portable":
        return False
    raise ValueError("path must be None, 'simd' or 'portable'")


# ----------------------------------------------------------------------------------------------
# Activation quantisation
# ----------------------------------------------------------------------------------------------

@intrinsic
def _abs_bits_max(typingctx, row):
    """max over k of (bits of row[k]) & 0x7FFFFFFF as int32, for a contiguous float32 row.

    Written as <16 x i32> IR: Numba widens int32 arithmetic to int64, which halved the vector width
    of the same loop written in Python and quartered it in the xmm code LLVM chose for it.
    """
    if not (isinstance(row, types.Array) and row.dtype == types.float32 and row.ndim == 1 and row.layout == "C"):
        return None
    i32, i64 = ir.IntType(32), ir.IntType(64)
    v16 = ir.VectorType(i32, 16)

    def codegen(context, builder, signature, args):
        arr = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        base = builder.bitcast(arr.data, i32.as_pointer())
        n = builder.extract_value(arr.shape, 0)
        mask16 = ir.Constant(v16, [0x7FFFFFFF] * 16)
        smax_v = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16, v16]), "llvm.smax.v16i32")
        smax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, i32]), "llvm.smax.i32")
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [v16]),
                                                "llvm.vector.reduce.smax.v16i32")
        acc = cgutils.alloca_once_value(builder, ir.Constant(v16, [0] * 16))
        blocks = builder.udiv(n, ir.Constant(i64, 16))
        with cgutils.for_range(builder, blocks) as loop:
            ptr = builder.bitcast(builder.gep(base, [builder.mul(loop.index, ir.Constant(i64, 16))]), v16.as_pointer())
            v = builder.and_(builder.load(ptr, align=4), mask16)
            builder.store(builder.call(smax_v, [builder.load(acc), v]), acc)
        top = cgutils.alloca_once_value(builder, builder.call(reduce, [builder.load(acc)]))
        done = builder.mul(blocks, ir.Constant(i64, 16))
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            v = builder.and_(builder.load(builder.gep(base, [builder.add(done, loop.index)])),
                             ir.Constant(i32, 0x7FFFFFFF))
            builder.store(builder.call(smax, [builder.load(top), v]), top)
        return builder.load(top)

    return types.int32(row), codegen


KEY_NEG_INF = np.int32(-0x7F800001)   # order key of -inf's bits (see _bits_min_max)
KEY_POS_INF = np.int32(0x7F800000)    # order key (= bits) of +inf


@intrinsic
def _bits_min_max(typingctx, row):
    """(min, max) over k of the order key of row[k]'s bits, as int32, for a contiguous float32 row.

    key(b) = b ^ ((b >> 31) & 0x7FFFFFFF) sorts float32 bit patterns, read as signed integers, in
    float order (and is its own inverse): integer min/max reductions vectorise where float ones (NaN
    rules) do not.  -inf and negative NaNs have keys <= KEY_NEG_INF, +inf and NaNs >= KEY_POS_INF.
    """
    if not (isinstance(row, types.Array) and row.dtype == types.float32 and row.ndim == 1 and row.layout == "C"):
        return None
    i32, i64 = ir.IntType(32), ir.IntType(64)
    v16 = ir.VectorType(i32, 16)
    pair = types.UniTuple(types.int32, 2)

    def codegen(context, builder, signature, args):
        arr = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        base = builder.bitcast(arr.data, i32.as_pointer())
        n = builder.extract_value(arr.shape, 0)

        def call(name, ret, operands):
            fnty = ir.FunctionType(ret, [v.type for v in operands])
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), operands)

        def key(b, ty):
            width = ty.count if isinstance(ty, ir.VectorType) else 1
            const = (lambda v: ir.Constant(ty, [v] * width)) if width > 1 else (lambda v: ir.Constant(ty, v))
            return builder.xor(b, builder.and_(builder.ashr(b, const(31)), const(0x7FFFFFFF)))

        lo = cgutils.alloca_once_value(builder, ir.Constant(v16, [0x7FFFFFFF] * 16))
        hi = cgutils.alloca_once_value(builder, ir.Constant(v16, [-0x80000000] * 16))
        blocks = builder.udiv(n, ir.Constant(i64, 16))
        with cgutils.for_range(builder, blocks) as loop:
            ptr = builder.bitcast(builder.gep(base, [builder.mul(loop.index, ir.Constant(i64, 16))]), v16.as_pointer())
            k = key(builder.load(ptr, align=4), v16)
            builder.store(call("llvm.smin.v16i32", v16, [builder.load(lo), k]), lo)
            builder.store(call("llvm.smax.v16i32", v16, [builder.load(hi), k]), hi)
        low = cgutils.alloca_once_value(builder, call("llvm.vector.reduce.smin.v16i32", i32, [builder.load(lo)]))
        high = cgutils.alloca_once_value(builder, call("llvm.vector.reduce.smax.v16i32", i32, [builder.load(hi)]))
        done = builder.mul(blocks, ir.Constant(i64, 16))
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            k = key(builder.load(builder.gep(base, [builder.add(done, loop.index)])), i32)
            builder.store(call("llvm.smin.i32", i32, [builder.load(low), k]), low)
            builder.store(call("llvm.smax.i32", i32, [builder.load(high), k]), high)
        return context.make_tuple(builder, pair, [builder.load(low), builder.load(high)])

    return pair(row), codegen


def act_qmax(bits: int) -> np.float32:
    """The per-row quantisation range of a layer's activations: 12 bits (default) or 8.

    8-bit layers are those the converter calibrated for it (see convert/smooth.py): their products
    fit one byte plane, which halves the VNNI instructions per dot product (gemm_vnni.py).
    """
    if bits not in (8, 12):
        raise ValueError(f"activation bits must be 8 or 12, got {bits!r}")
    return np.float32(ACT_QMAX if bits == 12 else ACT8_QMAX)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def row_scale(x, m, qmax):
    """max|x[m]| / qmax as float32 (1 for a zero row); NaN when the row holds a NaN or an inf.

    The maximum is taken over the bit patterns: for |x| (sign bit cleared) integer order is float
    order, and an integer max reduction vectorises where a float one (NaN rules) does not.
    Non-finite rows get a NaN scale so that the layer's output is NaN and the model's finiteness
    check reports it, instead of integers made of garbage.
    """
    top = _abs_bits_max(np.ascontiguousarray(x[m]))   # a no-op for the C arrays the callers pass
    if top >= np.int32(0x7F800000):
        return np.float32(np.nan)
    amax = np.array([top], dtype=np.int32).view(np.float32)[0]
    return amax / qmax if amax > 0 else np.float32(1.0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _key_to_float(key):
    bits = key ^ ((key >> np.int32(31)) & np.int32(0x7FFFFFFF))
    return np.array([bits], dtype=np.int32).view(np.float32)[0]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def row_scale_centre(x, m, qmax):
    """(xs, c) of row m: x[m, k] ~ c + xs * xq[m, k] with |xq| <= qmax.

    12-bit rows (qmax > 127) are symmetric: c = 0, xs = row_scale.  8-bit rows are centred on the
    midpoint of their range, c = (max + min) / 2, xs = max |x - c| / qmax: a one-sided row (GELU
    outputs lie in [-0.17, max]) gets twice the resolution of a symmetric grid, the precision of a
    9-bit one.  NaN scale (and c = 0) for a row holding a NaN or an inf.
    """
    if qmax > 127:
        return row_scale(x, m, qmax), np.float32(0.0)
    lo_key, hi_key = _bits_min_max(np.ascontiguousarray(x[m]))
    if hi_key >= KEY_POS_INF or lo_key <= KEY_NEG_INF:
        return np.float32(np.nan), np.float32(0.0)
    lo, hi = np.float64(_key_to_float(lo_key)), np.float64(_key_to_float(hi_key))
    centre = np.float32((hi + lo) * 0.5)
    # Differences of float32 values are exact in float64; float32(x - c) may round up by half an
    # ulp, which keeps |rint((x - c) / xs)| <= qmax (127 * (1 + 2**-23) < 127.5).
    half = max(hi - np.float64(centre), np.float64(centre) - lo)
    return (np.float32(half / qmax) if half > 0 else np.float32(1.0)), centre


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


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def quantize_rows(x, xq, xs):
    """Per-row symmetric quantisation: xq[m] = round(x[m] / xs[m]), xs[m] = max|x[m]| / ACT_QMAX.

    x f32[M, K], xq int16 out (at least K columns; columns >= K are left untouched), xs f32[M] out.
    Rounding is np.rint (half to even) of x * float32(1 / xs).
    """
    xc = np.empty(x.shape[0], dtype=np.float32)      # all zero: 12-bit rows are not centred
    for m in prange(x.shape[0]):
        _quantize_row_into(x, m, xs, xc, xq[m], np.float32(ACT_QMAX))


@njit(inline="always", nogil=True, error_model="numpy")
def add_centre_block(out_flat, n_dim, m0, rows, n0, ncols, xc, wsum):
    """out[m, n] += xc[m] * wsum[n] over the block m0 <= m < m0 + rows, n0 <= n < n0 + ncols of a
    row-major output n_dim wide (flat): the part of x @ W.T that centring took out of 8-bit rows
    (see row_scale_centre).  Loops over range() of row views: inside a parallel loop's body LLVM
    vectorised those, and not out_flat[o + j] (an index it cannot prove non-negative)."""
    w = wsum[n0:n0 + ncols]
    for m in range(m0, m0 + rows):
        row = out_flat[m * n_dim + n0:m * n_dim + n0 + ncols]
        c = xc[m]
        for j in range(ncols):
            row[j] += c * w[j]


@njit(cache=True, nogil=True, error_model="numpy")
def add_centre_term(out, xc, wsum):
    """add_centre_block over the whole output out [M, N]."""
    add_centre_block(out.reshape(out.size), out.shape[1], 0, out.shape[0], 0, out.shape[1], xc, wsum)


def weight_sums(wq: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """ws[n] * sum_k wq[n, k] as float32 [N]: the dequantised weight row sums that 8-bit layers need
    (see row_scale_centre and add_centre_block).  wq int8 [N, K]."""
    return dequantised_sums(wq.astype(np.int64).sum(axis=1), ws)


def dequantised_sums(sums: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """ws[n] * sums[n] as float32 for the first len(ws) integer row sums (however the weight was laid out)."""
    with np.errstate(over="ignore"):     # absurd scales give inf sums, and the model's finiteness check reports them
        return sums[:ws.shape[0]].astype(np.float32) * np.asarray(ws, dtype=np.float32)


NO_SUMS = np.zeros(0, dtype=np.float32)
"""The ``wsum`` argument of a 12-bit layer (its rows are not centred)."""


# ----------------------------------------------------------------------------------------------
# Reference kernel (raw int8 weights)
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def qlinear(xq, xs, wq, ws, bias, out):
    """out[m, n] = xs[m] * ws[n] * (xq[m] . wq[n]) + bias[n]   (xq int16 [M,K], wq int8 [N,K]).

    Plain reference entry point (no packing); the dot product is exact (int32 per ACC_BLOCK
    block of k, blocks summed in float64).
    """
    m_rows, k_dim = xq.shape
    n_cols = wq.shape[0]
    for m in prange(m_rows):
        for n in range(n_cols):
            total = 0.0
            for k0 in range(0, k_dim, ACC_BLOCK):
                acc = np.int32(0)
                for k in range(k0, min(k0 + ACC_BLOCK, k_dim)):
                    acc += np.int32(xq[m, k]) * np.int32(wq[n, k])
                total += acc
            out[m, n] = np.float32(total) * xs[m] * ws[n] + bias[n]


# ----------------------------------------------------------------------------------------------
# Weight packing
# ----------------------------------------------------------------------------------------------

def best_layout() -> str:
    """The int8 weight layout for this CPU: "quads" with AVX-512 VNNI (gemm_vnni.py), else "pairs"."""
    from . import gemm_vnni

    return "quads" if gemm_vnni.VNNI_AVAILABLE else "pairs"


def pack_weight(wq: np.ndarray, layout: str | None = None) -> np.ndarray:
    """Pack int8 weights [N, K] once, at load time, for ``linear_int8``.

    layout None picks ``best_layout()``.  "quads" gives gemm_vnni.pack_quads (uint8, for the
    AVX-512 VNNI and AMX kernels); "pairs" gives the layout below, for the AVX2 / generic vector
    and portable kernels.

    Pairs: a C-contiguous int8 array of shape (ceil(N / NR), ceil(K / 2), 2 * NR) with
    ``packed[p, kk, 2*j + t] = wq[p*NR + j, 2*kk + t]`` and zeros past N and K (the zero padding
    makes odd K and partial panels need no special case in the micro-kernel).  The caller keeps
    ws and bias (their length gives N).  Memory: 1 byte per weight, like the raw weight up to
    the padding of the last panel and of an odd K (the micro-kernel sign-extends to int16 as it
    loads).  Told apart from a raw [N, K] weight by ``is_packed`` (3-d vs 2-d).
    """
    layout = best_layout() if layout is None else layout
    if layout == "quads":
        from . import gemm_vnni

        return gemm_vnni.pack_quads(wq)
    if layout != "pairs":
        raise ValueError(f"layout must be None, 'pairs' or 'quads', not {layout!r}")
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


# The explicit x86 intrinsic is only emitted when the compiling host has AVX2 (Numba's cache is
# keyed on the host CPU, so a cached AVX2 build is never loaded elsewhere).
_mk1, _mk2, _mk3, _mk4, _mk5, _mk6 = [_make_simd_microkernel(r, SIMD_AVAILABLE)
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


@njit(cache=True, nogil=True, error_model="numpy")
def _microkernel_portable(rows, tile, t_off, x, x_off, wp, w_off, kpairs):
    """Plain-Numba version of the micro-kernel (same layouts, same exact int32 sums)."""
    for i in range(rows):
        trow = tile[t_off + i * NR:t_off + (i + 1) * NR]
        for kk in range(kpairs):
            a0 = np.int32(x[x_off + 2 * (kk * MR + i)])
            a1 = np.int32(x[x_off + 2 * (kk * MR + i) + 1])
            wrow = wp[w_off + kk * 2 * NR:w_off + (kk + 1) * 2 * NR]
            for j in range(NR):
                trow[j] += np.int32(a0 * np.int32(wrow[2 * j]) + a1 * np.int32(wrow[2 * j + 1]))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _microkernel(use_simd, rows, tile, t_off, x, x_off, wp, w_off, kpairs):
    """Run-time dispatch: SIMD micro-kernel specialised for ``rows`` (1..MR=6), or portable.

    A partial tile gets its own specialisation instead of computing padding rows (M = 1 would
    otherwise cost 6x the work).
    """
    if use_simd:
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
    else:
        _microkernel_portable(rows, tile, t_off, x, x_off, wp, w_off, kpairs)


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
def _qgemm_packed(xt, xs, wp, ws, bias, out, use_simd):
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
                    _microkernel(use_simd, min(MR, rows - r0), itile, r0 * NR, x,
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
def _linear_int8_packed(x, wp, ws, bias, out, use_simd, qmax, wsum):
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
    _qgemm_packed(xt, xs, wp, ws, bias, out, use_simd)
    if qmax <= 127:
        add_centre_term(out, xc, wsum)


def _check_packed(wp, k_dim, n_dim):
    if not is_packed(wp):
        raise TypeError(f"expected a pack_weight() result (int8 [N/{NR}, K/2, {2 * NR}]), got "
                        f"{wp.dtype} {wp.shape}")
    if wp.shape[1] != -(-k_dim // 2) or wp.shape[0] != -(-n_dim // NR):
        raise ValueError(f"packed weight {wp.shape} does not match K={k_dim}, N={n_dim}")


def qlinear_packed(xq, xs, wp, ws, bias, out, path=None):
    """Same result as ``qlinear(xq, xs, wq, ws, bias, out)`` with ``wp = pack_weight(wq, "pairs")``.

    xq int16 [M, K], xs f32[M], ws f32[N], bias f32[N], out f32[M, N] (all C-contiguous).
    path: None or "simd" (vector micro-kernel; AVX2 intrinsic if the CPU has it, else generic
    LLVM vector IR), or "portable" (plain scalar Numba reference, for tests).
    """
    m_rows, k_dim = xq.shape
    _check_packed(wp, k_dim, ws.shape[0])
    if k_dim % 2:
        # The micro-kernel reads activations in (even, odd) pairs: give it an even row length.
        padded = np.zeros((m_rows, k_dim + 1), dtype=np.int16)
        padded[:, :k_dim] = xq
        xq = padded
    _qgemm_packed(to_row_tiles(np.ascontiguousarray(xq)), xs, wp, ws, bias, out, _use_simd(path))


def linear_int8(x: np.ndarray, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                path=None, act_bits: int = 12) -> np.ndarray:
    """y = dequant(wq, ws) applied to x (float32 [M, K]) with per-row 12-bit (or ``act_bits`` = 8,
    centred) activations.

    wq is, best, ``pack_weight(wq)`` computed once at load time, or the raw int8 [N, K] weight
    (packed on every call, in the pairs layout unless path names a quads kernel).
    path: for pairs, see qlinear_packed; for quads, None, "vnni" or "amx" (gemm_vnni).
    Every combination gives bit-identical results.
    """
    if wq.dtype == np.uint8:
        from . import gemm_vnni

        return gemm_vnni.linear_quads(np.ascontiguousarray(x, dtype=np.float32), wq, ws, bias, path, act_bits)
    if not is_packed(wq):
        if path in ("vnni", "amx"):
            from . import gemm_vnni

            return gemm_vnni.linear_quads(np.ascontiguousarray(x, dtype=np.float32),
                                          gemm_vnni.pack_quads(wq), ws, bias, path, act_bits)
        wq = pack_weight(wq, "pairs")
    if x.ndim != 2:
        raise ValueError(f"linear_int8 expects x of shape [M, K], got {x.shape}")
    m_rows, k_dim = x.shape
    n_dim = ws.shape[0]
    _check_packed(wq, k_dim, n_dim)
    check_scale_bias(ws, bias)
    qmax = act_qmax(act_bits)
    wsum = pairs_weight_sums(wq, ws) if act_bits == 8 else NO_SUMS
    out = np.empty((m_rows, n_dim), dtype=np.float32)
    if m_rows:
        _linear_int8_packed(np.ascontiguousarray(x, dtype=np.float32), wq, ws, bias, out, _use_simd(path), qmax,
                            wsum)
    return out


def pairs_weight_sums(wp: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """weight_sums of the int8 weight that ``pack_weight(wq, "pairs")`` packed into wp."""
    panels, kpairs, width = wp.shape
    return dequantised_sums(wp.reshape(panels, kpairs, width // 2, 2).astype(np.int64).sum(axis=(1, 3)).reshape(-1), ws)


def check_wsum(wsum: np.ndarray, ws: np.ndarray, qmax: np.float32) -> None:
    """An 8-bit layer needs its weight_sums (float32 [N]); a 12-bit one takes NO_SUMS."""
    if qmax <= ACT8_QMAX and not (wsum.dtype == np.float32 and wsum.shape == ws.shape and wsum.flags.c_contiguous):
        raise ValueError(f"an 8-bit layer needs its weight sums as float32 {ws.shape}, got {wsum.dtype}{wsum.shape}")


def layer_input(x: np.ndarray, k_dim: int) -> np.ndarray:
    """x as C-contiguous float32 [M, k_dim] (converted if need be); ValueError for any other shape."""
    if x.ndim != 2 or x.shape[1] != k_dim:
        raise ValueError(f"expected input of shape [M, {k_dim}], got {x.shape}")
    if not (x.dtype == np.float32 and x.flags.c_contiguous):
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x


def check_scale_bias(ws: np.ndarray, bias: np.ndarray) -> None:
    """Per-output-channel scales and bias: contiguous float32 [N] each, the same N."""
    if not (ws.dtype == bias.dtype == np.float32 and ws.ndim == bias.ndim == 1 and ws.shape == bias.shape
            and ws.flags.c_contiguous and bias.flags.c_contiguous):
        raise ValueError(f"scales {ws.dtype}{ws.shape} and bias {bias.dtype}{bias.shape} must be contiguous "
                         "float32 [N]")


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
        _linear_int8_packed(x, wp, ws, bias, out, True, qmax, wsum)
    return out


# ----------------------------------------------------------------------------------------------
# fp32 GEMM
# ----------------------------------------------------------------------------------------------
# Same structure as the int8 path, without BLAS (whose threads would fight Numba's for the cores):
# weights packed once into column panels of NR output channels, ``packed[p, k, j] = w[p*NR + j, k]``
# (zero padded), and an MR x NR register tile: per k, NV vector loads of the panel row, one
# broadcast of x[m, k] per row and MR * NV fused multiply-adds into <8 x float> accumulators.

KC_F32 = 384      # k block: a 384 x 16 fp32 panel slice (24 KiB; 48 KiB for two panels) sits in L1
MC_F32 = 96       # rows per task (multiple of MR): 96 x 384 fp32 activations (144 KiB) sit in L2
KU = 4            # k unroll of the fp32 micro-kernel's loop
F32_LANES = 16    # floats per accumulator vector: one zmm, or two ymm where LLVM splits it
F32_PANELS = 2 if "avx512f" in _target_features() else 1
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
