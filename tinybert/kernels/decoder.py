"""Decoder-side kernels (GPT-2, Llama family, encoder-decoder decoders): RMSNorm and causal attention over a KV
cache with grouped-query attention (the gated MLP activation is activations.gated).

rms_norm:          out[t] = x[t] / sqrt(mean_i x[t, i]² + eps) * w          (LlamaRMSNorm)
                   x, out float32 [T, H] (out may alias x); w float32 [H]. Statistics in float32
                   as transformers does it (it upcasts to float32 and keeps the product order
                   w * (x * rsqrt(var + eps))).
write_kv:          k_cache[slots[r], :, positions[r], :] = k_new[r]  (and v likewise)
                   k_new, v_new float32 [N, Hkv, d]; slots, positions int32 [N].
cached_attention:  for row r (a token of the sequence held in cache slot slots[r], at position
                   positions[r] of that sequence) and query head h, with g = Hq / Hkv:

                       out[r, h] = Σ_{t ≤ positions[r]} softmax_t(scale · q[r, h] · K[t]) V[t]
                       K = k_cache[slots[r], h // g],  V = v_cache[slots[r], h // g]

                   q, out float32 [N, Hq, d]; k_cache, v_cache [S, Hkv, Tmax, d] (S slots, one
                   sequence each), float32 or uint16 (float16 bits, see half.py: converted as they are
                   written and read, the arithmetic stays float32); slots, positions int32 [N].
                   During prefill the rows are all prompt tokens (of any number of sequences, in
                   any order), during decode one token per sequence; causality comes from
                   positions alone, so the caller must have written every row's own k/v (write_kv)
                   before calling. out may alias q (each (row, head) reads its q before writing its
                   out, and nothing else).
                   Weights come from a float32 exp2 with relative error < 3e-7.

Preconditions, unchecked (kernels do no bounds checks; callers validate): float32 arrays (caches: float32
or uint16) of the shapes above; Hq a multiple of Hkv; 0 <= slots[r] < S; 0 <= positions[r] < Tmax; no two rows of
write_kv share a (slot, position); cache entries at positions 0 .. positions[r] of slot slots[r]
written. Any strides give correct results, but pass C-contiguous arrays: Numba compiles another,
slower specialisation for non-contiguous ones and only unit-stride inner loops vectorise.

Parallelism: a Numba parallel launch costs ~3 µs on an idle machine and much more when another
process holds a core (all threads must finish), more than a decode step's rms_norm or write_kv
take, so each kernel runs serially below ``PARALLEL_MIN_WORK`` units of work (elements; for
attention, multiply-adds of q·K) and over prange above it.
"""

import numpy as np
from numba import njit, prange

from .half import cache_load, cache_value
from .jitcache import fast_cache_loading
from .mathfn import exp2_nonpositive, fmax

PARALLEL_MIN_WORK = 1 << 16
_LOG2E = 1.4426950408889634


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def rms_norm(x, w, eps, out):
    n_rows, dim = x.shape
    if n_rows * dim < PARALLEL_MIN_WORK:
        for r in range(n_rows):
            _rms_norm_row(x, w, eps, out, r)
    else:
        for r in prange(n_rows):
            _rms_norm_row(x, w, eps, out, np.int64(r))   # prange's index is uint64: one signature, not two


@njit(cache=True, nogil=True, error_model="numpy")
def _rms_norm_row(x, w, eps, out, r):
    dim = x.shape[1]
    var = _sum_squares(x, r) / np.float32(dim)
    inv = np.float32(1.0) / np.sqrt(var + np.float32(eps))
    # All of a row's reads happen in _sum_squares or before the write of the same element, so out
    # may alias x.
    for i in range(dim):
        out[r, i] = w[i] * (x[r, i] * inv)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _sum_squares(x, r):
    # fastmath lets LLVM split the sum over several vector accumulators (as torch's reduction does):
    # faster, and more accurate than one serial float32 chain.
    total = np.float32(0.0)
    for i in range(x.shape[1]):
        v = x[r, i]
        total += v * v
    return total


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def write_kv(k_new, v_new, slots, positions, k_cache, v_cache):
    n_rows, kv_heads, d = k_new.shape
    if n_rows * kv_heads * d < PARALLEL_MIN_WORK:
        for r in range(n_rows):
            _write_kv_row(k_new, v_new, slots[r], positions[r], k_cache, v_cache, r)
    else:
        for r in prange(n_rows):
            _write_kv_row(k_new, v_new, slots[r], positions[r], k_cache, v_cache, np.int64(r))


@njit(cache=True, nogil=True, error_model="numpy")
def _write_kv_row(k_new, v_new, slot, pos, k_cache, v_cache, r):
    kv_heads, d = k_new.shape[1], k_new.shape[2]
    for h in range(kv_heads):
        for e in range(d):
            k_cache[slot, h, pos, e] = cache_value(k_new[r, h, e], k_cache.dtype)
        for e in range(d):
            v_cache[slot, h, pos, e] = cache_value(v_new[r, h, e], v_cache.dtype)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def copy_slots(cache, dest, src, upto):
    """cache[:, dest[i], :, :upto] = cache[:, src[i], :, :upto] for every i (beam search: a beam takes over
    another's cached positions). cache [L, S, H, T, d], float32 or uint16; dest, src int64 [n]; no dest is a
    src."""
    layers, heads = cache.shape[0], cache.shape[2]
    for task in prange(layers * dest.shape[0]):
        layer, i = task // dest.shape[0], task % dest.shape[0]
        for h in range(heads):
            cache[layer, dest[i], h, :upto] = cache[layer, src[i], h, :upto]


