"""Multi-head scaled dot-product attention with a key padding mask.

For batch b, head h, query i:   out[b,i,h] = Σ_j softmax_j(q_i · k_j / √d  over valid j) v_j

Layout: ``qkv`` float32 [B*S, 3*H] holds q | k | v side by side per token (the fused QKV GEMM's
output), head h owning columns [h*d, (h+1)*d) of each third. ``key_mask`` uint8 [B, S] marks
keys that may be attended to (1) or not (0). ``out`` float32 [B*S, H]. A query whose row has no
valid key attends to all keys uniformly, as transformers' additive -inf-like mask then does.
Work is split over (batch, head) pairs; K and V of the pair are copied into contiguous buffers
so the inner dot products run over unit-stride memory.
"""

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def attention(qkv, key_mask, num_heads, out):
    batch, seq = key_mask.shape
    hidden = out.shape[1]
    d = hidden // num_heads
    scale = np.float32(1.0 / math.sqrt(d))
    for task in prange(batch * num_heads):
        b = task // num_heads
        h = task % num_heads
        base = b * seq
        keys = np.empty((seq, d), dtype=np.float32)
        values = np.empty((seq, d), dtype=np.float32)
        valid = np.empty(seq, dtype=np.int64)
        n_valid = 0
        for j in range(seq):
            if key_mask[b, j] != 0:
                valid[n_valid] = j
                n_valid += 1
        if n_valid == 0:
            for j in range(seq):
                valid[j] = j
            n_valid = seq
        for jj in range(n_valid):
            j = valid[jj]
            for e in range(d):
                keys[jj, e] = qkv[base + j, hidden + h * d + e]
                values[jj, e] = qkv[base + j, 2 * hidden + h * d + e]
        q = np.empty(d, dtype=np.float32)
        scores = np.empty(n_valid, dtype=np.float32)
        acc = np.empty(d, dtype=np.float32)
        for i in range(seq):
            for e in range(d):
                q[e] = qkv[base + i, h * d + e] * scale
            best = np.float32(-np.inf)
            for jj in range(n_valid):
                s = np.float32(0.0)
                for e in range(d):
                    s += q[e] * keys[jj, e]
                scores[jj] = s
                if s > best:
                    best = s
            total = np.float32(0.0)
            for jj in range(n_valid):
                p = np.exp(scores[jj] - best)
                scores[jj] = p
                total += p
            inv = np.float32(1.0) / total
            for e in range(d):
                acc[e] = 0.0
            for jj in range(n_valid):
                p = scores[jj] * inv
                for e in range(d):
                    acc[e] += p * values[jj, e]
            for e in range(d):
                out[base + i, h * d + e] = acc[e]
