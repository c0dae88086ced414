"""Decoder-only Transformer (GPT-2, Llama family) over the slot cache. Arrays in, arrays out.

    x = embeddings(ids, positions);  x = block(x) for each layer (pre-norm, causal);  logits = lm_head(norm(x))

Tokens travel packed: row r is token ``ids[r]`` of the sequence in cache slot ``slots[r]`` at position
``positions[r]``. A prefill is all prompt tokens of all sequences at once (no padding); a decode step is one
row per unfinished sequence. Each row writes its key/value into the cache and attends to positions
0..positions[r] of its own slot, so prompts of different lengths never need padding or masks.

A bidirectional decoder (config ``causal`` False: EmbeddingGemma) only embeds: its blocks run over packed
sequences as an encoder's do (attention.PackedRows), every token attending to its whole sequence (windowed layers:
to the keys within their window on either side), with no cache.
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
    PackedRows,
    Positions,
    TransformerBlock,
    cache_dtype,
    use_row_bands,
)

__all__ = ["DecoderModel", "KVCache"]


class DecoderModel:
    """embeddings → blocks → final norm → LM head (tied to the token table or not; none with ``lm_head=False``:
    an embedder, whose file has none)."""

    def __init__(self, cfg: DecoderConfig, tensors: dict[str, np.ndarray], lm_head: bool = True) -> None:
        self.config = cfg
        self.block_config = block = cfg.block
        self.lm_head = None
        if lm_head:
            self.lm_head = Linear(tensors, fmt.LM_HEAD,
                                  weight_name=fmt.EMBED_TOKENS if cfg.tie_word_embeddings else None)
        tied = self.lm_head if lm_head and cfg.tie_word_embeddings else None     # the token rows live in it
        self.embeddings = Embeddings(tensors, "", cfg.positions, cfg.max_positions, scale=cfg.scale_embedding,
                                     tied=tied)
        self.positions = Positions(block, tensors)
        self.blocks = [TransformerBlock(block, tensors, fmt.layer_prefix(i), i) for i in range(cfg.num_layers)]
        self.final_norm = Norm(tensors, fmt.FINAL_NORM, block.norm, block.norm_eps)
        linears = [layer for b in self.blocks for layer in b.linears()]
        use_row_bands(linears)
        self.kv_dtype = cache_dtype(any(layer.quantized for layer in linears))   # the KVCache dtype to use

    def __call__(self, ids: np.ndarray, slots: np.ndarray, positions: np.ndarray, cache: KVCache,
                 logit_rows: np.ndarray | None = None) -> np.ndarray:
        """ids, slots, positions int32 [N] (validated: ids in the vocabulary, positions < cache.length,
        slots < the cache's slots, and every earlier position of each slot already in the cache or in
        this call, in order) → logits float32 [R, vocab] for ``logit_rows`` (all rows when None)."""
        x, threads = self._blocks(ids, slots, positions, cache)
        if logit_rows is not None:
            x = np.ascontiguousarray(x[logit_rows])
        logits = self.lm_head(self.final_norm(x, out=x), threads)
        check_finite(logits, "logits")
        return logits

    def _blocks(self, ids: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                cache: KVCache) -> tuple[np.ndarray, int]:
        x = self.embeddings(ids, positions)
        rows = CachedRows(self.block_config, self.positions, slots, positions, cache, numba.get_num_threads())
        for block in self.blocks:
            x = block(x, rows)
        return x, rows.threads

    def packed(self, ids: np.ndarray, starts: np.ndarray, key_mask: np.ndarray | None = None) -> np.ndarray:
        """Last hidden state float32 [T, H] (after the final norm) of whole sequences packed back to back
        (sequence b = rows starts[b]:starts[b+1], each shorter than max_positions; ids validated), as an
        encoder returns it. Causal: each sequence in its own slot of a cache made for this call (``key_mask`` is
        not read: the caller pads on the right only, where no real token looks). Bidirectional: over packed rows,
        keys with ``key_mask`` 0 (uint8 [T]; None: none) left out."""
        lengths = np.diff(starts)
        positions = (np.arange(ids.size) - np.repeat(starts[:-1], lengths)).astype(np.int32)
        if self.block_config.causal:
            slots = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
            cache = KVCache(self.config, lengths.size, int(lengths.max()), dtype=self.kv_dtype)
            x, _ = self._blocks(ids, slots, positions, cache)
        else:
            x = self.embeddings(ids, positions)
            if key_mask is None:
                key_mask = np.ones(ids.size, dtype=np.uint8)
            rows = PackedRows(self.block_config, self.positions, starts, key_mask, numba.get_num_threads())
            for block in self.blocks:
                x = block(x, rows)
        x = self.final_norm(x, out=x)
        check_finite(x, "hidden states")
        return x
