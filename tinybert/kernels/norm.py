"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * w + b.

``add_layer_norm`` fuses the residual add of post-LN blocks: out = LayerNorm(x + residual); ``out``
may alias either input. Arrays: x, residual, out float32 [T, H] C-contiguous; w, b float32 [H].

A row is one intrinsic (``_norm_row``) in <16 x float> IR, three passes:
  1. v = x (+ residual), stored into out; Σ v in two float32 vector accumulators
  2. Σ (v - mean)² the same way (two passes, not Σv² - n·mean², which cancels)
  3. out = ((v - mean) · inv) · w + b   (a multiply and an add, no FMA: the scalar formula's rounding)
Each lane sums H/32 values (12 for MiniLM, 128 for a 4096-wide row), so float32 sums stay within
~1e-6 relative of float64 ones, as close as PyTorch's own float32 LayerNorm. Summing in float64
(converting each half vector) cost ~2 cycles per element, 4 % of a MiniLM forward; Numba's scalar
loops had been a serial float64 chain at ~3 ns per element.

``head_rms_norm`` is the per-head RMSNorm of q and k (qk_norm: Qwen3, Gemma 3), in place in the q | k | v rows
of the attention projection: qkv float32 [T, W] C-contiguous, W ≥ (q_heads + k_heads) · d; head h of row t is
qkv[t, h·d:(h+1)·d], normed with wq for the q_heads query heads and wk for the k_heads key heads after them
(w float32 [d]); the value columns are not touched. Each head: x / sqrt(mean x² + eps) · w, with the
arithmetic of decoder.rms_norm (float32 statistics, product order w · (x · inv)). One call for all heads of all
rows, without copying the columns out and back: at batch 1 the two copies and two norm calls per layer were
~10 µs, ~4 % of a 125M-parameter decode step.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .activations import PARALLEL_MIN_WORK
from .jitcache import fast_cache_loading


@intrinsic
def _norm_row(typingctx, x, residual, has_residual, w, b, eps, out, r):
    for arr in (x, residual, out):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 2 and arr.layout == "C"):
            return None
    for arr in (w, b):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"):
            return None
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    v16 = ir.VectorType(f32, 16)
    sig = types.void(x, residual, has_residual, w, b, eps, out, r)

    def codegen(context, builder, signature, args):
        tys = signature.args

        def proxy(i):
            return cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i])

        xa, ra, oa = proxy(0), proxy(1), proxy(6)
        dim = builder.extract_value(xa.shape, 1)
        row = builder.mul(context.cast(builder, args[7], tys[7], types.int64), dim)
        x_p = builder.gep(xa.data, [row], source_etype=f32)
        r_p = builder.gep(ra.data, [row], source_etype=f32)
        o_p = builder.gep(oa.data, [row], source_etype=f32)
        w_p, b_p = proxy(3).data, proxy(4).data
        add_res = builder.icmp_signed("!=", context.cast(builder, args[2], tys[2], types.int64), ir.Constant(i64, 0))
        eps = context.cast(builder, args[5], tys[5], types.float32)
        blocks = builder.udiv(dim, ir.Constant(i64, 16))
        done = builder.mul(blocks, ir.Constant(i64, 16))
        dim_f = builder.sitofp(dim, f32)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, v16]),
                                                "llvm.vector.reduce.fadd.v16f32")

        def vload(p, k, ty):
            return builder.load(builder.bitcast(builder.gep(p, [k], source_etype=f32), ty.as_pointer()), align=4)

        def vstore(val, p, k):
            builder.store(val, builder.bitcast(builder.gep(p, [k], source_etype=f32), val.type.as_pointer()), align=4)

        def splat(val):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(v16, None), val, ir.Constant(i32, 0)),
                                          ir.Constant(v16, None), ir.Constant(ir.VectorType(i32, 16), [0] * 16))

        def summed(width, k):      # x + residual (or x), the value LayerNorm normalises
            ty = v16 if width == 16 else f32
            v = vload(x_p, k, ty)
            with_res = builder.fadd(v, vload(r_p, k, ty))
            return builder.select(add_res, with_res, v)

        def accumulate(body):
            """Σ body(v) over the row: two float32 vector accumulators over pairs of 16-blocks (two
            independent add chains), then the odd block and the scalar tail."""
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v16, [0.0] * 16)) for _ in range(2)]
            with cgutils.for_range(builder, builder.udiv(blocks, ir.Constant(i64, 2))) as loop:
                k = builder.mul(loop.index, ir.Constant(i64, 32))
                for j, acc in enumerate(accs):
                    builder.store(builder.fadd(builder.load(acc), body(16, builder.add(k, ir.Constant(i64, 16 * j)))),
                                  acc)
            with builder.if_then(builder.trunc(blocks, ir.IntType(1))):   # an odd number of blocks
                k = builder.mul(builder.sub(blocks, ir.Constant(i64, 1)), ir.Constant(i64, 16))
                builder.store(builder.fadd(builder.load(accs[0]), body(16, k)), accs[0])
            total = builder.fadd(builder.load(accs[0]), builder.load(accs[1]))
            tail = cgutils.alloca_once_value(builder, builder.call(reduce, [ir.Constant(f32, 0.0), total],
                                                                     fastmath=("reassoc",)))
            with cgutils.for_range(builder, builder.sub(dim, done)) as loop:
                builder.store(builder.fadd(builder.load(tail), body(1, builder.add(done, loop.index))), tail)
            return builder.load(tail)

        def pass_sum(width, k):
            v = summed(width, k)
            vstore(v, o_p, k)          # out may alias x or residual: each element is read before written
            return v

        mean = builder.fdiv(accumulate(pass_sum), dim_f)
        mean16 = splat(mean)

        def pass_var(width, k):
            d = builder.fsub(vload(o_p, k, v16 if width == 16 else f32), mean16 if width == 16 else mean)
            return builder.fmul(d, d)

        var = builder.fdiv(accumulate(pass_var), dim_f)
        sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32]), "llvm.sqrt.f32")
        inv = builder.fdiv(ir.Constant(f32, 1.0), builder.call(sqrt, [builder.fadd(var, eps)]))
        inv16 = splat(inv)

        def normalise(width, k):
            ty = v16 if width == 16 else f32
            n = builder.fmul(builder.fsub(vload(o_p, k, ty), mean16 if width == 16 else mean),
                             inv16 if width == 16 else inv)
            vstore(builder.fadd(builder.fmul(n, vload(w_p, k, ty)), vload(b_p, k, ty)), o_p, k)

        with cgutils.for_range(builder, blocks) as loop:
            normalise(16, builder.mul(loop.index, ir.Constant(i64, 16)))
        with cgutils.for_range(builder, builder.sub(dim, done)) as loop:
            normalise(1, builder.add(done, loop.index))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _layer_norm(x, residual, has_residual, w, b, eps, out):
    if x.size < PARALLEL_MIN_WORK:       # a fork/join costs more than a few rows
        for r in range(x.shape[0]):
            _norm_row(x, residual, has_residual, w, b, eps, out, r)
    else:
        for r in prange(x.shape[0]):
            _norm_row(x, residual, has_residual, w, b, eps, out, r)


