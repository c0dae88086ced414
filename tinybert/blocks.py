"""Layers built from kernels: Linear (int8 or fp32), Embeddings, and the post-LN EncoderBlock.

Canonical tensor names in (see tinybert/format.py), float32 arrays out. One EncoderBlock serves
BERT, RoBERTa, DistilBERT, XLM-R and ELECTRA: their differences are config data.
"""

from __future__ import annotations

import numba
import numpy as np

from .config import EncoderConfig
from .format import SCALE_SUFFIX, SMOOTH_SUFFIX
from .kernels import embeddings as embed_k
from .kernels import gemm, gemm_vnni
from .kernels.activations import ACTIVATIONS
from .kernels.attention import attention
from .kernels.norm import add_layer_norm, layer_norm

FFN_ROWS = 256   # rows per FFN block: its 256 x intermediate hidden state (1.5-3 MB) stays in L2


class Linear:
    """y = x @ W.T + b with W int8 (+ per-output-channel scale) or float32.

    An int8 layer quantises its input per row to 12 bits, or to 8 (centred on the row's midpoint)
    when the file gives it a ``.smooth`` vector (the input is divided by it first; see
    format.SMOOTH_SUFFIX).
    """

    def __init__(self, tensors: dict[str, np.ndarray], name: str, weight_name: str | None = None,
                 bias: np.ndarray | None = None) -> None:
        weight_name = weight_name or name + ".weight"   # a tied weight lives under another name
        self.weight = tensors[weight_name]
        self.scale = tensors.get(weight_name + SCALE_SUFFIX)
        self.out_features, self.in_features = self.weight.shape
        # Projections without a bias (Llama) run the same kernels with a zero one.
        self.bias = tensors.get(name + ".bias", bias)
        if self.bias is None:
            self.bias = np.zeros(self.out_features, dtype=np.float32)
        smooth = tensors.get(weight_name + SMOOTH_SUFFIX) if self.scale is not None else None
        self.act_qmax = gemm.act_qmax(12 if smooth is None else 8)
        # 8-bit layers centre their input rows; the weight's row sums give back what that took out.
        self.wsum = gemm.NO_SUMS if smooth is None else gemm.weight_sums(self.weight, self.scale)
        # Pack once at load into the panel layout the GEMM micro-kernels read.
        if self.scale is not None:
            self.weight = gemm.pack_weight(self.weight)
        else:
            self.weight = gemm.pack_weight_fp32(self.weight)
        self._quads = gemm_vnni.is_quads(self.weight)
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

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """x float32 [M, in_features] → [M, out_features]. ``threads``: numba.get_num_threads(), when the
        caller has it (each call of that costs ~0.8 us, 2-3 % of a batch-1 MiniLM forward)."""
        if self._quads:
            bands = 1
            if self.row_bands:
                bands = numba.get_num_threads() if threads is None else threads
            return gemm_vnni.linear_quads_checked_weights(x, self.weight, self.scale, self.bias, self.in_features,
                                                          self.act_qmax, self.wsum, self._fused_smooth, bands)
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


class LayerNorm:
    def __init__(self, tensors: dict[str, np.ndarray], name: str, eps: float) -> None:
        self.weight = tensors[name + ".weight"]
        self.bias = tensors[name + ".bias"]
        self.eps = float(eps)

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """LayerNorm(x + residual), written into ``out`` (default: into ``x``)."""
        out = x if out is None else out
        if residual is None:
            layer_norm(x, self.weight, self.bias, self.eps, out)
        else:
            add_layer_norm(x, residual, self.weight, self.bias, self.eps, out)
        return out


class Embeddings:
    """token + position (+ token type) embeddings → LayerNorm (→ projection when E != H)."""

    def __init__(self, cfg: EncoderConfig, tensors: dict[str, np.ndarray]) -> None:
        self.tokens = tensors["embed.tokens"]
        self.token_scale = tensors.get("embed.tokens" + SCALE_SUFFIX)
        self.positions = tensors["embed.positions"]
        if self.positions.dtype == np.int8:
            # Stored int8 to keep the file small; the table is tiny, so widen it once at load.
            self.positions = self.positions * tensors["embed.positions" + SCALE_SUFFIX][:, None]
        # Models without token types get one zero row so one kernel signature serves all.
        self.types = tensors.get("embed.token_types",
                                 np.zeros((1, cfg.embedding_size), dtype=np.float32))
        self.norm = LayerNorm(tensors, "embed.norm", cfg.layer_norm_eps)
        self.proj = Linear(tensors, "embed.proj") if "embed.proj.weight" in tensors else None

    def __call__(self, ids: np.ndarray, positions: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        out = np.empty((ids.size, self.positions.shape[1]), dtype=np.float32)
        if self.token_scale is not None:
            embed_k.embed_int8(ids, positions, type_ids, self.tokens, self.token_scale,
                               self.positions, self.types, out)
        else:
            embed_k.embed_fp32(ids, positions, type_ids, self.tokens, self.positions, self.types, out)
        out = self.norm(out)
        return self.proj(out) if self.proj is not None else out


class EncoderBlock:
    """Post-LN Transformer encoder layer (Vaswani et al.; BERT):

    x = LayerNorm(x + Attention(x));  x = LayerNorm(x + FFN(x)),  FFN = down(act(up(x)))
    """

    def __init__(self, cfg: EncoderConfig, tensors: dict[str, np.ndarray], index: int) -> None:
        p = f"layers.{index}."
        self.num_heads = cfg.num_heads
        self.qkv = Linear(tensors, p + "attn.qkv")
        self.attn_out = Linear(tensors, p + "attn.out")
        self.attn_norm = LayerNorm(tensors, p + "attn_norm", cfg.layer_norm_eps)
        self.up = Linear(tensors, p + "mlp.up")
        self.down = Linear(tensors, p + "mlp.down")
        self.mlp_norm = LayerNorm(tensors, p + "mlp_norm", cfg.layer_norm_eps)
        self.activation = ACTIVATIONS[cfg.activation]

    def linears(self) -> list[Linear]:
        return [self.qkv, self.attn_out, self.up, self.down]

    def __call__(self, x: np.ndarray, starts: np.ndarray, key_mask: np.ndarray,
                 threads: int | None = None) -> np.ndarray:
        """x float32 [T, H]: the tokens of sequence b are rows starts[b]:starts[b+1];
        key_mask uint8 [T] is 0 for padding tokens no query may attend to. ``threads``: as for Linear."""
        threads = numba.get_num_threads() if threads is None else threads
        qkv = self.qkv(x, threads)
        context = np.empty_like(x)
        attention(qkv, starts, key_mask, self.num_heads, context, threads)
        del qkv   # [T, 3H], the largest activation: gone before the FFN allocates (peak memory)
        x = self.attn_norm(self.attn_out(context, threads), residual=x)
        del context
        # The FFN is row-wise: run it over row blocks so that the [rows, intermediate] hidden
        # state stays in cache between the up GEMM, the activation and the down GEMM, instead
        # of streaming a [T, intermediate] array through memory three times. Each block's
        # output replaces its own rows of x (this layer's array, read only as the residual).
        for r0 in range(0, x.shape[0], FFN_ROWS):
            rows = x[r0:r0 + FFN_ROWS]
            hidden = self.up(rows, threads)
            self.activation(hidden)
            self.mlp_norm(self.down(hidden, threads), residual=rows, out=rows)
        return x
