"""Attention with an additive per-head bias by query–key offset (T5's relative position bias).

packed_attention_bias: bidirectional, within each packed sequence (encoders).
cached_attention_bias: causal over a per-slot KV cache (decoder steps), bias by distance (the decoder
                       kernel's bias path).
Scores are float32 and the softmax subtracts the row maximum first, as the unbiased kernels do.
"""

import numpy as np
from numba import njit, prange

from .decoder import cached_attention_with_bias


@njit(cache=True, parallel=True)
def packed_attention_bias(q, k, v, starts, bias, center, scale, out):
    """Bidirectional attention within each packed sequence with an additive per-head bias by offset:

        out[i, h] = Σ_j softmax_j(scale · q[i, h]·k[j, h] + bias[h, center + j − i]) v[j, h]

    over j in i's sequence (rows starts[b]:starts[b+1]). q, k, v, out float32 [T, Hq, d]; bias float32
    [Hq, W] with W > center + longest sequence − 1 and center ≥ longest sequence − 1."""
    heads, d = q.shape[1], q.shape[2]
    batch = starts.shape[0] - 1
    for task in prange(batch * heads):
        b, h = task // heads, task % heads
        s0, s1 = starts[b], starts[b + 1]
        scores = np.empty(s1 - s0, dtype=np.float32)
        for i in range(s0, s1):
            best = np.float32(-np.inf)
            for j in range(s0, s1):
                acc = np.float32(0.0)
                for e in range(d):
                    acc += q[i, h, e] * k[j, h, e]
                s = acc * np.float32(scale) + bias[h, center + j - i]
                scores[j - s0] = s
                best = max(best, s)
            total = np.float32(0.0)
            for j in range(s1 - s0):
                p = np.exp(scores[j] - best)
                scores[j] = p
                total += p
            for e in range(d):
                acc = np.float32(0.0)
                for j in range(s0, s1):
                    acc += scores[j - s0] * v[j, h, e]
                out[i, h, e] = acc / total


def cached_attention_bias(q, k_cache, v_cache, slots, positions, bias, scale, out):
    """cached_attention (causal over the cache) plus a per-head bias by distance:

        out[r, h] = Σ_{t ≤ p} softmax_t(scale · q[r, h]·K[t] + bias[h, p − t]) V[t],   p = positions[r]

    q, out float32 [N, Hq, d]; caches [S, Hq, Tmax, d]; bias float32 [Hq, ≥ max(p) + 1]. The decoder's
    blocked online-softmax kernel with the bias added to each score block."""
    cached_attention_with_bias(q, k_cache, v_cache, slots, positions, scale, bias, out)
