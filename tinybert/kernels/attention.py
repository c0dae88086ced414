"""Multi-head scaled dot-product attention over sequences packed one after another.

For sequence b, head h, query i:   out[i,h] = Σ_j softmax_j(q_i · k_j / √d  over valid j in b) v_j
(``attention_with_bias``: q_i · k_j · scale + bias[h, center + j − i], T5's relative position bias, and
 + (q_i · Kr[m] + k_j · Qr[m]) · scale with m = rel[center + j − i], DeBERTa's disentangled attention)

Layout: ``qkv`` float32 [T, 3*H] holds q | k | v side by side per token (the fused QKV GEMM's
output), head h owning columns [h*d, (h+1)*d) of each third. Sequence b owns rows
``starts[b]:starts[b+1]`` (int64 [B+1]); packed variable-length batches and padded [B, S]
batches (starts = 0, S, 2S, ...) are the same thing to this kernel. ``key_mask`` uint8 [T]
marks keys that may be attended to (1) or not (0, padding). ``out`` float32 [T, H]. A sequence
with no valid key at all is computed as if unmasked (transformers' eager attention does about the
same; its sdpa path differs, so such input has no single right answer).

Work is split over (sequence, group of heads) pairs, one parallel task each. Within a task the n valid
keys are gathered once into 16-wide panels (zero padded to a whole number of panel pairs; n16 = n rounded up to 32):

    kpan[p, e, c] = k[valid[16p + c], e] · log2(e)/√d      ([n16/16, d, 16], a transpose)
    vpan[c, j, t] = v[valid[j], 16c + t]                  ([d16/16, n, 16], d16 = d rounded up to 32)

and queries go MR = 6 at a time (q read in place from qkv), each block in three steps:

    s[r, j] = q_r · kpan[:, j]                (scores in log2 units: the scale folds in log2(e))
    p[r, j] = 2**(s[r, j] - max_j s[r, j])    (vectorised exp2; normalisation deferred)
    out[r]  = (Σ_j p[r, j] v_j) / Σ_j p[r, j]

DeBERTa's two position terms: for a sequence whose distances are all within the index's linear span (the log
buckets' linear range) and whose keys are all valid, the score of row i and key j is

    s[i, j] = q_i · (k_j + Kr[m]) + k_j · Qr[m],   m = rel[center] + i − j

made by a skewed micro-kernel (``_make_tile``, disentangled): tile row r covers the keys r places further
on, so that all six rows read the same table vectors, and each score costs two FMAs where QKᵀ's cost one.
Keys are transposed for it ([d, keys], rows read them unaligned); the tables are 16-column panels in reverse
row order, read in a contiguous run per sequence. With 8-bit tables (``quantize_position_tables``: int8 models
on VNNI) q · k is the plain tile instead, and ``_make_position_tile`` adds both position terms from q rows and
keys rounded to bytes, on the same skew: 24 vpdpbusd per 4 k for 6 × 32 scores (1.5x BERT's attention, where
the float skewed tile is 1.8-2.3x). Otherwise (log buckets reached, masked keys, one term):

    c2p  per query block, its q rows times the Kr rows the block's scores reach: the block's 6 rows times
         about n + 6 table rows, where QKᵀ's are 6 times n keys;
    p2c  per head, before the queries, each 6-key block's k rows times the Qr rows it reaches, moved to
         pt[i, j] = k_j · Qr[rel[center + j − i]] (a [seq, seq] array per task);

and each score adds a c2p entry and a pt entry. Products of every row against every relative position, made
apart and gathered per score, cost 2.6x and wrote [heads, T, 2L] arrays to memory (32 x 128 tokens: 100 MB
per layer, written and read back); the per-block products cost 2.5x BERT's attention.

The two products run on one micro-kernel, ``_tile``: C[6, 32] = A[6, K] · B[K, 32] over a pair of
16-column panels, the tile in 12 vector registers. Per k step it loads two 16-float vectors of B,
broadcasts six values of A and issues 12 FMAs (8 loads per 12 FMAs). For s, A = q rows and B = a
pair of K panels (K = d); for the output, A = p rows and B = a pair of V panels (K = n).
The softmax row is one <16 x float> intrinsic (``_softmax_row``).
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import POLICY, WIDE_REGISTERS
from .irloop import dpbusd
from .jitcache import fast_cache_loading
from .memory import aligned_bytes, prefetch

MR = 6   # queries (tile rows) per block: 6 rows x (even k, odd k) = 12 accumulators
NR = 16  # tile columns (keys of a K panel, or output columns): one 16-float vector
PREFETCH_ROWS = 8  # key rows ahead the panel gather asks for (each row's k and v are cache misses)
# WIDE_REGISTERS (cpu.py): 32 vector registers that hold 16 floats each
_TARGET_VNNI = POLICY.target_vnni   # the 8-bit position tile emits vpdpbusd (else emulates it: tests)


def _arguments(context, builder, signature, args):
    """An intrinsic's argument readers: data(i), the data pointer of array argument i; idx(i), integer argument
    i as int64."""
    tys = signature.args

    def data(i):
        return cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data

    def idx(i):
        return context.cast(builder, args[i], tys[i], types.int64)

    return data, idx


def _make_tile(rows, disentangled=False):
    """Micro-kernel intrinsic for a tile of ``rows`` (1..MR) rows by a pair of 16-column panels:

        c[c_off + r*ldc + 16*q + j] = Σ_{k < kdim} a[a_off + r*lda + k] * b[b_off + q*b_pstride + k*ldb + j]

    for r < rows, q < 2, j < NR; a, b, c flat float32 arrays. The emitted IR is generic LLVM vector
    code (``<16 x float>`` loads, splats and ``llvm.fmuladd``), which LLVM lowers on any target: one
    zmm FMA on AVX-512, two ymm FMAs on AVX2. The 2 * rows accumulators start at zero and are stored
    once, at the end; each broadcast of a feeds two FMAs (8 loads per 12 FMAs, where one panel took
    7 per 6 and was load-bound). Without AVX-512 each panel gets its own pass over k (6 rows x two
    ymm = 12 accumulators, again 8 loads per 12 FMAs): both panels at once would need 24 ymm
    accumulators, and AVX2 has 16 registers (LLVM spilled them to the stack).

    ``disentangled``: DeBERTa's scores with both position terms, for a linear relative index, on a skewed tile
    (arguments c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride): row r covers the
    keys r places further on, so that every row reads the same vectors of the position tables,

        c[c_off + r*ldc + r + 16*q + j] = Σ_k a[r, k] * (kt[r, q, k, j] + kr[q, k, j]) + kt[r, q, k, j] * qr[q, k, j]
        kt[r, q, k, j] = b[b_off + k*ldb + r + 16*q + j],   kr[q, k, j] = t[kr_off + q*t_pstride + 16*k + j]
        (qr likewise from qr_off)

    a = q rows, b = keys transposed ([k, key], not panels), t the tables as 16-column panels ([column / 16, k, 16])
    in reverse table order (row i, key j: column top − rel[center] − i + j). Per k: 12 unaligned key loads, 4
    table loads and 6 broadcasts for 24 FMAs and 12 adds; square tiles (each row its own table vectors) took 32
    loads. Rows go three at a time without AVX-512 (the accumulators and vectors fit 16 registers).
    """
    f32, i64 = ir.FloatType(), ir.IntType(64)
    v16 = ir.VectorType(f32, NR)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), NR), [0] * NR)
    if WIDE_REGISTERS:
        groups = [((0, 1), tuple(range(rows)))]
    elif disentangled:
        groups = [((q,), tuple(range(r0, min(rows, r0 + 3)))) for q in (0, 1) for r0 in range(0, rows, 3)]
    else:
        groups = [((q,), tuple(range(rows))) for q in (0, 1)]

    def codegen(context, builder, signature, args):
        data, idx = _arguments(context, builder, signature, args)

        def const(v):
            return ir.Constant(i64, v)

        def vload(base, offset):
            return builder.load(builder.bitcast(builder.gep(base, [offset], source_etype=f32), v16.as_pointer()),
                                align=4, typ=v16)

        c_p, a_p, b_p = data(0), data(3), data(6)
        c_off, ldc, a_off, lda = idx(1), idx(2), idx(4), idx(5)
        if disentangled:
            b_off, ldb, kdim = idx(7), idx(8), idx(9)
        else:
            b_off, b_pstride, ldb, kdim = idx(7), idx(8), idx(9), idx(10)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v16, [v16, v16, v16]), "llvm.fmuladd.v16f32")
        a_rows = [builder.gep(a_p, [builder.add(a_off, builder.mul(lda, const(r)))], source_etype=f32)
                  for r in range(rows)]
        if not disentangled:
            b_bases = [builder.gep(b_p, [builder.add(b_off, builder.mul(b_pstride, const(q)))], source_etype=f32)
                       for q in range(2)]
        else:
            t_p, kr_off, qr_off, t_pstride = data(10), idx(11), idx(12), idx(13)
            kr_base, qr_base = (builder.gep(t_p, [off], source_etype=f32) for off in (kr_off, qr_off))
            b_base = builder.gep(b_p, [b_off], source_etype=f32)
        # Allocas promoted to registers by LLVM (mem2reg) once the loop is built. Each group
        # of panels runs its own k loop with its accumulators in registers.
        zero = ir.Constant(v16, [0.0] * NR)
        for panels, group_rows in groups:
            accs = {(q, r): cgutils.alloca_once_value(builder, zero) for q in panels for r in group_rows}
            with cgutils.for_range(builder, kdim) as loop:
                k = loop.index
                if disentangled:
                    t_row, b_row = builder.mul(k, const(NR)), builder.mul(k, ldb)
                    t_at = {q: builder.add(t_row, builder.mul(t_pstride, const(q))) for q in panels}
                    kr_vecs = {q: vload(kr_base, t_at[q]) for q in panels}
                    qr_vecs = {q: vload(qr_base, t_at[q]) for q in panels}
                else:
                    b_vecs = {q: vload(b_bases[q], builder.mul(k, ldb)) for q in panels}
                for r in group_rows:
                    a_val = builder.load(builder.gep(a_rows[r], [k], source_etype=f32), typ=f32)
                    a_vec = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(v16, None), a_val, ir.Constant(ir.IntType(32), 0)),
                        ir.Constant(v16, None), splat)
                    for q in panels:
                        acc = accs[q, r]
                        total = builder.load(acc, typ=v16)
                        if disentangled:
                            b_vec = vload(b_base, builder.add(b_row, const(NR * q + r)))
                            total = builder.call(fma, [b_vec, qr_vecs[q], total])
                            b_vec = builder.fadd(b_vec, kr_vecs[q])
                        else:
                            b_vec = b_vecs[q]
                        builder.store(builder.call(fma, [a_vec, b_vec, total]), acc)
            c_base = builder.gep(c_p, [c_off], source_etype=f32)
            for r in group_rows:
                row = builder.gep(c_base, [builder.mul(ldc, const(r))], source_etype=f32)
                if disentangled:
                    row = builder.gep(row, [const(r)], source_etype=f32)
                for q in panels:
                    ptr = builder.gep(row, [const(NR * q)], source_etype=f32)
                    builder.store(builder.load(accs[q, r], typ=v16), builder.bitcast(ptr, v16.as_pointer()),
                                  align=4)
        return context.get_dummy_value()

    if disentangled:
        @intrinsic
        def tile(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride):
            return types.void(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off,
                              t_pstride), codegen
    else:
        @intrinsic
        def tile(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim):
            return types.void(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim), codegen

    return tile


def _make_position_tile(rows):
    """Micro-kernel intrinsic: DeBERTa's two position terms in 8 bits, on the skewed tile of ``_make_tile``
    (row r covers the keys r places further on, and every row reads the same table vectors), added to scores
    that hold q · k already:

        c[c_off + r*ldc + r + 16*q + j] += qs[r] * C2P[r, q, j] + ks[kt_off + r + 16*q + j] * P2C[r, q, j]
        C2P[r, q, j] = corr[ckr_off + 16*q + j] + Σ_kq Σ_t qa[r*lda + 4*kq + t] * kr[q, kq, j, t]
        P2C[r, q, j] = corr[cqr_off + 16*q + j] + Σ_kq Σ_t kt[(kt_off + r + 16*q + j)*4 + kq*ldk + t] * qr[q, kq, j, t]
        kr[q, kq, j, t] = t8[kr_off + q*t_pstride + 64*kq + 4*j + t]   (qr likewise from qr_off)

    for r < rows, q < 2, j < NR, kq < kquads. qa (query rows) and kt (keys transposed, in quads of k) are
    unsigned bytes holding value + 128, the tables t8 signed bytes; the sums are int32 (each term one
    ``vpdpbusd`` of 64 products), ``corr`` (int32) starts them at −128 · the table column's sum, which takes the
    offset back out. Per 4 k: 3 key loads shifted into 12 vectors, 4 table loads and 6 broadcasts for 24
    vpdpbusd, where the float tile takes 4 × (24 FMAs + 12 adds). Emulated in generic IR where the target lacks
    AVX-512 VNNI.
    """
    i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
    v16, v16i32 = ir.VectorType(f32, NR), ir.VectorType(i32, NR)
    splat = ir.Constant(v16i32, [0] * NR)

    def codegen(context, builder, signature, args):
        data, idx = _arguments(context, builder, signature, args)

        def const(v):
            return ir.Constant(i64, v)

        dp = dpbusd(builder, _TARGET_VNNI)

        def load(base, offset, ty, align=1):
            ptr = builder.gep(base, [offset], source_etype=base.type.pointee)
            return builder.load(builder.bitcast(ptr, ty.as_pointer()), align=align, typ=ty)

        c_p, qa_p, kt_p, t_p, corr_p, qs_p, ks_p = (data(i) for i in (0, 3, 5, 9, 13, 16, 17))
        c_off, ldc, lda, kt_off, ldk, kquads = (idx(i) for i in (1, 2, 4, 6, 7, 8))
        kr_off, qr_off, t_pstride, ckr_off, cqr_off = (idx(i) for i in (10, 11, 12, 14, 15))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v16, [v16, v16, v16]), "llvm.fmuladd.v16f32")
        # Per (term, panel, row) an int32 accumulator started at the term's column correction.
        starts = {(term, q): load(corr_p, builder.add(off, const(NR * q)), v16i32, 4)
                  for term, off in enumerate((ckr_off, cqr_off)) for q in (0, 1)}
        accs = {(term, q, r): cgutils.alloca_once_value(builder, starts[term, q])
                for term in (0, 1) for q in (0, 1) for r in range(rows)}
        with cgutils.for_range(builder, kquads) as loop:
            kq = loop.index
            t_row = builder.mul(kq, const(4 * NR))
            tables = {(term, q): load(t_p, builder.add(builder.add(off, builder.mul(t_pstride, const(q))), t_row),
                                      v16i32) for term, off in enumerate((kr_off, qr_off)) for q in (0, 1)}
            k_row = builder.mul(kq, ldk)
            # Row r's keys are the columns r further on: shifted out of three loads (valignd), where twelve
            # unaligned loads, each across two cache lines, made the loop load-bound.
            k_parts = [load(kt_p, builder.add(k_row, builder.mul(builder.add(kt_off, const(NR * i)), const(4))),
                            v16i32) for i in range(3 if rows > 1 else 2)]
            for r in range(rows):
                word = load(qa_p, builder.add(builder.mul(lda, const(r)), builder.mul(kq, const(4))), i32)
                q_vec = builder.shuffle_vector(builder.insert_element(ir.Constant(v16i32, None), word,
                                                                      ir.Constant(i32, 0)),
                                               ir.Constant(v16i32, None), splat)
                for q in (0, 1):
                    k_vec = k_parts[q] if r == 0 else builder.shuffle_vector(
                        k_parts[q], k_parts[q + 1], ir.Constant(v16i32, list(range(r, r + NR))))
                    c2p, p2c = accs[0, q, r], accs[1, q, r]
                    builder.store(dp(builder.load(c2p, typ=v16i32), q_vec, tables[0, q]), c2p)
                    builder.store(dp(builder.load(p2c, typ=v16i32), k_vec, tables[1, q]), p2c)
        for r in range(rows):
            q_scale = builder.load(builder.gep(qs_p, [const(r)], source_etype=f32), typ=f32)
            q_scale = builder.shuffle_vector(builder.insert_element(ir.Constant(v16, None), q_scale,
                                                                    ir.Constant(i32, 0)),
                                             ir.Constant(v16, None), splat)
            for q in (0, 1):
                at = builder.add(builder.add(c_off, builder.mul(ldc, const(r))), const(r + NR * q))
                k_scale = load(ks_p, builder.add(kt_off, const(r + NR * q)), v16, 4)
                score = load(c_p, at, v16, 4)
                score = builder.call(fma, [q_scale, builder.sitofp(builder.load(accs[0, q, r], typ=v16i32), v16),
                                           score])
                score = builder.call(fma, [k_scale, builder.sitofp(builder.load(accs[1, q, r], typ=v16i32), v16),
                                           score])
                ptr = builder.gep(c_p, [at], source_etype=f32)
                builder.store(score, builder.bitcast(ptr, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr,
             ckr_off, cqr_off, qs, ks):
        return types.void(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr,
                          ckr_off, cqr_off, qs, ks), codegen

    return tile


_wide1, _wide2, _wide3, _wide4, _wide5, _wide6 = [_make_tile(r) for r in range(1, MR + 1)]
_pos1, _pos2, _pos3, _pos4, _pos5, _pos6 = [_make_position_tile(r) for r in range(1, MR + 1)]
_dis1, _dis2, _dis3, _dis4, _dis5, _dis6 = [_make_tile(r, disentangled=True) for r in range(1, MR + 1)]


@intrinsic
def _softmax_row(typingctx, buf, off, n):
    """p[j] = 2**(s[j] - max s) in place over s = buf[off:off + n] (n >= 1); returns sum p.

    Whole <16 x float> vectors, the last one masked: buf[off:off + n rounded up to 16] must exist,
    and its entries past n become 0 (the scores rows are padded to 32 columns). A scalar tail did
    n % 16 scalar exp2s: a 30-key row spent more on its last 14 keys than on its first 16.
    2**x as in mathfn.exp2_nonpositive (x = k + f, |f| <= 1/2, degree-5 polynomial, 2**k in the
    exponent bits). Below 2**-126 the result is 0 rather than a denormal-making 2**-126: the P·V
    products of a peaked row then stay normal numbers (denormal arithmetic is microcoded on x86).
    """
    if not (isinstance(buf, types.Array) and buf.dtype == types.float32):
        return None
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    coeffs = (1.3276471959e-3, 9.6755415026e-3, 5.5507132751e-2, 2.4022119721e-1, 6.9314696706e-1, 1.0000000717)
    v16, vi32 = ir.VectorType(f32, NR), ir.VectorType(i32, NR)

    def codegen(context, builder, signature, args):
        tys = signature.args
        base = builder.gep(cgutils.create_struct_proxy(tys[0])(context, builder, value=args[0]).data,
                           [context.cast(builder, args[1], tys[1], types.int64)], source_etype=f32)
        n = context.cast(builder, args[2], tys[2], types.int64)
        full = builder.udiv(n, ir.Constant(i64, NR))
        has_tail = builder.icmp_unsigned("!=", builder.urem(n, ir.Constant(i64, NR)), ir.Constant(i64, 0))

        def splat(value, ty):
            """The vector of ty with every lane ``value``."""
            return builder.shuffle_vector(builder.insert_element(ir.Constant(ty, None), value, ir.Constant(i32, 0)),
                                          ir.Constant(ty, None), ir.Constant(vi32, [0] * NR))

        n_vec = splat(builder.trunc(n, i32), vi32)
        lanes = ir.Constant(vi32, list(range(NR)))

        def fn(name, nargs):
            return cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16] * nargs), name)

        def const(v, ty=f32):
            return ir.Constant(ir.VectorType(ty, NR), [v] * NR)

        def each_block(body):
            """body(pointer to the 16 scores of block k, mask of those before n or None) over the full
            blocks, then the masked last one if n is not a multiple of 16."""
            def at(k):
                first = builder.mul(k, ir.Constant(i64, NR))
                return builder.bitcast(builder.gep(base, [first], source_etype=f32), v16.as_pointer()), first
            with cgutils.for_range(builder, full) as loop:
                body(at(loop.index)[0], None)
            with builder.if_then(has_tail):
                ptr, first = at(full)
                index = builder.add(lanes, splat(builder.trunc(first, i32), vi32))
                body(ptr, builder.icmp_unsigned("<", index, n_vec))

        vmax = cgutils.alloca_once_value(builder, const(float("-inf")))

        def max_block(ptr, live):
            v = builder.load(ptr, align=4)
            if live is not None:
                v = builder.select(live, v, const(float("-inf")))
            builder.store(builder.call(fn("llvm.maxnum.v16f32", 2), [builder.load(vmax), v]), vmax)
        each_block(max_block)
        reduce_max = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [v16]),
                                                    "llvm.vector.reduce.fmax.v16f32")
        best = builder.call(reduce_max, [builder.load(vmax)])
        best_v = splat(best, v16)

        vsum = cgutils.alloca_once_value(builder, const(0.0))

        def exp_block(ptr, live):
            x = builder.fsub(builder.load(ptr, align=4), best_v)
            keep = builder.fcmp_ordered(">=", x, const(-126.0))
            if live is not None:
                keep = builder.and_(live, keep)
            x = builder.call(fn("llvm.maxnum.v16f32", 2), [x, const(-126.0)])
            kf = builder.call(fn("llvm.floor.v16f32", 1), [builder.fadd(x, const(0.5))])
            f = builder.fsub(x, kf)
            poly = const(coeffs[0])
            for c in coeffs[1:]:
                poly = builder.call(fn("llvm.fmuladd.v16f32", 3), [poly, f, const(c)])
            bits = builder.shl(builder.add(builder.fptosi(kf, vi32), const(127, i32)), const(23, i32))
            y = builder.select(keep, builder.fmul(poly, builder.bitcast(bits, v16)), const(0.0))
            builder.store(y, ptr, align=4)
            builder.store(builder.fadd(builder.load(vsum), y), vsum)
        each_block(exp_block)
        reduce_add = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, v16]),
                                                    "llvm.vector.reduce.fadd.v16f32")
        return builder.call(reduce_add, [ir.Constant(f32, 0.0), builder.load(vsum)], fastmath=("reassoc",))

    return types.float32(buf, off, n), codegen




@intrinsic
def _quantize_row(typingctx, src, src_off, d, dst, off):
    """dst[off + e] = round(x / a) + 128 with x = src[src_off + e] (unsigned bytes, symmetric: ±127 around 128;
    halves round up) for e < d (d ≥ 1); returns a = max |x| / 127 (1 for a zero row). <16 x float> vectors, the
    last one masked (nothing past d is read or written): as Numba code, with max()'s scalar reduction and the
    loops' overhead, a 64-entry row took 100-130 cycles, and rounding a head's q and k as much as its products."""
    if not (isinstance(src, types.Array) and src.dtype == types.float32 and isinstance(dst, types.Array)
            and dst.dtype == types.uint8):
        return None
    f32, i1, i8, i32, i64 = ir.FloatType(), ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16, vi32, vi8, vmask = (ir.VectorType(t, NR) for t in (f32, i32, i8, i1))

    def codegen(context, builder, signature, args):
        data, idx = _arguments(context, builder, signature, args)
        x_base = builder.gep(data(0), [idx(1)], source_etype=f32)
        y_base = builder.gep(data(3), [idx(4)], source_etype=i8)
        n = idx(2)
        module = builder.module
        fabs = cgutils.get_or_insert_function(module, ir.FunctionType(v16, [v16]), "llvm.fabs.v16f32")
        vmax = cgutils.get_or_insert_function(module, ir.FunctionType(v16, [v16, v16]), "llvm.maxnum.v16f32")
        masked_load = cgutils.get_or_insert_function(module, ir.FunctionType(
            v16, [v16.as_pointer(), i32, vmask, v16]), "llvm.masked.load.v16f32.p0v16f32")
        masked_store = cgutils.get_or_insert_function(module, ir.FunctionType(
            ir.VoidType(), [vi8, vi8.as_pointer(), i32, vmask]), "llvm.masked.store.v16i8.p0v16i8")
        reduce_max = cgutils.get_or_insert_function(module, ir.FunctionType(f32, [v16]),
                                                    "llvm.vector.reduce.fmax.v16f32")
        zero = ir.Constant(v16, [0.0] * NR)
        full = builder.udiv(n, ir.Constant(i64, NR))
        rest = builder.trunc(builder.urem(n, ir.Constant(i64, NR)), i32)
        live = builder.icmp_unsigned("<", ir.Constant(vi32, list(range(NR))), builder.shuffle_vector(
            builder.insert_element(ir.Constant(vi32, None), rest, ir.Constant(i32, 0)), ir.Constant(vi32, None),
            ir.Constant(vi32, [0] * NR)))

        def x_ptr(k):
            return builder.bitcast(builder.gep(x_base, [builder.mul(k, ir.Constant(i64, NR))], source_etype=f32),
                                   v16.as_pointer())

        def y_ptr(k):
            return builder.bitcast(builder.gep(y_base, [builder.mul(k, ir.Constant(i64, NR))], source_etype=i8),
                                   vi8.as_pointer())

        peak = cgutils.alloca_once_value(builder, zero)
        with cgutils.for_range(builder, full) as loop:
            v = builder.call(fabs, [builder.load(x_ptr(loop.index), align=4, typ=v16)])
            builder.store(builder.call(vmax, [builder.load(peak, typ=v16), v]), peak)
        tail = builder.call(masked_load, [x_ptr(full), ir.Constant(i32, 4), live, zero])
        top = builder.call(reduce_max, [builder.call(vmax, [builder.load(peak, typ=v16), builder.call(fabs, [tail])])])
        a = builder.fdiv(top, ir.Constant(f32, 127.0))
        a = builder.select(builder.fcmp_ordered(">", top, ir.Constant(f32, 0.0)), a, ir.Constant(f32, 1.0))
        inv = builder.fdiv(ir.Constant(f32, 1.0), a)
        inv_v = builder.shuffle_vector(builder.insert_element(ir.Constant(v16, None), inv, ir.Constant(i32, 0)),
                                       ir.Constant(v16, None), ir.Constant(vi32, [0] * NR))
        half = ir.Constant(v16, [128.5] * NR)

        def rounded(x):       # x / a + 128.5 ≥ 1.5: truncation rounds
            return builder.trunc(builder.fptosi(builder.fadd(builder.fmul(x, inv_v), half), vi32), vi8)

        with cgutils.for_range(builder, full) as loop:
            builder.store(rounded(builder.load(x_ptr(loop.index), align=4, typ=v16)), y_ptr(loop.index), align=1)
        builder.call(masked_store, [rounded(tail), y_ptr(full), ir.Constant(i32, 1), live])
        return a

    return types.float32(src, src_off, d, dst, off), codegen


# inline="always": a call between jitted functions increfs and decrefs each array argument, and
# with both threads passing the shared qkv those atomics bounce one cache line between the cores.
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tile(rows, c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim):
    # A short query block gets its own specialisation: a 1-token sequence computes one row, not 6.
    # Always two panels (the caller pads to pairs): one family of variants keeps the compile short.
    if rows == 6:
        _wide6(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim)
    elif rows == 5:
        _wide5(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim)
    elif rows == 4:
        _wide4(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim)
    elif rows == 3:
        _wide3(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim)
    elif rows == 2:
        _wide2(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim)
    else:
        _wide1(c, c_off, ldc, a, a_off, lda, b, b_off, b_pstride, ldb, kdim)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tile_disentangled(rows, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride):
    if rows == 6:
        _dis6(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride)
    elif rows == 5:
        _dis5(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride)
    elif rows == 4:
        _dis4(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride)
    elif rows == 3:
        _dis3(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride)
    elif rows == 2:
        _dis2(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride)
    else:
        _dis1(c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim, t, kr_off, qr_off, t_pstride)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tile_positions(rows, c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr,
                    ckr_off, cqr_off, qs, ks):
    if rows == 6:
        _pos6(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr, ckr_off, cqr_off,
              qs, ks)
    elif rows == 5:
        _pos5(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr, ckr_off, cqr_off,
              qs, ks)
    elif rows == 4:
        _pos4(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr, ckr_off, cqr_off,
              qs, ks)
    elif rows == 3:
        _pos3(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr, ckr_off, cqr_off,
              qs, ks)
    elif rows == 2:
        _pos2(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr, ckr_off, cqr_off,
              qs, ks)
    else:
        _pos1(c, c_off, ldc, qa, lda, kt, kt_off, ldk, kquads, t8, kr_off, qr_off, t_pstride, corr, ckr_off, cqr_off,
              qs, ks)


SKEW = 8   # the skewed tile's rows start at least this many keys early (≥ MR − 1) ...
KEY_LEFT = SKEW + NR - 1   # ... and up to 15 more, so that its table columns start on a panel


@njit(cache=True, nogil=True, inline="always")
def _skewed_width(n):
    """Columns of the transposed keys and of the scores rows for n keys on the skewed tile: pairs of panels from
    KEY_LEFT keys before key 0 past key n − 1, and room for the furthest row's skew and its start's excess."""
    return (n + KEY_LEFT + 2 * NR - 1) // (2 * NR) * (2 * NR) + 2 * NR


# Position tables: 16-column panels of columns in reverse table order, table row m in column top − m with
# top = W − TABLE_RIGHT − 1 (W columns in all), zeros either side (TABLE_LEFT or more before, TABLE_RIGHT after)
# for the vectors that reach past the ends: rows of a block before its first, padding keys after the last.
# A batch reads a run of panels, contiguous, whatever its rows.
TABLE_LEFT, TABLE_RIGHT = 2 * NR, 3 * NR
_NO_BIAS = np.zeros((1, 0), dtype=np.float32)
NO_TABLES = np.zeros((0, (TABLE_LEFT + TABLE_RIGHT) // NR + 1, 1, NR), dtype=np.float32)
_NO_REL = np.zeros(0, dtype=np.int32)


def pack_position_tables(c2p: np.ndarray | None, p2c: np.ndarray | None, scale: float) -> np.ndarray:
    """DeBERTa's projected relative embeddings, Kr (c2p) and Qr (p2c) per head [H, N, d] float32, as the
    attention kernel reads them: [G, W / 16, d, 16] float32 with the c2p heads first, then the p2c heads;
    packed[g, x // 16, e, x % 16] = table_g[top − x, e] for top − N < x ≤ top = W − TABLE_RIGHT − 1, zero
    elsewhere, W = N + TABLE_LEFT + TABLE_RIGHT rounded up to 16. The c2p tables are multiplied by ``scale`` ·
    log2(e) (the kernel's scores are in log2 units, and Kr is added to the pre-scaled keys). Once per layer, at
    load."""
    tables = [(t, np.float32(scale * 1.4426950408889634) if g == 0 else np.float32(1.0))
              for g, t in enumerate((c2p, p2c)) if t is not None]
    shapes = {np.asarray(t).shape for t, _ in tables}
    if not tables or len(shapes) != 1 or any(np.asarray(t).dtype != np.float32 for t, _ in tables):
        raise TypeError("pack_position_tables expects float32 tables of one shape [H, N, d]")
    (heads, rows, d), = shapes
    if 0 in (heads, rows, d):
        raise TypeError("pack_position_tables expects non-empty tables")
    width = -(-(rows + TABLE_LEFT + TABLE_RIGHT) // NR) * NR
    top = width - TABLE_RIGHT - 1
    columns = np.zeros((len(tables) * heads, d, width), dtype=np.float32)
    for g, (table, factor) in enumerate(tables):
        reverse = np.asarray(table)[:, ::-1, :].transpose(0, 2, 1) * factor
        columns[g * heads:(g + 1) * heads, :, top - rows + 1:top + 1] = reverse
    return np.ascontiguousarray(columns.reshape(len(tables) * heads, d, width // NR, NR).transpose(0, 2, 1, 3))


def quantize_position_tables(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pack_position_tables``'s output in 8 bits, for the 8-bit position tile (int8 models on AVX-512 VNNI):
    (t8 int8 [G, W / 16, d / 4, 16, 4], corr int32 [G, W], scale float32 [G]) with
    t8[g, p, kq, c, t] · scale[g] ≈ tables[g, p, 4 kq + t, c], one symmetric scale per table (the rows are the
    relative embeddings, normed, through one projection: alike in size), and corr[g, x] = −128 · Σ_e t8 of
    column x (the tile's queries and keys are unsigned bytes, value + 128). d must be a multiple of 4."""
    groups, panels, d, _ = tables.shape
    if d % 4:
        raise TypeError("quantize_position_tables expects a head size that is a multiple of 4")
    peak = np.abs(tables).reshape(groups, -1).max(axis=1)
    scale = np.where(peak > 0, peak / 127, 1).astype(np.float32)
    q = np.rint(tables / scale[:, None, None, None]).clip(-127, 127).astype(np.int8)     # [G, P, d, 16]
    t8 = np.ascontiguousarray(q.reshape(groups, panels, d // 4, 4, NR).transpose(0, 1, 2, 4, 3))
    corr = (-128 * q.astype(np.int32).sum(axis=2)).reshape(groups, panels * NR)
    return t8, np.ascontiguousarray(corr, dtype=np.int32), scale


NO_QUANTIZED_TABLES = (np.zeros((0, 1, 1, NR, 4), dtype=np.int8), np.zeros((0, NR), dtype=np.int32),
                       np.zeros(0, dtype=np.float32))


def position_table_rows(tables: np.ndarray) -> int:
    """How many table rows the kernel may index in ``pack_position_tables``'s output (at least N: the rows the
    rounding adds read zeros)."""
    return tables.shape[1] * NR - TABLE_LEFT - TABLE_RIGHT


def attention(qkv: np.ndarray, starts: np.ndarray, key_mask: np.ndarray, num_heads: int, out: np.ndarray,
              threads: int | None = None) -> None:
    """Scaled dot-product attention (1/√d, no bias) of every packed sequence into ``out``.
    ``threads``: numba.get_num_threads(), when the caller has it.

    Plain Python: as a compiled wrapper it recompiled attention_with_bias's code into its own
    (1.5 s of a cold start)."""
    d = out.shape[1] // num_heads
    attention_with_bias(qkv, starts, key_mask, num_heads, 1.0 / math.sqrt(d), _NO_BIAS, 0, NO_TABLES,
                        *NO_QUANTIZED_TABLES, -1, -1, _NO_REL, 0, out,
                        numba.get_num_threads() if threads is None else threads)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def attention_with_bias(qkv, starts, key_mask, num_heads, scale, bias, center, tables, qtables, qcorr, qscale, c2p_at,
                        p2c_at, rel, linear_span, out, threads):
    """``attention`` with the score scale given (T5: 1, no 1/√d) and, when ``bias`` has columns, T5's relative
    position bias added to the score of query i and key j: bias[h, center + j − i] (i, j positions within
    the sequence; bias float32 [heads, W] with center ≥ longest − 1 and W > center + longest − 1).

    When ``rel`` has entries, DeBERTa's disentangled attention adds (q_i · Kr_h[m] + k_j · Qr_h[m]) · scale with
    m = rel[center + j − i]: ``tables`` float32 [G, d, W] (pack_position_tables, with this ``scale``) holds Kr_h
    as table c2p_at + h and Qr_h as table p2c_at + h (a term whose index is −1 is absent), the relative
    embeddings projected by the layer's key and query projections; rel int32 [2·center + 1] holds table rows
    in [0, position_table_rows(tables)), non-increasing; ``linear_span``: rel[center + x] = rel[center] − x for
    |x| < linear_span (a sequence no longer than that takes the skewed tiles, whatever the others' lengths, so that
    its result does not depend on its batch). ``qtables, qcorr, qscale``: ``quantize_position_tables(tables)``, or
    NO_QUANTIZED_TABLES: with them, such a sequence with every key valid has its position terms made in 8 bits
    (the 8-bit position tile).
    The caller checks every shape and index (none is checked here).
    ``threads``: numba.get_num_threads() (an argument: calling it here makes the function uncacheable)."""
    # The parallel loop only dispatches: Numba's parfor passes are slow on large loop bodies, and
    # a call keeps the compile (cold start) short. The micro-kernel reads q (and often v) straight
    # from qkv by flat offsets, so it needs qkv C-contiguous (a no-op for the usual C array).
    qkv = np.ascontiguousarray(qkv)
    flat = qkv.reshape(qkv.size)
    batch = starts.shape[0] - 1
    # A task is one sequence and a group of its heads, so that a task reads whole stretches of
    # each qkv row (head-at-a-time tasks stride 3*H floats between 32-float reads, which the
    # prefetchers do not follow). Heads are split into groups only as far as needed to give every
    # thread a task when the batch is small: more tasks meant more calls, and each call's refcount
    # atomics on the shared arrays (16 tokens, 2 threads: 12 one-head tasks took 18.9 us, 2 took 14.1).
    groups = min(num_heads, max(1, (threads + batch - 1) // max(batch, 1)))
    per_group = (num_heads + groups - 1) // groups
    for task in prange(batch * groups):
        b = task // groups
        g = task - b * groups
        _attend_heads(qkv, flat, starts[b], starts[b + 1], key_mask, g * per_group,
                      min(num_heads, (g + 1) * per_group), num_heads, scale, bias, center, tables, qtables, qcorr,
                      qscale, c2p_at, p2c_at, rel, linear_span, out)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _attend_heads(qkv, flat, base, end, key_mask, h0, h1, num_heads, scale, bias, center, tables, qtables, qcorr,
                  qscale, c2p_at, p2c_at, rel, linear_span, out):
    """Heads h0..h1-1 of the sequence in rows base..end-1.  One call (and one set of buffers) for
    all of them: a call from the parallel loop increfs and decrefs each array argument, atomics on
    counts that both threads share, which cost a 16-token head as much as its arithmetic."""
    hidden = out.shape[1]
    d = hidden // num_heads
    seq = end - base
    valid = np.empty(seq, dtype=np.int64)
    n = 0
    for j in range(seq):
        if key_mask[base + j] != 0:
            valid[n] = j
            n += 1
    if n == 0:
        for j in range(seq):
            valid[j] = j
        n = seq
    n16 = (n + 2 * NR - 1) // (2 * NR) * (2 * NR)
    # Panels come in pairs (the micro-kernel always computes two): d and n are padded to 32.
    d16 = (d + 2 * NR - 1) // (2 * NR) * (2 * NR)
    # DeBERTa with a linear index and every key valid: the skewed micro-kernel makes the scores with both
    # position terms, from keys transposed (kpan holds [d, kw]). Otherwise: a block's products with the
    # position tables (c2p, p2c) in cbuf and pbuf, and p2c moved to [query, key] in pt.
    # With 8-bit tables (int8 models), q · k is BERT's tile on key panels, and the 8-bit skewed tile adds the
    # position terms from the keys in bytes, transposed (kq [d / 4, kw, 4]; ks their scales).
    fused = rel.shape[0] > 0 and seq <= linear_span and n == seq and c2p_at >= 0 and p2c_at >= 0
    quant = fused and qtables.shape[0] > 0
    kw = _skewed_width(n) if fused else n16
    kpan = aligned_bytes((n16 if quant else kw) * d * 4).view(np.float32)   # panel rows on cache lines (memory.py)
    # Keys past n are padding: zero once here, as every head writes only keys below n. (Each head
    # zeroing them cost a short sequence most of its time: 31 of a 1-token head's 32 keys.) Their
    # scores are computed but never read; zeros keep them finite and not denormal (128: a zero byte key).
    if fused and not quant:
        kpan[:] = 0.0
    # One byte buffer (keys, then a block's q rows) and one of scales (keys', then the q rows'): an inlined
    # function takes at most 30 arguments.
    q8 = aligned_bytes((kw + MR) * d if quant else 0).view(np.uint8)
    q8[:] = 128
    q8_scales = aligned_bytes((kw + MR) * 4 if quant else 0).view(np.float32)
    q8_scales[:] = 0.0
    for key in range(n, n16 if not fused or quant else 0):
        p, c = key // NR, key % NR
        for e in range(d):
            kpan[p * d * NR + e * NR + c] = 0.0
    vpan = aligned_bytes(d16 * n * 4).view(np.float32)
    scores = aligned_bytes(MR * kw * 4).view(np.float32)
    if quant:
        scores[:] = 0.0     # the 8-bit tile adds to columns nobody reads, too: they stay finite
    obuf = aligned_bytes(MR * d16 * 4).view(np.float32)
    inv_total = np.empty(MR, dtype=np.float32)
    width = (tables.shape[1] // 2 + 1) * 2 * NR if rel.shape[0] > 0 and not fused else 0   # ≥ W + 16
    cbuf = aligned_bytes(MR * width * 4).view(np.float32)
    pbuf = aligned_bytes(MR * width * 4).view(np.float32)
    pt = np.empty(seq * seq if p2c_at >= 0 and width > 0 else 0, dtype=np.float32)
    for h in range(h0, h1):
        _attend_head(qkv, flat, base, seq, valid, n, h, num_heads, scale, bias, center, tables, qtables, qcorr,
                     qscale, c2p_at, p2c_at, rel, fused, out, kpan, vpan, scores, obuf, inv_total, cbuf, pbuf, pt,
                     q8, q8_scales)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def _attend_head(qkv, flat, base, seq, valid, n, h, num_heads, scale, bias, center, tables, qtables, qcorr, qscale,
                 c2p_at, p2c_at, rel, fused, out, kpan, vpan, scores, obuf, inv_total, cbuf, pbuf, pt, q8, q8_scales):
    hidden = out.shape[1]
    ld = 3 * hidden
    d = hidden // num_heads
    d16 = (d + 2 * NR - 1) // (2 * NR) * (2 * NR)
    n16 = (n + 2 * NR - 1) // (2 * NR) * (2 * NR)
    qcol, kcol, vcol = h * d, hidden + h * d, 2 * hidden + h * d
    # K panels (a 16 x d transpose each), pre-scaled by log2(e) · scale so that scores come out in
    # log2 units; keys past n were zeroed by the caller. For the skewed tile the keys are one transpose
    # instead, kpan[e · kw + KEY_LEFT + j] (the tile reads each row's keys at its own offset).
    log2e = np.float32(1.4426950408889634)
    has_bias = bias.shape[1] > 0
    has_content = rel.shape[0] > 0
    scale = np.float32(1.4426950408889634 * scale)
    kw = _skewed_width(n) if fused else n16
    quant = fused and qtables.shape[0] > 0
    skewed_keys = fused and not quant
    kq, qa = q8[:kw * d if quant else 0], q8[kw * d if quant else 0:]
    kq32, qa32 = kq.view(np.uint32), qa.view(np.uint32)
    ks, qs = q8_scales[:kw if quant else 0], q8_scales[kw if quant else 0:]
    for p in range((n + NR - 1) // NR):
        for c in range(min(NR, n - p * NR)):
            # A head's q, k and v are 2-4 cache lines per token, tokens 3*H floats apart: every
            # line is a miss (L2 or beyond) that no hardware prefetcher sees coming, so each
            # row's k and v are asked for PREFETCH_ROWS keys ahead (v is read by the next loop).
            if p * NR + c + PREFETCH_ROWS < n:
                ahead = (base + valid[p * NR + c + PREFETCH_ROWS]) * ld
                for e in range(0, d, 16):
                    prefetch(flat, ahead + kcol + e, False)
                    prefetch(flat, ahead + vcol + e, False)
                prefetch(flat, ahead + kcol + d - 1, False)
                prefetch(flat, ahead + vcol + d - 1, False)
            src = qkv[base + valid[p * NR + c], kcol:kcol + d]
            if skewed_keys:
                for e in range(d):
                    kpan[e * kw + KEY_LEFT + p * NR + c] = src[e] * scale
            else:
                for e in range(d):
                    kpan[p * d * NR + e * NR + c] = src[e] * scale
            if quant:
                # Key j's bytes in column KEY_LEFT + j of kq, 4 at a time (rounded in qa, which is free until
                # the queries), its scale (with Qr's and the score scale) in ks.
                col = KEY_LEFT + p * NR + c
                at = (base + valid[p * NR + c]) * ld + kcol
                ks[col] = _quantize_row(flat, at, d, qa, 0) * qscale[p2c_at + h] * scale
                for w in range(d // 4):
                    kq32[w * kw + col] = qa32[w]
    # V panels of 16 columns, vpan[c, j, :] = v[valid[j], 16c:16c+16] (zero padded past d): each
    # pass of the P·V micro-kernel streams one contiguous panel.
    for jj in range(n):
        src = qkv[base + valid[jj], vcol:vcol + d]
        for c in range(d16 // NR):
            dst = vpan[(c * n + jj) * NR:(c * n + jj + 1) * NR]
            if (c + 1) * NR <= d:
                for e in range(NR):
                    dst[e] = src[c * NR + e]
            else:
                for e in range(NR):
                    dst[e] = src[c * NR + e] if c * NR + e < d else 0.0

    tw = tables.reshape(tables.size)
    panel = d * NR                           # floats per table panel
    per_table = tables.shape[1] * panel
    top = tables.shape[1] * NR - TABLE_RIGHT - 1     # the column of table row 0
    width = cbuf.shape[0] // MR
    c_first = 0
    if has_content and p2c_at >= 0 and not fused:
        _p2c(flat, base, seq, ld, kcol, d, center, rel, tw, (p2c_at + h) * per_table, top, width, pbuf, pt)

    # The skewed tile's table panels of the next head, asked for a share per query block (at most d lines of
    # each table per block): each layer's tables are new to the cache, and a head's run of them is a jump that
    # no hardware prefetcher sees coming.
    ahead_first, ahead_lines, ahead_step = 0, 0, 0
    line = 4 * NR if quant else NR     # table entries a cache line holds
    if fused and h + 1 < num_heads:
        ahead_first = (top - rel[center] - (seq - 1) - KEY_LEFT) // NR
        ahead_lines = ((top - rel[center] + kw) // NR + 1 - ahead_first) * panel // line
        ahead_step = min(d, (ahead_lines + (seq + MR - 1) // MR - 1) // ((seq + MR - 1) // MR))
    ahead_at = 0
    qt = qtables.reshape(qtables.size)
    qc = qcorr.reshape(qcorr.size)
    columns = tables.shape[1] * NR

    for i0 in range(0, seq, MR):
        rows = min(MR, seq - i0)
        for at in range(ahead_at, min(ahead_lines, ahead_at + ahead_step)):
            if quant:
                prefetch(qt, (c2p_at + h + 1) * per_table + ahead_first * panel + at * line, False)
                prefetch(qt, (p2c_at + h + 1) * per_table + ahead_first * panel + at * line, False)
            else:
                prefetch(tw, (c2p_at + h + 1) * per_table + ahead_first * panel + at * line, False)
                prefetch(tw, (p2c_at + h + 1) * per_table + ahead_first * panel + at * line, False)
        ahead_at += ahead_step
        # The next block's q rows (read in place by the micro-kernel) and output rows, the same
        # kind of misses as above, asked for one block (several thousand cycles) ahead.
        for r in range(i0 + MR, min(seq, i0 + 2 * MR)):
            for e in range(0, d, 16):
                prefetch(flat, (base + r) * ld + qcol + e, False)
                prefetch(out, (base + r) * hidden + qcol + e, True)
            prefetch(flat, (base + r) * ld + qcol + d - 1, False)
            prefetch(out, (base + r) * hidden + qcol + d - 1, True)
        s_off = 0
        if fused:
            # Row r covers keys from −s_off + r on (the skewed tile): key j of row i reads table row
            # m = rel[center] + i − j, column top − m, so the tile's table columns start at
            # top − rel[center] − i0 − s_off, on a panel when s_off is SKEW plus that column's excess over one.
            # Key j sits in column KEY_LEFT + j of kpan, and in column s_off + j of its scores row.
            x0 = top - rel[center] - i0 - SKEW
            s_off = SKEW + x0 % NR
            t0 = (x0 - x0 % NR) // NR * panel
        if quant:
            # q · k on key panels into columns s_off + j, then the position terms added on the 8-bit skewed tile
            # (table offsets as below: an 8-bit panel holds as many entries as a float one).
            for p in range(0, n16 // NR, 2):
                _tile(rows, scores, s_off + p * NR, kw, flat, (base + i0) * ld + qcol, ld, kpan, p * d * NR, d * NR,
                      NR, d)
            for r in range(rows):
                qs[r] = _quantize_row(flat, (base + i0 + r) * ld + qcol, d, qa, r * d) * qscale[c2p_at + h]
            x_first = x0 - x0 % NR
            for c0 in range(0, kw - 2 * NR, 2 * NR):
                _tile_positions(rows, scores, c0, kw, qa, d, kq, KEY_LEFT - s_off + c0, kw * 4, d // 4, qt,
                                (c2p_at + h) * per_table + t0 + c0 * d, (p2c_at + h) * per_table + t0 + c0 * d,
                                panel, qc, (c2p_at + h) * columns + x_first + c0,
                                (p2c_at + h) * columns + x_first + c0, qs, ks)
        elif fused:
            for c0 in range(0, kw - 2 * NR, 2 * NR):
                _tile_disentangled(rows, scores, c0, kw, flat, (base + i0) * ld + qcol, ld, kpan,
                                   KEY_LEFT - s_off + c0, kw, d, tw, (c2p_at + h) * per_table + t0 + c0 * d,
                                   (p2c_at + h) * per_table + t0 + c0 * d, panel)
        else:
            for p in range(0, n16 // NR, 2):    # two key panels per call
                _tile(rows, scores, p * NR, n16, flat, (base + i0) * ld + qcol, ld, kpan, p * d * NR, d * NR, NR, d)
        if has_content and c2p_at >= 0 and not fused:
            # The block's q rows times the Kr rows its scores reach, rel[center + j − i] over its keys j
            # and rows i (rel is non-increasing): columns top − highest ... top − lowest, in panel pairs from
            # the panel of the first.
            c_first = top - rel[center + valid[0] - (i0 + rows - 1)]
            c_first -= c_first % NR
            last = top - rel[center + valid[n - 1] - i0]
            for p in range(0, (last - c_first) // (2 * NR) + 1):
                _tile(rows, cbuf, p * 2 * NR, width, flat, (base + i0) * ld + qcol, ld, tw,
                      (c2p_at + h) * per_table + c_first * d + p * 2 * panel, panel, NR, d)
        for r in range(rows):
            srow = scores[r * kw + s_off:r * kw + s_off + n]
            if has_bias:
                for j in range(n):
                    srow[j] += bias[h, center + valid[j] - (i0 + r)] * log2e
            if has_content and not fused:
                # Scores are in log2 units already scaled, and so is Kr; p2c takes scale · log2(e) here.
                i = i0 + r
                prow = pt[i * seq:(i + 1) * seq] if p2c_at >= 0 else pt
                crow = cbuf[r * width:(r + 1) * width]
                if c2p_at < 0:
                    for j in range(n):
                        srow[j] += prow[valid[j]] * scale
                elif p2c_at < 0:
                    for j in range(n):
                        srow[j] += crow[top - rel[center + valid[j] - i] - c_first]
                else:
                    for j in range(n):
                        srow[j] += crow[top - rel[center + valid[j] - i] - c_first] + prow[valid[j]] * scale
            inv_total[r] = np.float32(1.0) / _softmax_row(scores, r * kw + s_off, n)
        for c0 in range(0, d16, 2 * NR):   # two output panels per call
            _tile(rows, obuf, c0, d16, scores, s_off, kw, vpan, c0 * n, NR * n, NR, n)
        for r in range(rows):
            inv = inv_total[r]
            # Row views indexed from 0: with out[t, qcol + e] Numba's negative-index wraparound
            # turned each vector of 8 results into 8 scalar stores.
            dst, src = out[base + i0 + r, qcol:qcol + d], obuf[r * d16:r * d16 + d]
            for e in range(d):
                dst[e] = src[e] * inv


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def _p2c(flat, base, seq, ld, kcol, d, center, rel, tw, t_off, top, width, pbuf, pt):
    """pt[i·seq + j] = k_j · Qr[rel[center + j − i]] for the sequence's keys j and queries i (Qr: the table
    at t_off of tw, row m in column top − m). Each block of 6 keys times the Qr rows it reaches (rel over
    i = seq − 1 ... 0: about seq + 6 rows), then moved to pt."""
    for j0 in range(0, seq, MR):
        rows = min(MR, seq - j0)
        first = top - rel[center + j0 - (seq - 1)]      # j − i smallest: the highest row
        first -= first % NR
        last = top - rel[center + j0 + rows - 1]        # j − i largest: the last key, i = 0
        for p in range(0, (last - first) // (2 * NR) + 1):
            _tile(rows, pbuf, p * 2 * NR, width, flat, (base + j0) * ld + kcol, ld, tw,
                  t_off + first * d + p * 2 * d * NR, d * NR, NR, d)
        for i in range(seq):
            dst = pt[i * seq + j0:i * seq + j0 + rows]
            for r in range(rows):
                dst[r] = pbuf[r * width + top - rel[center + j0 + r - i] - first]


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