_NO_BIAS = np.zeros((1, 0), dtype=np.float32)


def cached_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, slots: np.ndarray,
                     positions: np.ndarray, scale: float, out: np.ndarray) -> None:
    """``cached_attention_with_bias`` without a bias (plain Python: a compiled wrapper would recompile
    the kernel's code into its own at a cold start)."""
    cached_attention_with_bias(q, k_cache, v_cache, slots, positions, scale, _NO_BIAS, out)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def cached_attention_with_bias(q, k_cache, v_cache, slots, positions, scale, bias, out):
    """cached_attention plus bias[h, positions[r] − t] on the score of key t (none when bias has 0 columns):
    one implementation for plain and position-biased (T5) decoder attention."""
    n_rows, q_heads, d = q.shape
    keys = 0
    for r in range(n_rows):
        keys += positions[r] + 1
    # A task is one row with all its heads: the row's slot is one contiguous block of the cache
    # ([heads, T, d]), read front to back (tasks of single (row, head) pairs in an interleaved order ran
    # 3-4x slower once the cache outgrew L2). With fewer rows than that keeps two threads busy (batch 1),
    # a task is one (row, head) pair instead.
    per_row = 1 if n_rows >= 4 else q_heads
    tasks = n_rows * per_row
    if keys * q_heads * d < PARALLEL_MIN_WORK:
        for task in range(tasks):
            _attend_task(q, k_cache, v_cache, slots, positions, scale, bias, out, task, per_row)
    else:
        # Numba hands each thread one contiguous range of iterations. In a causal prefill the late
        # rows see the most keys, so iterations alternate between the two ends of the task order
        # (0, T-1, 1, T-2, ...): every range then holds about the same number of keys.
        for i in prange(tasks):
            task = i // 2 if i % 2 == 0 else tasks - 1 - i // 2
            _attend_task(q, k_cache, v_cache, slots, positions, scale, bias, out, task, per_row)


@njit(cache=True, nogil=True, error_model="numpy")
def _attend_task(q, k_cache, v_cache, slots, positions, scale, bias, out, task, per_row):
    # Heads h0 .. h1 − 1 of row r, with per-task buffers (never per key or per head).
    q_heads, d = q.shape[1], q.shape[2]
    r = task // per_row
    h0 = (task % per_row) * (q_heads // per_row)
    h1 = h0 + q_heads // per_row
    scores = np.empty(positions[r] + 1, dtype=np.float32)
    qs = np.empty(d, dtype=np.float32)
    acc = np.empty(d, dtype=np.float32)
    for h in range(h0, h1):
        _attend(q, k_cache, v_cache, slots[r], positions[r] + 1, np.float32(scale * _LOG2E), bias, out, r, h,
                scores, qs, acc)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _attend(q, k_cache, v_cache, slot, n_keys, scale2, bias, out, r, h, scores, qs, acc):
    # One (row, query head) pair in two passes over its keys: all scores, then their exact maximum and
    # weights 2**(s − max), then the weighted sum of values. Scores are in log2 units (scale · log2 e
    # folded into q) so the weights come from the cheaper exp2. Keys and values go four at a time: the
    # inner loops over d are short (64, 128), so their setup, q's loads and acc's loads and stores are
    # shared by four keys.
    d = q.shape[2]
    group = q.shape[1] // k_cache.shape[1]
    keys = k_cache[slot, h // group]
    values = v_cache[slot, h // group]
    for e in range(d):
        qs[e] = q[r, h, e] * scale2
    t = 0
    while t + 4 <= n_keys:
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for e in range(d):
            qe = qs[e]
            s0 += qe * cache_load(keys[t, e])
            s1 += qe * cache_load(keys[t + 1, e])
            s2 += qe * cache_load(keys[t + 2, e])
            s3 += qe * cache_load(keys[t + 3, e])
        scores[t] = s0
        scores[t + 1] = s1
        scores[t + 2] = s2
        scores[t + 3] = s3
        t += 4
    while t < n_keys:
        s0 = np.float32(0.0)
        for e in range(d):
            s0 += qs[e] * cache_load(keys[t, e])
        scores[t] = s0
        t += 1
    if bias.shape[1] > 0:
        for t in range(n_keys):
            scores[t] += bias[h, n_keys - 1 - t] * _LOG2E
    m = scores[0]
    for t in range(1, n_keys):
        m = fmax(m, scores[t])
    total = np.float32(0.0)
    for t in range(n_keys):
        p = exp2_nonpositive(scores[t] - m)
        scores[t] = p
        total += p
    for e in range(d):
        acc[e] = 0.0
    t = 0
    while t + 4 <= n_keys:
        p0 = scores[t]
        p1 = scores[t + 1]
        p2 = scores[t + 2]
        p3 = scores[t + 3]
        for e in range(d):
            acc[e] += (p0 * cache_load(values[t, e]) + p1 * cache_load(values[t + 1, e])
                       + p2 * cache_load(values[t + 2, e]) + p3 * cache_load(values[t + 3, e]))
        t += 4
    while t < n_keys:
        p0 = scores[t]
        for e in range(d):
            acc[e] += p0 * cache_load(values[t, e])
        t += 1
    inv = np.float32(1.0) / total
    for e in range(d):
        out[r, h, e] = acc[e] * inv


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
