"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * w + b.

Statistics are accumulated in float64 so long rows keep fp32-reference accuracy. ``add_layer_norm``
fuses the residual add of post-LN blocks: out = LayerNorm(x + residual); ``out`` may alias either
input. Arrays: x, residual, out float32 [T, H]; w, b float32 [H].
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def layer_norm(x, w, b, eps, out):
    n_rows, dim = x.shape
    for r in prange(n_rows):
        total = 0.0
        for i in range(dim):
            total += x[r, i]
        mean = total / dim
        var = 0.0
        for i in range(dim):
            d = x[r, i] - mean
            var += d * d
        inv = 1.0 / np.sqrt(var / dim + eps)
        for i in range(dim):
            out[r, i] = np.float32((x[r, i] - mean) * inv) * w[i] + b[i]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def add_layer_norm(x, residual, w, b, eps, out):
    n_rows, dim = x.shape
    for r in prange(n_rows):
        row = np.empty(dim, dtype=np.float32)
        total = 0.0
        for i in range(dim):
            v = x[r, i] + residual[r, i]
            row[i] = v
            total += v
        mean = total / dim
        var = 0.0
        for i in range(dim):
            d = row[i] - mean
            var += d * d
        inv = 1.0 / np.sqrt(var / dim + eps)
        for i in range(dim):
            out[r, i] = np.float32((row[i] - mean) * inv) * w[i] + b[i]
