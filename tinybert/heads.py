"""Task heads on top of the last hidden state. Sentence pooling for now."""

from __future__ import annotations

import numpy as np


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from hidden [B, S, H] and mask [B, S], as sentence-transformers pools.

    mean: average of unmasked tokens; mean_sqrt_len: sum / sqrt(count); cls: first token;
    max: element-wise max over unmasked tokens.
    """
    m = mask.astype(np.float32)[:, :, None]
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0, :])
    if mode == "max":
        masked = np.where(m > 0, hidden, np.float32(-1e9))
        return masked.max(axis=1)
    summed = (hidden * m).sum(axis=1, dtype=np.float64)
    count = np.maximum(m.sum(axis=1, dtype=np.float64), 1e-9)
    if mode == "mean":
        return (summed / count).astype(np.float32)
    if mode == "mean_sqrt_len":
        return (summed / np.sqrt(count)).astype(np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)
