"""Multi-head scaled dot-product attention over sequences packed one after another.

For sequence b, head h, query i:   out[i,h] = Σ_j softmax_j(q_i · k_j / √d  over valid j in b) v_j

Layout: ``qkv`` float32 [T, 3*H] holds q | k | v side by side per token (the fused QKV GEMM's
output), head h owning columns [h*d, (h+1)*d) of each third. Sequence b owns rows
``starts[b]:starts[b+1]`` (int64 [B+1]); packed variable-length batches and padded [B, S]
batches (starts = 0, S, 2S, ...) are the same thing to this kernel. ``key_mask`` uint8 [T]
marks keys that may be attended to (1) or not (0, padding). ``out`` float32 [T, H]. A sequence
with no valid key at all is computed as if unmasked (transformers' eager attention does about the
same; its sdpa path differs, so such input has no single right answer).

Work is split over (sequence, head) pairs; within a pair, queries go four at a time so each key
and value row loaded serves four accumulators.
"""

import math

import numpy as np
from numba import njit, prange

from .mathfn import exp_nonpositive


@njit(cache=True, parallel=True)
def attention(qkv, starts, key_mask, num_heads, out):
    # The parallel loop only dispatches: Numba's parfor passes are slow on large loop bodies, and
    # a call keeps the compile (cold start) short.
    batch = starts.shape[0] - 1
    for task in prange(batch * num_heads):
        _attend_one_head(qkv, starts[task // num_heads], starts[task // num_heads + 1], key_mask,
                         task % num_heads, num_heads, out)


@njit(cache=True, fastmath=True)
def _attend_one_head(qkv, base, end, key_mask, h, num_heads, out):
    hidden = out.shape[1]
    d = hidden // num_heads
    scale = np.float32(1.0 / math.sqrt(d))
    seq = end - base
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
    keys_t = np.empty((d, n_valid), dtype=np.float32)
    values = np.empty((n_valid, d), dtype=np.float32)
    for jj in range(n_valid):
        j = valid[jj]
        for e in range(d):
            keys_t[e, jj] = qkv[base + j, hidden + h * d + e]
            values[jj, e] = qkv[base + j, 2 * hidden + h * d + e]
    scores = np.empty((4, n_valid), dtype=np.float32)
    acc = np.empty((4, d), dtype=np.float32)
    q = np.empty((4, d), dtype=np.float32)
    for i0 in range(0, seq, 4):
        rows = min(4, seq - i0)
        # A short last block repeats its last query; the extra rows are never written out.
        for r in range(4):
            for e in range(d):
                q[r, e] = qkv[base + i0 + min(r, rows - 1), h * d + e] * scale
        scores[:, :] = 0.0
        for e in range(d):
            q0, q1, q2, q3 = q[0, e], q[1, e], q[2, e], q[3, e]
            for jj in range(n_valid):
                k = keys_t[e, jj]
                scores[0, jj] += q0 * k
                scores[1, jj] += q1 * k
                scores[2, jj] += q2 * k
                scores[3, jj] += q3 * k
        for r in range(4):
            best = scores[r, 0]
            for jj in range(1, n_valid):
                best = max(best, scores[r, jj])
            total = np.float32(0.0)
            for jj in range(n_valid):
                p = exp_nonpositive(scores[r, jj] - best)
                scores[r, jj] = p
                total += p
            inv = np.float32(1.0) / total
            for jj in range(n_valid):
                scores[r, jj] *= inv
        acc[:, :] = 0.0
        for jj in range(n_valid):
            p0, p1, p2, p3 = scores[0, jj], scores[1, jj], scores[2, jj], scores[3, jj]
            for e in range(d):
                v = values[jj, e]
                acc[0, e] += p0 * v
                acc[1, e] += p1 * v
                acc[2, e] += p2 * v
                acc[3, e] += p3 * v
        for r in range(rows):
            for e in range(d):
                out[base + i0 + r, h * d + e] = acc[r, e]
