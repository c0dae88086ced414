"""Linear layers: y = x @ W.T + b with int8 (+ per-channel scale), int4 (+ group scales) or float32 weights, the
one door to the GEMMs."""

from __future__ import annotations

import numba
import numpy as np

from ..format import GROUP_MIN_SUFFIX, GROUP_SCALE_SUFFIX, SCALE_SUFFIX, SMOOTH_SUFFIX
from ..kernels import gemm, gemm_vnni

_NO_SCALE = np.zeros(0, dtype=np.float32)


class Linear:
    """y = x @ W.T + b with W int8 (+ per-output-channel scale), int4 (uint8 codes + float16 ``.gscale`` and
    ``.gmin`` per group of 32; 8-bit centred inputs, see kernels/gemm_int4.py) or float32.

    An int8 layer quantises its input per row to 12 bits, or to 8 (centred on the row's midpoint)
    when the file gives it a ``.smooth`` vector (the input is divided by it first; see
    format.SMOOTH_SUFFIX).
    """

    def __init__(self, tensors: dict[str, np.ndarray], name: str, weight_name: str | None = None,
                 bias: np.ndarray | None = None) -> None:
        weight_name = weight_name or name + ".weight"   # a tied weight lives under another name
        self.weight = tensors[weight_name]
        if self.weight.dtype == np.uint8:               # int4 codes (format.py): a family of their own
            self._init_int4(tensors, name, weight_name, bias)
            return
        self.int4 = None
        self.scale = tensors.get(weight_name + SCALE_SUFFIX)
        self.out_features, self.in_features = self.weight.shape
        # Projections without a bias (Llama) run the same kernels with a zero one.
        self.bias = tensors.get(name + ".bias", bias)
        if self.bias is None:
            self.bias = np.zeros(self.out_features, dtype=np.float32)
        # The 8-bit marker is the layer's own, also when its weight is another's (a tied LM head).
        smooth = tensors.get(name + ".weight" + SMOOTH_SUFFIX) if self.scale is not None else None
        self.act_qmax = gemm.act_qmax(12 if smooth is None else 8)
        # 8-bit layers centre their input rows; the weight's row sums give back what that took out.
        self.wsum = gemm.NO_SUMS if smooth is None else gemm.weight_sums(self.weight, self.scale)
        # Pack once at load into the panel layout the GEMM micro-kernels read.
        if self.scale is not None:
            self.weight = gemm.pack_weight(self.weight)
        else:
            self.weight = gemm.pack_weight_fp32(self.weight)
        self._quads = gemm_vnni.is_quads(self.weight)
        self.quantized = self.scale is not None
        self.row_bands = False     # see use_row_bands
        # 1 / smooth, or None where it is all ones (nothing to divide).
        self.input_scale = None if smooth is None or (smooth == 1).all() else \
            (np.float32(1) / np.asarray(smooth, dtype=np.float32))
        if self.scale is not None:     # checked once here, so that each call checks only its input
            self.scale = np.ascontiguousarray(self.scale, dtype=np.float32)
            self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
            (gemm_vnni if self._quads else gemm).check_layer(self.weight, self.scale, self.bias, self.in_features)
            gemm.check_wsum(self.wsum, self.scale, self.act_qmax)
        # The VNNI quantiser multiplies each row by 1 / smooth as it reads it (in L1); the other paths
        # get the input multiplied first.
        self._fused_smooth = gemm_vnni.NO_SMOOTHING
        if self._quads and self.input_scale is not None:
            self._fused_smooth = np.ascontiguousarray(self.input_scale, dtype=np.float32)
            gemm_vnni.check_smooth(self._fused_smooth, self.in_features)

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``ids`` of the weight as the file holds them (int8 with their scales, or float32 with an empty
        scale): a tied token table looks its rows up here instead of keeping a second copy of the table."""
        if self.int4 is not None:       # tables and tied heads stay int8 (convert/int4.py)
            raise TypeError("an int4 layer's rows are not a token table")
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.size and (ids.min() < 0 or ids.max() >= self.out_features):
            raise IndexError(f"row ids outside [0, {self.out_features})")
        values = gemm.packed_rows(self.weight, ids, self.in_features)
        return values, (self.scale[ids] if self.scale is not None else _NO_SCALE)

    def _init_int4(self, tensors: dict[str, np.ndarray], name: str, weight_name: str,
                   bias: np.ndarray | None) -> None:
        """An int4 weight: codes + float16 group scales and offsets, 8-bit centred inputs (kernels/gemm_int4.py)."""
        codes = self.weight
        self.int4 = gemm.Int4Weight(codes, tensors[weight_name + GROUP_SCALE_SUFFIX],
                                         tensors[weight_name + GROUP_MIN_SUFFIX], 2 * codes.shape[1])
        self.weight = self.int4      # one layout only (see Int4Weight): the raw codes are not kept
        self.out_features, self.in_features = codes.shape[0], 2 * codes.shape[1]
        bias = tensors.get(name + ".bias", bias)
        self.bias = np.ascontiguousarray(np.zeros(self.out_features, np.float32) if bias is None else bias,
                                         dtype=np.float32)
        gemm.check_int4_bias(self.bias, self.out_features)
        self.scale, self.quantized, self._quads, self.row_bands = None, True, False, False
        self.input_scale, self.act_qmax, self.wsum = None, gemm.act_qmax(8), self.int4.wsum

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """x float32 [M, in_features] → [M, out_features]. ``threads``: numba.get_num_threads(), when the
        caller has it (each call of that costs ~0.8 us, 2-3 % of a batch-1 MiniLM forward)."""
        if self.int4 is not None:
            return gemm.linear_int4_checked_weights(x, self.int4, self.bias,
                                                    numba.get_num_threads() if threads is None else threads)
        if self._quads:
            return gemm_vnni.linear_quads_checked_weights(x, self.weight, self.scale, self.bias, self.in_features,
                                                          self.act_qmax, self.wsum, self._fused_smooth,
                                                          numba.get_num_threads() if threads is None else threads,
                                                          self.row_bands)
        if self.input_scale is not None:
            x = gemm.layer_input(x, self.in_features) * self.input_scale
        if self.scale is not None:
            return gemm.linear_int8_checked_weights(x, self.weight, self.scale, self.bias, self.in_features,
                                                    self.act_qmax, self.wsum)
        return gemm.linear_fp32(x, self.weight, self.bias)


def use_row_bands(layers: list[Linear]) -> None:
    """Let a model's int8 layers split a few rows (8-64) over the threads by rows, each thread then
    reading every weight (gemm_vnni._gemm_vnni_bands), when all their weights fit in the cache
    budget gemm_vnni.ROW_BANDS_WEIGHTS; from memory, splitting the columns reads each weight once."""
    quads = [layer for layer in layers if layer._quads]
    if sum(layer.weight.nbytes for layer in quads) <= gemm_vnni.ROW_BANDS_WEIGHTS:
        for layer in quads:
            layer.row_bands = True
