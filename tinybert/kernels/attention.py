"""Multi-head scaled dot-product attention over sequences packed one after another.

For sequence b, head h, query i:   out[i,h] = Σ_j softmax_j(q_i · k_j / √d  over valid j in b) v_j

Layout: ``qkv`` float32 [T, 3*H] holds q | k | v side by side per token (the fused QKV GEMM's
output), head h owning columns [h*d, (h+1)*d) of each third. Sequence b owns rows
``starts[b]:starts[b+1]`` (int64 [B+1]); packed variable-length batches and padded [B, S]
batches (starts = 0, S, 2S, ...) are the same thing to this kernel. ``key_mask`` uint8 [T]
marks keys that may be attended to (1) or not (0, padding). ``out`` float32 [T, H]. A query in a
sequence with no valid key attends to all its keys uniformly, as transformers' additive
-inf-like mask then does. Work is split over (sequence, head) pairs.
"""

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def attention(qkv, starts, key_mask, num_heads, out):
    batch = starts.shape[0] - 1
    hidden = out.shape[1]
    d = hidden // num_heads
    scale = np.float32(1.0 / math.sqrt(d))
    for task in prange(batch * num_heads):
        b = task // num_heads
        h = task % num_heads
        base = starts[b]
        seq = starts[b + 1] - base
        valid = np.empty(seq, dtype=np.int64)
        n_valid = 0
        for j in range(seq):
            if key_mask[base + j] != 0:
                valid[n_valid] = j
                n_valid += 1
        if n_valid == 0:
            for j in range(seq):
                valid[j] = j
            n_valid = seq
        # K transposed so the score loop runs over keys with unit stride (vectorises without
        # reassociating a float reduction); V row-major so the output loop runs over features.
        keys_t = np.empty((d, n_valid), dtype=np.float32)
        values = np.empty((n_valid, d), dtype=np.float32)
        for jj in range(n_valid):
            j = valid[jj]
            for e in range(d):
                keys_t[e, jj] = qkv[base + j, hidden + h * d + e]
                values[jj, e] = qkv[base + j, 2 * hidden + h * d + e]
        scores = np.empty(n_valid, dtype=np.float32)
        acc = np.empty(d, dtype=np.float32)
        for i in range(seq):
            scores[:] = 0.0
            for e in range(d):
                qe = qkv[base + i, h * d + e] * scale
                for jj in range(n_valid):
                    scores[jj] += qe * keys_t[e, jj]
            best = scores[0]
            for jj in range(1, n_valid):
                best = max(best, scores[jj])
            total = np.float32(0.0)
            for jj in range(n_valid):
                p = np.exp(scores[jj] - best)
                scores[jj] = p
                total += p
            inv = np.float32(1.0) / total
            acc[:] = 0.0
            for jj in range(n_valid):
                p = scores[jj] * inv
                for e in range(d):
                    acc[e] += p * values[jj, e]
            for e in range(d):
                out[base + i, h * d + e] = acc[e]
