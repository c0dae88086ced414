"""int4 linear layers: group-wise 4-bit weights, 8-bit activations, exact integer group dots.

Weights (format.py, "int4 weights"): along K in groups of GROUP = 32, unsigned 4-bit codes
q in [0, 15] with one float16 scale s and one float16 offset m per (output channel, group):

    W[n, k] = s[n, g] * q[n, k] - m[n, g],     g = k // 32

stored two codes per byte: byte 16 g + i of row n holds q[n, 32 g + i] in its low nibble and
q[n, 32 g + 16 + i] in its high nibble (llama.cpp's Q4_0 order, so its blocks repack byte for byte).

Activations: each row quantised to 8 bits exactly as the int8 path's 8-bit rows (quant.py:
row_scale_centre, centred on the row's midpoint, ``xq = rint((x - c) * (1 / xs))``, |xq| <= 127).
Then, per group, two exact integers

    D[m, n, g] = sum_{k in g} q[n, k] * xq[m, k]        (|D| <= 15 * 127 * 32 < 2**24)
    S[m, g]    = sum_{k in g} xq[m, k]                   (once per row)

and one float32 epilogue, evaluated left to right in float32 without fused multiply-adds:

    acc = 0;  for g in order:  acc = acc + (s[n, g] * D - m[n, g] * S)
    y[m, n] = acc * xs[m] + b[n];   y[m, n] += c[m] * wsum[n]

with wsum[n] = sum_k W[n, k] over the real k (float32 of a float64 sum, computed at load): the part
of x @ W.T that centring took out.  D and S are below 2**24, so float32(D) and float32(S) are exact,
and every path that computes the same integers gives bit-identical outputs.  K not a multiple of 32
is padded with zero codes and zero activations (the padding adds nothing to D or S).

Paths: ``portable`` (Numba loops, any CPU) and ``vnni`` (AVX-512 VNNI ``vpdpbusd`` on the unsigned
codes; on a CPU without it the same IR with the instruction spelt in generic vectors, so the path is
tested anywhere). The default takes ``vnni`` where the target has the instruction, for any number of rows:
its driver reads each thread's panels as one sequential stream and runs the rows against a panel four at a
time (each weight block loaded and unpacked once for them; a panel of a K = 4864 layer is 48 KB, so the
next four rows read it from L2). Prefill is not tuned further: measured on Zen 4, one thread, a
4864 x 896 layer, 64 rows take 2.5-2.9 ms (one row: 62 us), 1.5-1.7x an int8 layer's tiled GEMM (1.7 ms).
Decode is a stream: the panel loop prefetches irloop.STREAM_PREFETCH_BYTES ahead of it, the driver the epilogue's
bias and sums a few panels ahead, and each panel ends in one masked vector epilogue (``_finish_panel``); quantising
the row and the driver are one compiled call (docs/performance.md: 27 -> 41 GB/s on a 135M-shape chain).

VNNI layout (``pack_vnni``, at load): panels of NR = 16 output channels; per (panel p, group g) one block
of BLOCK_BYTES = 320 bytes, blocks in (p, g) order:

    bytes [64 o + 4 j + t]  (o < 4, j < 16, t < 4):  q[16p + j, 32g + 4o + t] | q[16p + j, 32g + 16 + 4o + t] << 4
    bytes [256 + 2 j]:      s[16p + j, g] (float16),   bytes [288 + 2 j]: m[16p + j, g] (float16)

so one zmm load of codes gives, masked, 16 lanes x 4 low-nibble codes (k = 32g + 4o .. +3, the dword
``vpdpbusd`` multiplies by the broadcast activations x[32g + 4o .. +3]) and, shifted, 4 high-nibble codes
(k + 16).  Codes are unsigned and activations signed, as the instruction wants: no +128 offset and no
compensation term.  A thread reads its panels front to back, 320 bytes per group, scales beside the codes.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu
from .half import F16C
from .irloop import STREAM_PREFETCH_BYTES, dpbusd, no_unroll, prefetch
from .jitcache import fast_cache_loading
from .memory import EPILOGUE_AHEAD_PANELS, aligned_empty
from .memory import prefetch as prefetch_element
from .quant import ACT8_QMAX, layer_input, row_scale_centre

GROUP = 32             # weights per (channel, group) scale and offset
GROUP_BYTES = GROUP // 2
MAX_K = 1 << 20        # a bound far above any real width; keeps every index in int64 trivially


class Int4Weight:
    """One int4 layer's weight as the kernels read it, in ONE layout: the VNNI panels (``panels``, where the
    target has VNNI) or the portable arrays (``codes`` uint8 [N, 16 G], ``scales`` and ``mins`` float32 [N, G]);
    the other is derived on first use (tests run both paths on one weight), so a loaded model holds 5 bits
    per weight (4 + two float16 per 32), not both copies. Also wsum float32 [N] and the true K (the codes
    are padded to 32 G)."""

    __slots__ = ("_portable", "panels", "wsum", "k_dim", "out_features", "groups")

    def __init__(self, codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> None:
        check_int4(codes, scales, mins, k_dim)
        self.k_dim, self.out_features, self.groups = k_dim, codes.shape[0], scales.shape[1]
        self.wsum = weight_sums_int4(codes, scales, mins, k_dim)
        self.panels = self._portable = None
        if _vnni_native():
            self.panels = pack_vnni(codes, scales, mins)
        else:
            self._portable = (np.ascontiguousarray(codes), np.ascontiguousarray(scales, dtype=np.float32),
                              np.ascontiguousarray(mins, dtype=np.float32))

    def portable(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, scales, mins) for the portable kernel (unpacked from the panels the first time, if need be)."""
        if self._portable is None:
            self._portable = unpack_vnni(self.panels, self.out_features)
        return self._portable

    def vnni(self) -> np.ndarray:
        """The VNNI panels (packed the first time, if need be)."""
        if self.panels is None:
            self.panels = pack_vnni(*self._portable)
        return self.panels

    @property
    def nbytes(self) -> int:
        arrays = ([self.panels] if self.panels is not None else []) + list(self._portable or ())
        return sum(a.nbytes for a in arrays)


