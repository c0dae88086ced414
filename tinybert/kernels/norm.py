"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * w + b.

Statistics are accumulated in float64 so long rows keep fp32-reference accuracy. ``add_layer_norm``
fuses the residual add of post-LN blocks: out = LayerNorm(x + residual); ``out`` may alias either
input. Arrays: x, residual, out float32 [T, H] C-contiguous; w, b float32 [H].

A row is one intrinsic (``_norm_row``) in <16 x float> / 2 x <8 x double> IR, three passes:
  1. v = x (+ residual), stored into out; Σ v in two float64 vector accumulators
  2. Σ (v - mean)² the same way (two passes, not Σv² - n·mean², which cancels)
  3. out = float32((v - mean) · inv) · w + b   (a multiply and an add, no FMA: the scalar
     formula's rounding)
Numba compiled the scalar loops to one float64 add per element: a serial dependency chain at
~3 ns per element (12 % of the corpus run). Summing in float64 vectors reorders the additions,
which changes the statistics by ~1e-16 relative, below what the float32 output can show.
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
    f32, f64, i32, i64 = ir.FloatType(), ir.DoubleType(), ir.IntType(32), ir.IntType(64)
    v16, v8d = ir.VectorType(f32, 16), ir.VectorType(f64, 8)
    lo_mask = ir.Constant(ir.VectorType(i32, 8), list(range(8)))
    hi_mask = ir.Constant(ir.VectorType(i32, 8), list(range(8, 16)))
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
        eps = context.cast(builder, args[5], tys[5], types.float64)
        blocks = builder.udiv(dim, ir.Constant(i64, 16))
        done = builder.mul(blocks, ir.Constant(i64, 16))
        dim_f = builder.sitofp(dim, f64)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64, v8d]),
                                                "llvm.vector.reduce.fadd.v8f64")

        def vload(p, k, ty):
            return builder.load(builder.bitcast(builder.gep(p, [k], source_etype=f32), ty.as_pointer()), align=4)

        def vstore(val, p, k):
            builder.store(val, builder.bitcast(builder.gep(p, [k], source_etype=f32), val.type.as_pointer()), align=4)

        def halves(v):
            return [builder.fpext(builder.shuffle_vector(v, v, m), v8d) for m in (lo_mask, hi_mask)]

        def splat8(val):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(v8d, None), val, ir.Constant(i32, 0)),
                                          ir.Constant(v8d, None), ir.Constant(ir.VectorType(i32, 8), [0] * 8))

        def summed(width, k):      # x + residual (or x), the value LayerNorm normalises
            ty = v16 if width == 16 else f32
            v = vload(x_p, k, ty)
            with_res = builder.fadd(v, vload(r_p, k, ty))
            return builder.select(add_res, with_res, v)

        def accumulate(body):
            """Σ body(v) over the row: float64 vectors over 16-blocks, then the scalar tail."""
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v8d, [0.0] * 8)) for _ in range(2)]
            with cgutils.for_range(builder, blocks) as loop:
                k = builder.mul(loop.index, ir.Constant(i64, 16))
                for acc, part in zip(accs, body(16, k)):
                    builder.store(builder.fadd(builder.load(acc), part), acc)
            total = builder.fadd(builder.load(accs[0]), builder.load(accs[1]))
            tail = cgutils.alloca_once_value(builder, builder.call(reduce, [ir.Constant(f64, 0.0), total],
                                                                     fastmath=("reassoc",)))
            with cgutils.for_range(builder, builder.sub(dim, done)) as loop:
                (part,) = body(1, builder.add(done, loop.index))
                builder.store(builder.fadd(builder.load(tail), part), tail)
            return builder.load(tail)

        def pass_sum(width, k):
            v = summed(width, k)
            vstore(v, o_p, k)          # out may alias x or residual: each element is read before written
            return halves(v) if width == 16 else [builder.fpext(v, f64)]

        mean = builder.fdiv(accumulate(pass_sum), dim_f)
        mean8 = splat8(mean)

        def pass_var(width, k):
            v = vload(o_p, k, v16 if width == 16 else f32)
            parts = halves(v) if width == 16 else [builder.fpext(v, f64)]
            out = []
            for p in parts:
                d = builder.fsub(p, mean8 if width == 16 else mean)
                out.append(builder.fmul(d, d))
            return out

        var = builder.fdiv(accumulate(pass_var), dim_f)
        sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64]), "llvm.sqrt.f64")
        inv = builder.fdiv(ir.Constant(f64, 1.0), builder.call(sqrt, [builder.fadd(var, eps)]))
        inv8 = splat8(inv)

        def normalise(width, k):
            if width == 16:
                v = vload(o_p, k, v16)
                a, c = halves(v)
                na = builder.fptrunc(builder.fmul(builder.fsub(a, mean8), inv8), ir.VectorType(f32, 8))
                nc = builder.fptrunc(builder.fmul(builder.fsub(c, mean8), inv8), ir.VectorType(f32, 8))
                n16 = builder.shuffle_vector(na, nc, ir.Constant(ir.VectorType(i32, 16), list(range(16))))
                y = builder.fadd(builder.fmul(n16, vload(w_p, k, v16)), vload(b_p, k, v16))
            else:
                v = builder.fpext(vload(o_p, k, f32), f64)
                n1 = builder.fptrunc(builder.fmul(builder.fsub(v, mean), inv), f32)
                y = builder.fadd(builder.fmul(n1, vload(w_p, k, f32)), vload(b_p, k, f32))
            vstore(y, o_p, k)

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


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
