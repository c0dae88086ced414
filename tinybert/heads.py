"""Task heads on top of the last hidden state. Sentence pooling for now."""

from __future__ import annotations

import numpy as np


def pool_segments(hidden: np.ndarray, starts: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from packed hidden states [T, H] (sequence b = rows starts[b]:starts[b+1],
    all real tokens), pooled as sentence-transformers pools: mean of the tokens; mean_sqrt_len =
    sum / sqrt(count); cls = first token; max = element-wise max."""
    first = starts[:-1]
    if mode == "cls":
        return np.ascontiguousarray(hidden[first])
    if mode == "max":
        return np.maximum.reduceat(hidden, first, axis=0)
    summed = np.add.reduceat(hidden.astype(np.float64), first, axis=0)
    count = np.diff(starts).astype(np.float64)[:, None]
    if mode == "mean":
        return (summed / count).astype(np.float32)
    if mode == "mean_sqrt_len":
        return (summed / np.sqrt(count)).astype(np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)
