"""The int8 activation scheme both GEMM families share: per-row quantisation, its checks, its sums.

Scheme ("W8A12"): weights are int8 with one symmetric fp32 scale per output channel
(``W[n, :] ≈ wq[n, :] * ws[n]``); activations are quantised per row (per token) at run time to
signed 12-bit integers (``x[m, :] ≈ xq[m, :] * xs[m]``).  The dot products are exact integer sums,
so every code path gives bit-identical results:

    y[m, n] = xs[m] * ws[n] * sum_k xq[m, k] * wq[n, k] + b[n]

Why 12-bit activations by default: per-token 8-bit activations in every layer drop
all-MiniLM-L6-v2's embedding cosine to 0.9974 (outlier features); 12 bits give 0.9996,
indistinguishable from int8 weights with fp32 activations.  Layers the converter calibrated for it
(convert/smooth.py) quantise to 8 bits instead (``act_bits=8``, qmax = ACT8_QMAX): the same kernels
and sums, and a cheaper path on AVX-512 VNNI.  An 8-bit row is centred on the midpoint of its range,
``x[m, :] ≈ c[m] + xq[m, :] * xs[m]`` (a one-sided row, such as GELU outputs, gets twice the
resolution), and the output gains ``c[m] * wsum[n]``, wsum[n] = ws[n] * sum_k wq[n, k]
(``weight_sums``, computed once at load).  |xq| <= 2047 and |wq| <= 127 keep a K = 8192 dot product
inside int32 (2047 * 127 * 8192 < 2**31); longer rows are summed in blocks of ACC_BLOCK into float64.

Every path rounds the same way: total = float64(sum over ACC_BLOCK blocks of the exact int32
block sums), y = float32(total) * xs[m] * ws[n] + b[n] evaluated left to right in float32 (then,
8-bit rows, y += c[m] * wsum[n]).

Why a module of its own: the pairs kernels (gemm_pairs.py) and the quads kernels (gemm_vnni.py)
must quantise a row to the very same integers and finish with the very same float32 operations, so
they compile in the same functions from here; and neither family imports the other (gemm.py, the
dispatch above both, chooses between them).  Nothing here depends on the CPU.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jitcache import fast_cache_loading

ACT_QMAX = 2047
ACT8_QMAX = 127   # layers converted for 8-bit activations (see act_qmax)
QMAX12 = np.float32(ACT_QMAX)
ACC_BLOCK = 8192


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
    return dequantised_sums(wq.sum(axis=1, dtype=np.int64), ws)     # summed in chunks: no int64 copy


def dequantised_sums(sums: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """ws[n] * sums[n] as float32 for the first len(ws) integer row sums (however the weight was laid out)."""
    with np.errstate(over="ignore"):     # absurd scales give inf sums, and the model's finiteness check reports them
        return sums[:ws.shape[0]].astype(np.float32) * np.asarray(ws, dtype=np.float32)


NO_SUMS = np.zeros(0, dtype=np.float32)
"""The ``wsum`` argument of a 12-bit layer (its rows are not centred)."""


NO_SMOOTHING = np.zeros(0, dtype=np.float32)
"""The ``smooth`` argument of a layer whose input is quantised as it is."""


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



def check_smooth(smooth: np.ndarray, k_dim: int) -> None:
    """Per-input-channel factors for ``linear_quads_checked_weights``: contiguous float32 [k_dim]."""
    if not (isinstance(smooth, np.ndarray) and smooth.dtype == np.float32 and smooth.shape == (k_dim,)
            and smooth.flags.c_contiguous):
        raise ValueError(f"smoothing factors must be contiguous float32 [{k_dim}], got "
                         f"{getattr(smooth, 'dtype', type(smooth))}{getattr(smooth, 'shape', '')}")


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