# Plain Python entry points, not compiled wrappers: a compiled caller recompiles its callee's code
# into its own (0.4-0.5 s each at a cold start), and its literal 0 / 1 made Numba compile _layer_norm
# twice. From Python, has_residual is one int64 signature.
def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = LayerNorm(x) (out may be x)."""
    x = np.ascontiguousarray(x)
    _layer_norm(x, x, 0, np.ascontiguousarray(w), np.ascontiguousarray(b), eps, out)


def add_layer_norm(x: np.ndarray, residual: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float,
                   out: np.ndarray) -> None:
    """out = LayerNorm(x + residual) (out may be x or residual)."""
    _layer_norm(np.ascontiguousarray(x), np.ascontiguousarray(residual), 1, np.ascontiguousarray(w),
                np.ascontiguousarray(b), eps, out)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _head_rms_norm(qkv, q_heads, k_heads, d, wq, wk, eps):
    heads = q_heads + k_heads
    if qkv.shape[0] * heads * d < PARALLEL_MIN_WORK:
        for r in range(qkv.shape[0]):
            for h in range(heads):
                _norm_head(qkv, r, h * d, d, wq if h < q_heads else wk, eps)
    else:
        for task in prange(qkv.shape[0] * heads):
            r, h = np.int64(task) // heads, np.int64(task) % heads
            _norm_head(qkv, r, h * d, d, wq if h < q_heads else wk, eps)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def _head_sum_squares(x, r, start, d):
    # fastmath: several vector accumulators, as decoder._sum_squares
    total = np.float32(0.0)
    for i in range(start, start + d):
        v = x[r, i]
        total += v * v
    return total


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _norm_head(x, r, start, d, w, eps):
    inv = np.float32(1.0) / np.sqrt(_head_sum_squares(x, r, start, d) / np.float32(d) + np.float32(eps))
    for i in range(d):
        x[r, start + i] = w[i] * (x[r, start + i] * inv)


def head_rms_norm(qkv: np.ndarray, q_heads: int, k_heads: int, wq: np.ndarray, wk: np.ndarray,
                  eps: np.float32) -> None:
    """RMSNorm of each of the first q_heads + k_heads heads (d = len(wq)) of every row of qkv, in place
    (shapes checked here: the kernel reads unchecked)."""
    d = wq.shape[0]
    if not (qkv.dtype == np.float32 and qkv.ndim == 2 and qkv.flags.c_contiguous
            and qkv.shape[1] >= (q_heads + k_heads) * d and wk.shape == wq.shape == (d,)
            and wq.dtype == wk.dtype == np.float32):
        raise ValueError(f"head_rms_norm: qkv {qkv.dtype} {qkv.shape} for {q_heads} + {k_heads} heads of "
                         f"{wq.shape} / {wk.shape} weights")
    _head_rms_norm(qkv, q_heads, k_heads, d, wq, wk, eps)


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
