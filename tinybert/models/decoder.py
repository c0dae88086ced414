"""Decoder-only Transformer (GPT-2, Llama family) over the slot cache. Arrays in, arrays out.

    x = embeddings(ids, positions);  x = block(x) for each layer (pre-norm, causal);  logits = lm_head(norm(x))

Tokens travel packed: row r is token ``ids[r]`` of the sequence in cache slot ``slots[r]`` at position
``positions[r]``. A prefill is all prompt tokens of all sequences at once (no padding); a decode step is one
row per unfinished sequence. Each row writes its key/value into the cache and attends to positions
0..positions[r] of its own slot, so prompts of different lengths never need padding or masks.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import format as fmt
from ..config import DecoderConfig
from ..errors import check_finite
from ..layers import (
    CachedRows,
    Embeddings,
    KVCache,
    Linear,
    Norm,
    Positions,
    TransformerBlock,
    cache_dtype,
    use_row_bands,
)

__all__ = ["DecoderModel", "KVCache"]


class DecoderModel:
    """embeddings → blocks → final norm → LM head (tied to the token table or not)."""

    def __init__(self, cfg: DecoderConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = cfg
        self.block_config = block = cfg.block
        self.embeddings = Embeddings(tensors, "", cfg.positions, cfg.max_positions, scale=cfg.scale_embedding)
        self.positions = Positions(block, tensors)
        self.blocks = [TransformerBlock(block, tensors, fmt.layer_prefix(i), i) for i in range(cfg.num_layers)]
        self.final_norm = Norm(tensors, fmt.FINAL_NORM, block.norm, block.norm_eps)
        self.lm_head = Linear(tensors, fmt.LM_HEAD, weight_name=fmt.EMBED_TOKENS if cfg.tie_word_embeddings else None)
        linears = [layer for b in self.blocks for layer in b.linears()]
        use_row_bands(linears)
        self.kv_dtype = cache_dtype(any(layer.quantized for layer in linears))   # the KVCache dtype to use

    def __call__(self, ids: np.ndarray, slots: np.ndarray, positions: np.ndarray, cache: KVCache,
                 logit_rows: np.ndarray | None = None) -> np.ndarray:
        """ids, slots, positions int32 [N] (validated: ids in the vocabulary, positions < cache.length,
        slots < the cache's slots, and every earlier position of each slot already in the cache or in
        this call, in order) → logits float32 [R, vocab] for ``logit_rows`` (all rows when None)."""
        x = self.embeddings(ids, positions)
        rows = CachedRows(self.block_config, self.positions, slots, positions, cache, numba.get_num_threads())
        for block in self.blocks:
            x = block(x, rows)
        if logit_rows is not None:
            x = np.ascontiguousarray(x[logit_rows])
        logits = self.lm_head(self.final_norm(x, out=x), rows.threads)
        check_finite(logits, "logits")
        return logits