def groups(k_dim: int) -> int:
    """Groups of GROUP along a K-wide row (the last one padded)."""
    return -(-k_dim // GROUP)


def check_int4(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> None:
    """codes uint8 [N, 16 G], scales and offsets float16 or float32 [N, G], G = ceil(k_dim / 32); ValueError else."""
    if not 1 <= k_dim <= MAX_K:
        raise ValueError(f"K = {k_dim} is outside 1 .. {MAX_K}")
    g = groups(k_dim)
    if not (isinstance(codes, np.ndarray) and codes.dtype == np.uint8 and codes.ndim == 2
            and codes.shape[1] == g * GROUP_BYTES and codes.shape[0] >= 1):
        raise ValueError(f"int4 codes must be uint8 [N, {g * GROUP_BYTES}], got "
                         f"{getattr(codes, 'dtype', type(codes))}{getattr(codes, 'shape', '')}")
    for name, a in (("scales", scales), ("offsets", mins)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float16, np.float32) and a.shape == (codes.shape[0], g)):
            raise ValueError(f"int4 {name} must be float16 or float32 [{codes.shape[0]}, {g}], got "
                             f"{getattr(a, 'dtype', type(a))}{getattr(a, 'shape', '')}")


def unpack_codes(codes: np.ndarray, k_dim: int) -> np.ndarray:
    """The codes [N, 16 G] as uint8 [N, k_dim] (numpy; for the converter and tests)."""
    n, g = codes.shape[0], codes.shape[1] // GROUP_BYTES
    b = codes.reshape(n, g, GROUP_BYTES)
    return np.concatenate([b & 0x0F, b >> 4], axis=2).reshape(n, g * GROUP)[:, :k_dim]


def pack_codes(q: np.ndarray) -> np.ndarray:
    """uint8 codes [N, K] in 0..15 → the two-per-byte layout [N, 16 G] (zero codes pad K to 32 G)."""
    n, k = q.shape
    g = groups(k)
    full = np.zeros((n, g * GROUP), dtype=np.uint8)
    full[:, :k] = q
    full = full.reshape(n, g, 2, GROUP_BYTES)
    return (full[:, :, 0] | (full[:, :, 1] << 4)).reshape(n, g * GROUP_BYTES)


def dequantize(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> np.ndarray:
    """W = s * q - m as float32 [N, k_dim] (the float products of the format's definition)."""
    q = unpack_codes(codes, k_dim).astype(np.float32)
    s = np.repeat(scales.astype(np.float32), GROUP, axis=1)[:, :k_dim]
    m = np.repeat(mins.astype(np.float32), GROUP, axis=1)[:, :k_dim]
    return s * q - m


def weight_sums_int4(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray, k_dim: int) -> np.ndarray:
    """wsum[n] = sum over the real k of s q - m: float64 sums, rounded once to float32."""
    g = groups(k_dim)
    # Summed from the bytes, two codes each: unpacking [N, K] to int64 first took 8 bytes a weight at load.
    b = codes.reshape(codes.shape[0], g, GROUP_BYTES)
    qsum = ((b & 0x0F).sum(axis=2, dtype=np.int32) + (b >> 4).sum(axis=2, dtype=np.int32)).astype(np.float64)
    counts = np.full(g, GROUP, dtype=np.float64)           # padding codes are zero
    counts[-1] = k_dim - (g - 1) * GROUP
    with np.errstate(over="ignore", invalid="ignore"):
        total = (scales.astype(np.float64) * qsum - mins.astype(np.float64) * counts).sum(axis=1)
    return total.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Activations: 8-bit rows, centred, with their group sums
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_row(x, m, xq, xs, xc, gsum):
    qmax = np.float32(ACT8_QMAX)
    scale, centre = row_scale_centre(x, m, qmax)
    xs[m] = scale
    xc[m] = centre
    k_dim = x.shape[1]
    row, q = x[m], xq[m]
    if np.isnan(scale):          # non-finite row: zeros, and the NaN scale poisons the output
        q[:] = 0
        gsum[m, :] = 0
        return
    inv = np.float32(1.0) / scale
    for k in range(k_dim):
        q[k] = np.int8(np.rint((row[k] - centre) * inv))
    q[k_dim:] = 0
    for g in range(gsum.shape[1]):
        s = np.int32(0)
        for i in range(GROUP):
            s += np.int32(q[g * GROUP + i])
        gsum[m, g] = s


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_rows(x, xq, xs, xc, gsum):
    for m in prange(x.shape[0]):
        _quantize_row(x, m, xq, xs, xc, gsum)


def quantize_rows(x: np.ndarray, k_pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xq int8 [M, k_pad], xs f32 [M], xc f32 [M], gsum int32 [M, k_pad / 32]) of float32 x [M, K]."""
    m_rows = x.shape[0]
    xq = np.zeros((m_rows, k_pad), dtype=np.int8)
    xs = np.empty(m_rows, dtype=np.float32)
    xc = np.empty(m_rows, dtype=np.float32)
    gsum = np.zeros((m_rows, k_pad // GROUP), dtype=np.int32)
    if m_rows:
        _quantize_rows(x, xq, xs, xc, gsum)
    return xq, xs, xc, gsum


# ----------------------------------------------------------------------------------------------
# Portable GEMM (any CPU; any M)
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def finish_group(acc, s, d, mn, gs):
    """One group's term of the epilogue, in the order every path uses: acc + (s * D - m * S)."""
    return acc + (s * np.float32(d) - mn * np.float32(gs))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def finish_row(acc, xs, bias, xc, wsum):
    """The epilogue's end: (acc * xs + b) + c * wsum, in float32."""
    y = acc * xs + bias
    return y + xc * wsum


BLOCK_N = 16   # output channels per parallel task


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _gemm_portable(xq, xs, xc, gsum, codes, scales, mins, bias, wsum, out):
    m_rows, n_dim = out.shape
    n_groups = scales.shape[1]
    kp = n_groups * GROUP
    for task in prange((n_dim + BLOCK_N - 1) // BLOCK_N):
        w = np.empty(kp, dtype=np.int32)
        d = np.empty(n_groups, dtype=np.int32)
        for n in range(task * BLOCK_N, min(n_dim, (task + 1) * BLOCK_N)):
            row = codes[n]
            for b in range(kp // 2):
                g, i = b // GROUP_BYTES, b % GROUP_BYTES
                w[g * GROUP + i] = np.int32(row[b] & np.uint8(15))
                w[g * GROUP + GROUP_BYTES + i] = np.int32(row[b] >> np.uint8(4))
            for m in range(m_rows):
                xr = xq[m]
                for g in range(n_groups):
                    s = np.int32(0)
                    for k in range(g * GROUP, g * GROUP + GROUP):
                        s += w[k] * np.int32(xr[k])
                    d[g] = s
                acc = np.float32(0.0)
                for g in range(n_groups):
                    acc = finish_group(acc, scales[n, g], d[g], mins[n, g], gsum[m, g])
                out[m, n] = finish_row(acc, xs[m], bias[n], xc[m], wsum[n])


def check_int4_bias(bias: np.ndarray, n_dim: int) -> None:
    if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (n_dim,)
            and bias.flags.c_contiguous):
        raise ValueError(f"bias must be contiguous float32 [{n_dim}]")


def linear_int4(x: np.ndarray, weight: Int4Weight, bias: np.ndarray, path: str | None = None) -> np.ndarray:
    """y = x @ W.T + b for float32 x [M, K] and an int4 weight; ``path`` None (the best for the CPU),
    "portable", "vnni" (emulated where the CPU lacks AVX-512 VNNI) or "vnni-emulated" (always the generic IR;
    for tests). Every path gives bit-identical results."""
    if x.ndim != 2 or x.shape[1] != weight.k_dim:
        raise ValueError(f"expected input of shape [M, {weight.k_dim}], got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_int4_bias(bias, weight.out_features)
    if path not in (None, "portable", "vnni", "vnni-emulated"):
        raise ValueError(f"unknown int4 path {path!r}")
    kp = weight.groups * GROUP
    out = np.empty((x.shape[0], weight.out_features), dtype=np.float32)
    if x.shape[0] == 0:
        return out
    if path in ("vnni", "vnni-emulated") or (path is None and _vnni_native()):
        return _linear_vnni(x, weight, bias, out, emulate=path == "vnni-emulated")
    xq, xs, xc, gsum = quantize_rows(x, kp)
    codes, scales, mins = weight.portable()
    _gemm_portable(xq, xs, xc, gsum, codes, scales, mins, bias, weight.wsum, out)
    return out


def _vnni_native() -> bool:
    return bool(cpu.POLICY.target_vnni)


# ----------------------------------------------------------------------------------------------
# AVX-512 VNNI (or its generic-IR spelling)
# ----------------------------------------------------------------------------------------------

NR = 16                          # output channels per panel: one zmm of int32 / float32 lanes
BLOCK_BYTES = 8 * 32 + 2 * 32    # codes of 16 channels x 32 k, then 16 float16 scales and 16 offsets


def pack_vnni(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """The VNNI layout (module docstring) of codes [N, 16 G] and float16-valued scales / offsets [N, G]:
    uint8 [ceil(N / 16), G, 320], 64-byte aligned; padding channels have zero codes, scales and offsets."""
    n, g = scales.shape
    p = -(-n // NR)
    q = np.zeros((p * NR, g * GROUP), dtype=np.uint8)
    q[:n] = unpack_codes(codes, g * GROUP)
    q = q.reshape(p, NR, g, 2, 4, 4)                        # [p, j, g, half, o, t]
    nibbles = q[:, :, :, 0] | (q[:, :, :, 1] << 4)           # [p, j, g, o, t]
    packed = aligned_empty((p, g, BLOCK_BYTES), np.uint8)
    packed[:, :, :256] = nibbles.transpose(0, 2, 3, 1, 4).reshape(p, g, 256)
    for off, values in ((256, scales), (288, mins)):
        half = np.zeros((p * NR, g), dtype=np.float16)
        half[:n] = values.astype(np.float16)                 # float32 copies of float16 values: exact
        packed[:, :, off:off + 32] = half.reshape(p, NR, g).transpose(0, 2, 1).copy().view(np.uint8).reshape(p, g, 32)
    return packed


def unpack_vnni(panels: np.ndarray, n_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pack_vnni's inverse: (codes uint8 [n_dim, 16 G], scales float32 [n_dim, G], offsets float32 [n_dim, G])."""
    p, g = panels.shape[0], panels.shape[1]
    nibbles = panels[:, :, :256].reshape(p, g, 4, NR, 4).transpose(0, 3, 1, 2, 4)     # [p, j, g, o, t]
    q = np.stack([nibbles & 0x0F, nibbles >> 4], axis=3).reshape(p * NR, g * GROUP)[:n_dim]
    halves = [panels[:, :, off:off + 32].copy().view(np.float16).reshape(p, g, NR).transpose(0, 2, 1)
              .reshape(p * NR, g)[:n_dim].astype(np.float32) for off in (256, 288)]
    return pack_codes(q), np.ascontiguousarray(halves[0]), np.ascontiguousarray(halves[1])


def _half_to_float_generic(builder, h):
    """<16 x i16> float16 bits -> <16 x float>, exactly, in integer IR (targets without F16C)."""
    i32, f32 = ir.IntType(32), ir.FloatType()
    v16i32, v16f32 = ir.VectorType(i32, 16), ir.VectorType(f32, 16)

    def c(v):
        return ir.Constant(v16i32, [v] * 16)

    b = builder.zext(h, v16i32)
    sign = builder.shl(builder.and_(b, c(0x8000)), c(16))
    e = builder.and_(builder.lshr(b, c(10)), c(31))
    man = builder.and_(b, c(0x3FF))
    normal = builder.or_(sign, builder.or_(builder.shl(builder.add(e, c(112)), c(23)), builder.shl(man, c(13))))
    special = builder.or_(sign, builder.or_(c(0x7F800000), builder.shl(man, c(13))))
    tiny = builder.fmul(builder.uitofp(man, v16f32), ir.Constant(v16f32, [2.0 ** -24] * 16))   # exact
    tiny = builder.or_(builder.bitcast(tiny, v16i32), sign)
    bits = builder.select(builder.icmp_unsigned("==", e, c(0)), tiny,
                          builder.select(builder.icmp_unsigned("==", e, c(31)), special, normal))
    return builder.bitcast(bits, v16f32)


ROWS = 4    # activation rows per multi-row kernel call: each weight block is loaded and unpacked once for them


def _make_panel_kernel(emit_vnni: bool, f16c: bool, rows: int, prefetch_ahead: int = STREAM_PREFETCH_BYTES):
    @intrinsic
    def panel(typingctx, tile, w, w_off, x, x_off, x_stride, gs, gs_off, n_groups):
        """tile[16 r + j] = sum over g < n_groups, in order, of (s[j, g] * D[r, j, g] - m[j, g] * S[r, g])
        (float32, from 0) for r < ``rows``: the panel whose blocks start at w[w_off], row r's 8-bit codes at
        x[x_off + r * x_stride:] and its group sums (as float32) at gs[gs_off + r * n_groups:] (module docstring)."""
        for arr, dtype in ((tile, types.float32), (w, types.uint8), (x, types.int8), (gs, types.float32)):
            if not (isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1):
                return None
        sig = types.void(tile, w, w_off, x, x_off, x_stride, gs, gs_off, n_groups)

        def codegen(context, builder, signature, args):
            tys = signature.args
            i16, i32, i64, f32 = ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
            v16i32, v16f32, v16i16 = ir.VectorType(i32, 16), ir.VectorType(f32, 16), ir.VectorType(i16, 16)
            tile_p, w_p, x_p, gs_p = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                                      for i in (0, 1, 3, 6)]
            w_off_v, x_off_v, x_stride_v, gs_off_v, ng = [context.cast(builder, args[i], tys[i], types.int64)
                                                          for i in (2, 4, 5, 7, 8)]
            base = builder.gep(w_p, [w_off_v])
            xds = [builder.bitcast(builder.gep(x_p, [builder.add(x_off_v, builder.mul(x_stride_v,
                                                                                      ir.Constant(i64, r)))]),
                                   i32.as_pointer()) for r in range(rows)]
            gss = [builder.gep(gs_p, [builder.add(gs_off_v, builder.mul(ng, ir.Constant(i64, r)))])
                   for r in range(rows)]
            zero_i = ir.Constant(v16i32, [0] * 16)
            nib = ir.Constant(v16i32, [0x0F0F0F0F] * 16)
            splat0 = ir.Constant(v16i32, [0] * 16)
            dp = dpbusd(builder, emit_vnni)

            def bcast(ptr):
                one = builder.insert_element(ir.Constant(v16i32, None), builder.load(ptr, align=1),
                                             ir.Constant(i32, 0))
                return builder.shuffle_vector(one, ir.Constant(v16i32, None), splat0)

            def halves(ptr):
                h = builder.load(builder.bitcast(ptr, v16i16.as_pointer()), align=2)
                if f16c:
                    return builder.fpext(builder.bitcast(h, ir.VectorType(ir.HalfType(), 16)), v16f32)
                return _half_to_float_generic(builder, h)

            accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f32, [0.0] * 16)) for _ in range(rows)]
            with cgutils.for_range(builder, ng) as loop:
                g = loop.index
                blk = builder.gep(base, [builder.mul(g, ir.Constant(i64, BLOCK_BYTES))])
                if prefetch_ahead:          # each of the block's five lines, as the stream reaches it
                    for line in range(BLOCK_BYTES // 64):
                        prefetch(builder, blk, prefetch_ahead + 64 * line)
                codes = []
                for o in range(4):
                    wv = builder.load(builder.bitcast(builder.gep(blk, [ir.Constant(i64, 64 * o)]),
                                                      v16i32.as_pointer()), align=64)
                    codes.append((builder.and_(wv, nib),
                                  builder.and_(builder.lshr(wv, ir.Constant(v16i32, [4] * 16)), nib)))
                s = halves(builder.gep(blk, [ir.Constant(i64, 256)]))
                m = halves(builder.gep(blk, [ir.Constant(i64, 288)]))
                for r in range(rows):
                    xg = builder.gep(xds[r], [builder.mul(g, ir.Constant(i64, 8))])
                    # independent chains (one row: four of two vpdpbusd; four rows: two of four per row)
                    chains = [zero_i] * (4 if rows == 1 else 2)
                    for o, (lo, hi) in enumerate(codes):
                        c = 2 * (o & 1) if rows == 1 else 0
                        chains[c] = dp(chains[c], lo, bcast(builder.gep(xg, [ir.Constant(i64, o)])))
                        chains[c + 1] = dp(chains[c + 1], hi, bcast(builder.gep(xg, [ir.Constant(i64, 4 + o)])))
                    total = chains[0]
                    for c in chains[1:]:
                        total = builder.add(total, c)
                    d = builder.sitofp(total, v16f32)      # |D| < 2**24: exact
                    sg = builder.load(builder.gep(gss[r], [g]))
                    sgv = builder.shuffle_vector(builder.insert_element(ir.Constant(v16f32, None), sg,
                                                                        ir.Constant(i32, 0)),
                                                 ir.Constant(v16f32, None), splat0)
                    # acc + (s * D - m * S): plain IEEE operations (no fast-math flags: no FMA contraction)
                    term = builder.fsub(builder.fmul(s, d), builder.fmul(m, sgv))
                    builder.store(builder.fadd(builder.load(accs[r]), term), accs[r])
            no_unroll(builder, loop.index)
            for r in range(rows):
                builder.store(builder.load(accs[r]), builder.bitcast(builder.gep(tile_p, [ir.Constant(i64, 16 * r)]),
                                                                     v16f32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return panel


@intrinsic
def _finish_panel(typingctx, tile, t_off, out, o_off, xs, xc, bias, wsum, n0, ncols):
    """out[o_off + j] = finish_row(tile[t_off + j], xs, bias[n0 + j], xc, wsum[n0 + j]) for j < ncols (<= 16), as
    one masked vector."""
    for arr in (tile, out, bias, wsum):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1):
            return None
    sig = types.void(tile, t_off, out, o_off, xs, xc, bias, wsum, n0, ncols)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i1, i32, i64, f32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
        v16f32, v16i1 = ir.VectorType(f32, 16), ir.VectorType(i1, 16)
        tile_p, out_p, bias_p, wsum_p = [cgutils.create_struct_proxy(tys[i])(context, builder, value=args[i]).data
                                         for i in (0, 2, 6, 7)]
        t_off, o_off, n0, ncols = [context.cast(builder, args[i], tys[i], types.int64) for i in (1, 3, 8, 9)]
        xs, xc = [context.cast(builder, args[i], tys[i], types.float32) for i in (4, 5)]
        lanes = ir.Constant(ir.VectorType(i64, 16), list(range(16)))
        limit = builder.insert_element(ir.Constant(ir.VectorType(i64, 16), None), ncols, ir.Constant(i32, 0))
        limit = builder.shuffle_vector(limit, ir.Constant(ir.VectorType(i64, 16), None),
                                       ir.Constant(ir.VectorType(i32, 16), [0] * 16))
        mask = builder.icmp_signed("<", lanes, limit)
        ptr_t = v16f32.as_pointer()
        load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f32, [ptr_t, i32, v16i1, v16f32]),
                                              "llvm.masked.load.v16f32.p0v16f32")
        void = ir.VoidType()
        store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(void, [v16f32, ptr_t, i32, v16i1]),
                                               "llvm.masked.store.v16f32.p0v16f32")

        def vload(base, off):
            return builder.call(load, [builder.bitcast(builder.gep(base, [off]), ptr_t), ir.Constant(i32, 4), mask,
                                       ir.Constant(v16f32, [0.0] * 16)])

        def splat(v):
            one = builder.insert_element(ir.Constant(v16f32, None), v, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(v16f32, None), ir.Constant(ir.VectorType(i32, 16), [0] * 16))

        # finish_row's order, plain IEEE operations: (acc * xs + b) + xc * wsum
        y = builder.fadd(builder.fmul(vload(tile_p, t_off), splat(xs)), vload(bias_p, n0))
        y = builder.fadd(y, builder.fmul(splat(xc), vload(wsum_p, n0)))
        builder.call(store, [y, builder.bitcast(builder.gep(out_p, [o_off]), ptr_t), ir.Constant(i32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


_panel_native = _make_panel_kernel(cpu.POLICY.target_vnni, F16C, 1)
_panel_native_rows = _make_panel_kernel(cpu.POLICY.target_vnni, F16C, ROWS)
_panel_emulated = _make_panel_kernel(False, False, 1)      # any CPU: the tests run it everywhere
_panel_emulated_rows = _make_panel_kernel(False, False, ROWS)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _vnni_driver(xq, xs, xc, gsum, wp, bias, wsum, out, parts, emulate):
    """Each of ``parts`` tasks (one per thread) takes a contiguous run of panels and reads it front to back, a
    single sequential stream (as gemm_vnni._gemv_vnni_low); the rows run against a panel ROWS at a time (each
    weight block loaded and unpacked once for them), the last few one at a time. ``emulate`` takes the
    generic-IR kernels (one function, not one per variant: Numba's cache keys a function on its name and
    source, which two closures of one factory share)."""
    m_rows, n_dim = out.shape
    n_panels, n_groups = wp.shape[0], wp.shape[1]
    w = wp.reshape(wp.size)
    x = xq.reshape(xq.size)
    out_flat = out.reshape(out.size)
    kp = xq.shape[1]
    gsf = np.empty(m_rows * n_groups, dtype=np.float32)
    for m in range(m_rows):
        for g in range(n_groups):
            gsf[m * n_groups + g] = np.float32(gsum[m, g])            # exact: |S| <= 127 * 32
    per = (n_panels + parts - 1) // parts
    for part in prange(parts):
        tile = np.empty(ROWS * NR, dtype=np.float32)
        for p in range(part * per, min(n_panels, (part + 1) * per)):
            n0 = p * NR
            ncols = min(NR, n_dim - n0)
            w_off = p * n_groups * BLOCK_BYTES
            # A later panel's bias and sums: read from memory beside the weight stream, they cost a miss per
            # panel (a 135M-shape chain of decode GEMVs: 1.19x the kernels' time without this, 1.05-1.09x with).
            prefetch_element(bias, n0 + EPILOGUE_AHEAD_PANELS * NR, False)
            prefetch_element(wsum, n0 + EPILOGUE_AHEAD_PANELS * NR, False)
            for m0 in range(0, m_rows, ROWS):
                rows = min(ROWS, m_rows - m0)
                if rows == ROWS:
                    if emulate:
                        _panel_emulated_rows(tile, w, w_off, x, m0 * kp, kp, gsf, m0 * n_groups, n_groups)
                    else:
                        _panel_native_rows(tile, w, w_off, x, m0 * kp, kp, gsf, m0 * n_groups, n_groups)
                for r in range(rows):
                    m = m0 + r
                    if rows < ROWS:
                        if emulate:
                            _panel_emulated(tile, w, w_off, x, m * kp, kp, gsf, m * n_groups, n_groups)
                        else:
                            _panel_native(tile, w, w_off, x, m * kp, kp, gsf, m * n_groups, n_groups)
                    _finish_panel(tile, r * NR if rows == ROWS else 0, out_flat, m * n_dim + n0, xs[m], xc[m], bias,
                                  wsum, n0, ncols)


PARALLEL_QUANTIZE_ROWS = 16   # below this many rows a parallel launch costs more than quantising them serially


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_vnni_compiled(x, wp, bias, wsum, out, parts, emulate):
    """Quantise x and run the VNNI driver in one compiled call (fewer allocations and launches per layer than
    the same steps from Python)."""
    m_rows = x.shape[0]
    n_groups = wp.shape[1]
    xq = np.zeros((m_rows, n_groups * GROUP), dtype=np.int8)
    xs = np.empty(m_rows, dtype=np.float32)
    xc = np.empty(m_rows, dtype=np.float32)
    gsum = np.zeros((m_rows, n_groups), dtype=np.int32)
    if m_rows < PARALLEL_QUANTIZE_ROWS:
        for m in range(m_rows):
            _quantize_row(x, m, xq, xs, xc, gsum)
    else:
        _quantize_rows(x, xq, xs, xc, gsum)
    _vnni_driver(xq, xs, xc, gsum, wp, bias, wsum, out, max(1, min(parts, wp.shape[0])), emulate)


def _linear_vnni(x, weight, bias, out, emulate=False, threads=None):
    _linear_vnni_compiled(x, weight.vnni(), bias, weight.wsum, out,
                          numba.get_num_threads() if threads is None else threads, emulate or not _vnni_native())
    return out


def linear_int4_checked_weights(x: np.ndarray, weight: Int4Weight, bias: np.ndarray, threads: int) -> np.ndarray:
    """``linear_int4`` on the best path for a layer whose bias was checked at load (check_int4_bias): only x
    is checked here."""
    x = layer_input(x, weight.k_dim)
    out = np.empty((x.shape[0], weight.out_features), dtype=np.float32)
    if x.shape[0] == 0:
        return out
    if _vnni_native():
        return _linear_vnni(x, weight, bias, out, threads=threads)
    return linear_int4(x, weight, bias, "portable")


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
