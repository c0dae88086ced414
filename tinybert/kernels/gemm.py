"""Linear layers, y = x @ W.T + b: the entry points the layers call, above the kernel families.

This module holds no kernel.  It chooses, at load time, how a weight is packed and, per call,
which family runs it; the families never import one another:

    gemm.py        pack_weight / linear_int8: layout by cpu.best_layout(), family by weight dtype
      |-- gemm_pairs.py  int8 "pairs" layout (AVX2 vpmaddwd, or the same IR in generic vectors)
      |-- gemm_vnni.py   int8 "quads" layout (AVX-512 VNNI and AMX drivers, native or emulated)
      |-- gemm_fp32.py   fp32 panels (FMA micro-kernel, Numba threads, no BLAS)
      |-- gemm_int4.py   4-bit group-wise weights (portable Numba, AVX-512 VNNI native or emulated)
      |-- quant.py       the int8 activation scheme both int8 families compile in (see there)
      `-- cpu.py         target features, TINYBERT_INT8_ISA / _EMULATE, layout and driver choice

Why the split: the two int8 families used to be one file each that imported the other (gemm_vnni
at module level, gemm lazily inside pack_weight / linear_int8), so neither could be read, tested
or changed alone, and "which CPU runs what" was decided in three places.  Now the shared scheme
(quant.py) and the CPU decisions (cpu.py) sit below both families, and the dispatch here above
them.

The names the layers and the converter use (pack_weight, pack_weight_fp32, linear_fp32,
linear_int8_checked_weights, check_layer, check_wsum, weight_sums, act_qmax, NO_SUMS, layer_input,
...) stay importable from here; each lives in the module that owns it.

int8 scheme, in short (quant.py has the whole of it): int8 weights with a per-output-channel scale,
activations quantised per row to 12 bits (8 bits, centred, for layers the converter calibrated),
exact integer dot products and one float32 epilogue, so every path gives bit-identical results.
"""

import numpy as np

from . import gemm_vnni
from .cpu import best_layout as best_layout
from .cpu import check_layout
from .gemm_fp32 import F32_PANELS as F32_PANELS
from .gemm_fp32 import fp32_rows
from .gemm_fp32 import is_packed_fp32 as is_packed_fp32
from .gemm_fp32 import linear_fp32 as linear_fp32
from .gemm_fp32 import pack_weight_fp32 as pack_weight_fp32
from .gemm_int4 import Int4Weight as Int4Weight
from .gemm_int4 import check_int4_bias as check_int4_bias
from .gemm_int4 import linear_int4 as linear_int4
from .gemm_int4 import linear_int4_checked_weights as linear_int4_checked_weights
from .gemm_pairs import MR as MR
from .gemm_pairs import NR as NR
from .gemm_pairs import check_layer as check_layer
from .gemm_pairs import is_packed as is_packed
from .gemm_pairs import linear_int8_checked_weights as linear_int8_checked_weights
from .gemm_pairs import linear_pairs, pack_pairs, pairs_rows
from .gemm_pairs import pairs_weight_sums as pairs_weight_sums
from .gemm_pairs import qlinear_packed as qlinear_packed
from .quant import ACC_BLOCK as ACC_BLOCK
from .quant import ACT8_QMAX as ACT8_QMAX
from .quant import ACT_QMAX as ACT_QMAX
from .quant import NO_SUMS as NO_SUMS
from .quant import QMAX12 as QMAX12
from .quant import act_qmax as act_qmax
from .quant import check_scale_bias as check_scale_bias
from .quant import check_wsum as check_wsum
from .quant import dequantised_sums as dequantised_sums
from .quant import layer_input as layer_input
from .quant import weight_sums as weight_sums


def pack_weight(wq: np.ndarray, layout: str | None = None) -> np.ndarray:
    """Pack int8 weights [N, K] once, at load time, for ``linear_int8``.

    layout None picks ``best_layout()`` (cpu.py).  "quads" gives gemm_vnni.pack_quads (uint8, for the
    AVX-512 VNNI and AMX kernels); "pairs" gives gemm_pairs.pack_pairs (int8 [N/16, K/2, 32], for the
    AVX2 / generic vector kernel).  The dtype of the result tells the families apart.
    """
    if check_layout(layout) == "quads":
        return gemm_vnni.pack_quads(wq)
    return pack_pairs(wq)


def packed_rows(w: np.ndarray, ids: np.ndarray, k_dim: int) -> np.ndarray:
    """Rows ``ids`` (int32, each in [0, N)) of the [N, k_dim] weight that pack_weight (int8 out) or
    pack_weight_fp32 (float32 out) packed into w, as they were before packing."""
    if w.dtype == np.uint8:
        out, rows = np.empty((ids.shape[0], k_dim), dtype=np.int8), gemm_vnni.quads_rows
    elif w.dtype == np.int8:
        out, rows = np.empty((ids.shape[0], k_dim), dtype=np.int8), pairs_rows
    else:
        out, rows = np.empty((ids.shape[0], k_dim), dtype=np.float32), fp32_rows
    rows(w, ids, out)
    return out


def linear_int8(x: np.ndarray, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray,
                path: str | None = None, act_bits: int = 12) -> np.ndarray:
    """y = dequant(wq, ws) applied to x (float32 [M, K]) with per-row 12-bit (or ``act_bits`` = 8,
    centred) activations; every argument checked.

    wq is, best, ``pack_weight(wq)`` computed once at load time, or the raw int8 [N, K] weight
    (packed on every call, in the pairs layout unless path names a quads driver).
    path: for pairs, None or "simd"; for quads, None, "vnni" or "amx" (cpu.quads_path).
    Every combination gives bit-identical results.
    """
    if wq.dtype == np.uint8:
        return gemm_vnni.linear_quads(np.ascontiguousarray(x, dtype=np.float32), wq, ws, bias, path, act_bits)
    if not is_packed(wq):
        if path in ("vnni", "amx"):
            return gemm_vnni.linear_quads(np.ascontiguousarray(x, dtype=np.float32),
                                          gemm_vnni.pack_quads(wq), ws, bias, path, act_bits)
        wq = pack_pairs(wq)
    return linear_pairs(x, wq, ws, bias, path, act_bits)
