"""Model stacks: embeddings → blocks. Arrays in, arrays out; files and text live elsewhere."""

from __future__ import annotations

import numpy as np

from .blocks import Embeddings, EncoderBlock
from .config import EncoderConfig


def position_ids(cfg: EncoderConfig, ids: np.ndarray) -> np.ndarray:
    """Position index of each token, as the family defines it.

    absolute: 0..S-1. padding_offset (RoBERTa): non-pad tokens count up from pad_token_id + 1,
    pad tokens get pad_token_id, exactly as transformers' create_position_ids_from_input_ids.
    """
    if cfg.position_scheme == "padding_offset":
        not_pad = (ids != cfg.pad_token_id).astype(np.int32)
        return (np.cumsum(not_pad, axis=1, dtype=np.int32) * not_pad + cfg.pad_token_id).astype(np.int32)
    return np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy()


class EncoderModel:
    """A BERT-family encoder: ``last_hidden_state = blocks(embeddings(ids))``."""

    def __init__(self, cfg: EncoderConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = cfg
        self.embeddings = Embeddings(cfg, tensors)
        self.blocks = [EncoderBlock(cfg, tensors, i) for i in range(cfg.num_layers)]

    def __call__(self, ids: np.ndarray, key_mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        """ids, type_ids int32 [B, S] (already validated), key_mask uint8 [B, S] → float32 [B, S, H]."""
        batch, seq = ids.shape
        x = self.embeddings(ids, position_ids(self.config, ids), type_ids)
        for block in self.blocks:
            x = block(x, key_mask)
        return x.reshape(batch, seq, -1)
