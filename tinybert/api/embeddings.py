"""What sentence-transformers does to embeddings after the model, in numpy: quantisation to int8 / uint8 /
binary / ubinary (``sentence_transformers.quantization.quantize_embeddings``) and the similarity functions
(``sentence_transformers.util``: cosine, dot, euclidean, manhattan)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import format as fmt
from ..errors import InputError

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize_embeddings(embeddings: np.ndarray, precision: str) -> np.ndarray:
    """``embeddings`` float32 [n, dim] in ``precision``, as sentence-transformers' quantize_embeddings without
    calibration: int8 / uint8 map each dimension's [min, max] over these n rows onto 256 buckets (so they need
    at least two rows); binary / ubinary pack the signs (> 0) 8 to a byte, [n, ceil(dim / 8)], int8 offset by
    -128 or uint8."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    n, dim = embeddings.shape
    if precision == "float32":
        return embeddings.astype(np.float32, copy=False)
    if n == 0:
        width = dim if precision.endswith("int8") else (dim + 7) // 8
        return np.zeros((0, width), dtype=np.int8 if precision in ("int8", "binary") else np.uint8)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(embeddings > 0, axis=-1)
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if n == 1:
        # sentence-transformers refuses too: one row gives no range to spread the buckets over.
        raise InputError(f"cannot compute {precision} quantization ranges from a single embedding: encode "
                         "several texts at once")
    starts = embeddings.min(axis=0).astype(np.float32)
    steps = (embeddings.max(axis=0).astype(np.float32) - starts) / np.float32(255)
    steps = np.where(steps == 0, np.float32(1), steps)
    buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


def _matrix(name: str, value: object) -> np.ndarray:
    """Embeddings (an array, a list of vectors, one vector) as float32 [n, dim]."""
    try:
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            array = np.stack(value)
        else:
            array = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(f"{name} must be an array of embeddings [n, dim] or one embedding [dim]") from None
    if array.dtype.kind not in "fiub" or array.ndim not in (1, 2):
        raise InputError(f"{name} must be a numeric array [n, dim] or [dim], got {array.dtype} {array.shape}")
    return np.atleast_2d(array).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # torch.nn.functional.normalize's eps: a zero vector has similarity 0, not NaN.
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), np.float32(1e-12))
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), np.float32(1e-12))
    return a @ b.T


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    squared = (a * a).sum(1)[:, None] - 2 * (a @ b.T) + (b * b).sum(1)[None, :]
    return -np.sqrt(np.maximum(squared, 0.0))


def _manhattan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a), len(b)), dtype=np.float64)
    step = max(1, (1 << 22) // max(1, len(b) * a.shape[1]))     # rows of a per [rows, len(b), dim] block: 32 MB
    for i in range(0, len(a), step):
        out[i:i + step] = -np.abs(a[i:i + step, None, :].astype(np.float64) - b[None, :, :]).sum(-1)
    return out


SIMILARITY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": _cosine,
    "dot": lambda a, b: a @ b.T,
    "euclidean": _euclidean,
    "manhattan": _manhattan,
}
assert tuple(SIMILARITY) == fmt.SIMILARITY_FUNCTIONS


def similarity(name: str, a: object, b: object) -> np.ndarray:
    """float32 [len(a), len(b)]: sentence-transformers' similarity ``name`` between every row of ``a`` and of
    ``b`` (cosine, dot product, negative euclidean or negative manhattan distance)."""
    a, b = _matrix("embeddings1", a), _matrix("embeddings2", b)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"embeddings of different lengths: {a.shape[1]} and {b.shape[1]}")
    return np.ascontiguousarray(SIMILARITY[name](a, b), dtype=np.float32)
