"""Model stacks: embeddings → blocks. Arrays in, arrays out; files and text live elsewhere.

Tokens travel as one packed matrix [T, H]: sequence b is rows ``starts[b]:starts[b+1]``. A padded
[B, S] batch is the special case starts = 0, S, 2S, ... with padding switched off in ``key_mask``;
a packed batch of real tokens only never computes anything on padding.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import format as fmt
from ..config import EncoderConfig
from ..errors import check_finite
from ..layers import Embeddings, Norm, PackedRows, Positions, TransformerBlock, use_row_bands


def position_ids(cfg: EncoderConfig, ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Position index of each packed token, as the family defines it.

    absolute: 0, 1, ... within each sequence. padding_offset (RoBERTa): non-pad tokens count up
    from pad_token_id + 1 and pad tokens sit at pad_token_id, exactly as transformers'
    create_position_ids_from_input_ids.
    """
    lengths = np.diff(starts)
    first = np.repeat(starts[:-1], lengths)
    if cfg.position_scheme == "padding_offset":
        not_pad = (ids != cfg.pad_token_id).astype(np.int64)
        seen = np.cumsum(not_pad)
        before = np.repeat(seen[starts[:-1]] - not_pad[starts[:-1]], lengths)
        return ((seen - before) * not_pad + cfg.pad_token_id).astype(np.int32)
    return (np.arange(ids.size, dtype=np.int64) - first).astype(np.int32)


class EncoderModel:
    """A BERT-family encoder: ``last_hidden_state = blocks(embeddings(ids))``, post-norm blocks (DeBERTa's
    disentangled attention is the blocks' ``positions``), or pre-norm blocks and a final norm (ModernBERT)."""

    def __init__(self, cfg: EncoderConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = cfg
        self.block_config = cfg.block
        table = "none" if cfg.position_scheme == "none" else cfg.positions
        self.embeddings = Embeddings(tensors, "", table, cfg.max_positions, norm_eps=cfg.norm_eps)
        self.positions = Positions(self.block_config, tensors)
        self.blocks = [TransformerBlock(self.block_config, tensors, fmt.layer_prefix(i), i)
                       for i in range(cfg.num_layers)]
        self.positions.project([block.attn.qkv for block in self.blocks])   # DeBERTa's per-layer Qr, Kr
        self.final_norm = Norm(tensors, fmt.FINAL_NORM, "layernorm", cfg.norm_eps) if cfg.pre_norm else None
        use_row_bands([self.embeddings.proj] * (self.embeddings.proj is not None)
                      + [layer for block in self.blocks for layer in block.linears()])

    def __call__(self, ids: np.ndarray, type_ids: np.ndarray, starts: np.ndarray,
                 key_mask: np.ndarray) -> np.ndarray:
        """ids, type_ids int32 [T], starts int64 [B+1], key_mask uint8 [T] (all validated)
        → last hidden state float32 [T, H]."""
        x = self.embeddings(ids, position_ids(self.config, ids, starts), type_ids)
        rows = PackedRows(self.block_config, self.positions, starts, key_mask, numba.get_num_threads())
        for block in self.blocks:
            x = block(x, rows)
        if self.final_norm is not None:
            self.final_norm(x, out=x)
        check_finite(x, "hidden states")
        return x
