"""One embedding path for every family: token table (int8 or float32) · factor + positions + token types,
then an optional norm and projection. Which parts a model has is data: the config's position scheme and the
tensors its file holds."""

from __future__ import annotations

import math

import numpy as np

from .. import format as fmt
from ..kernels.embeddings import embed
from .linear import Linear
from .norm import Norm

_NONE = np.zeros((0, 0), dtype=np.float32)       # a table the kernel leaves out
_NO_SCALE = np.zeros(0, dtype=np.float32)        # a float32 token table


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """transformers' MarianSinusoidalPositionalEmbedding.create_weight: sin in the first half, cos in the
    second (not interleaved), computed in float64 and stored as float32."""
    j = np.arange(dim)
    position_enc = np.arange(n_pos, dtype=np.float64)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    out = np.empty((n_pos, dim), dtype=np.float32)
    sentinel = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    out[:, :sentinel] = np.sin(position_enc[:, 0::2])
    out[:, sentinel:] = np.cos(position_enc[:, 1::2])
    return out


def fairseq_sinusoidal_table(n_pos: int, dim: int, padding_idx: int) -> np.ndarray:
    """transformers' M2M100SinusoidalPositionalEmbedding.get_embedding (fairseq, tensor2tensor frequencies):
    sin(p·f_k) in the first half, cos(p·f_k) in the second, f_k = exp(−k·ln 10000 / (dim/2 − 1)); a zero column
    for an odd width and an all-zero row ``padding_idx``. Exponents, frequencies and angles are rounded to
    float32 as torch computes them (the exponential correctly rounded, which torch's is nearly always), so
    the angles of large positions round alike."""
    half = dim // 2
    exponents = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000) / (half - 1))
    freq = np.exp(exponents.astype(np.float64)).astype(np.float32)
    angles = (np.arange(n_pos, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float64)
    out = np.zeros((n_pos, dim), dtype=np.float32)
    out[:, :half] = np.sin(angles)
    out[:, half:2 * half] = np.cos(angles)
    out[padding_idx] = 0.0
    return out


def _dense(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A small table stored int8 to keep the file small, widened once at load."""
    table = tensors[name]
    if table.dtype == np.int8:
        table = table * tensors[name + fmt.SCALE_SUFFIX][:, None]
    return np.ascontiguousarray(table, dtype=np.float32)


class Embeddings:
    """tokens[ids] · factor + positions[pos] (+ token_types[type_ids]) → norm (→ projection when E != H).

    ``stack`` and ``shared_tokens`` name the tensors (format.embed_names); ``positions`` is the block config's
    scheme: "learned" and "sinusoidal" add a table here, "rope" and "relative" act inside attention instead.
    A sinusoidal ``padding_idx`` selects fairseq's table (``fairseq_sinusoidal_table``, whose rows the caller's
    positions index directly: the padding offset is the caller's) over Marian's.
    ``scale``: multiply the token rows by √width (Marian). The norm, token types and projection are there when
    the file has them. ``tied``: the LM head whose weight is this token table (``tokens_name``); rows are then
    looked up in its packed copy, so that the table is not held twice (a 152k-row table is 156 MB in int8).
    """

    def __init__(self, tensors: dict[str, np.ndarray], stack: str, positions: str, max_positions: int,
                 norm: str = "layernorm", norm_eps: float = 1e-5, scale: bool = False,
                 shared_tokens: bool = True, padding_idx: int | None = None, tied: Linear | None = None) -> None:
        names = fmt.embed_names(stack, shared_tokens)
        self.tied = tied
        if tied is None:
            self.tokens = tensors[names["tokens"]]
            self.token_scale = tensors.get(names["tokens"] + fmt.SCALE_SUFFIX, _NO_SCALE)
        else:
            self.tokens = self.token_scale = None
        width = tied.in_features if tied is not None else self.tokens.shape[1]
        self.width = width
        self.factor = np.float32(math.sqrt(width) if scale else 1.0)
        self.positions = _NONE
        if positions == "learned":
            self.positions = _dense(tensors, names["positions"])
        # A sinusoidal table covers the positions used so far and grows on demand (see __call__).
        self.padding_idx = padding_idx
        self.sinusoidal_limit = 0
        if positions == "sinusoidal":
            self.sinusoidal_limit = max_positions if padding_idx is None else max_positions + padding_idx + 1
        self.types = tensors.get(names["token_types"], _NONE)
        self.norm = Norm(tensors, names["norm"], norm, norm_eps) if names["norm"] + ".weight" in tensors else None
        self.proj = Linear(tensors, names["proj"]) if names["proj"] + ".weight" in tensors else None

    def __call__(self, ids: np.ndarray, positions: np.ndarray, type_ids: np.ndarray | None = None) -> np.ndarray:
        """ids, positions (, type_ids) int32 [N], validated → float32 [N, H]."""
        out = np.empty((ids.size, self.width), dtype=np.float32)
        if self.sinusoidal_limit and ids.size:
            self._sinusoidal(int(positions.max()) + 1)
        if type_ids is None:
            type_ids = np.zeros_like(ids) if self.types.size else ids     # ids: any int32 [N] the kernel ignores
        tokens, token_scale = self.tokens, self.token_scale
        if self.tied is not None:       # this call's rows, in order: the kernel then reads row t for token t
            tokens, token_scale = self.tied.rows(ids)
            ids = np.arange(ids.size, dtype=np.int32)
        embed(ids, positions, type_ids, tokens, token_scale, self.factor, self.positions, self.types, out)
        if self.norm is not None:
            self.norm(out, out=out)
        return self.proj(out) if self.proj is not None else out

    def _sinusoidal(self, upto: int) -> None:
        held = self.positions.shape[0]
        if held < upto:     # doubling; a position's row does not depend on the table's length
            grown = min(self.sinusoidal_limit, max(upto, 2 * held, 256))
            dim = self.width
            self.positions = sinusoidal_table(grown, dim) if self.padding_idx is None else \
                fairseq_sinusoidal_table(grown, dim, self.padding_idx)
