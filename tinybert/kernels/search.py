"""Kernels of beam search's per-step scoring, over a [rows, V] block of logits.

log_softmax_rows:  out[r, v] = (x[r, v] − m_r) − log Σ_u exp(x[r, u] − m_r),  m_r = max_u x[r, u]
                   float32 values, the shift-by-max order torch's CPU kernel uses, the sum of
                   exponentials in float64; x, out [R, V] (out may alias x).
top_k_flat:        the k largest of s[r, v] + add[r] over the flattened [R · V] (row-major) block, best
                   first, ties to the lower flat index; idx int64 [k] and val float32 [k] receive them.
                   One pass with a sorted buffer of k: an entry enters only if it beats the current k-th,
                   so after the first few hundred entries almost every entry costs one comparison.

Preconditions, unchecked: R ≥ 1, V ≥ 1, 1 ≤ k ≤ R · V; −inf entries allowed (NaN not).
"""

import numpy as np
from numba import njit

from .jitcache import fast_cache_loading
from .mathfn import exp_nonpositive, fmax


@njit(cache=True, nogil=True, error_model="numpy")
def log_softmax_rows(x, out):
    # Serial: beam search calls it per input on a few rows, where a parallel launch costs more than
    # the work (and milliseconds when another process holds a core).
    for r in range(x.shape[0]):
        _log_softmax_row(x, out, r)


# Fast math without "no infinities / no NaNs": masked tokens arrive as -inf and must stay exact.
_FAST_FINITE_UNSAFE = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(cache=True, nogil=True, fastmath=_FAST_FINITE_UNSAFE, error_model="numpy")
def _log_softmax_row(x, out, r):
    vocab = x.shape[1]
    m = x[r, 0]
    for v in range(1, vocab):
        m = fmax(m, x[r, v])
    # The sum in float64: with 10⁴–10⁵ terms a float32 sum would drift in the 5th digit.
    total = 0.0
    for v in range(vocab):
        d = x[r, v] - m
        if d > np.float32(-104.0):      # exp of anything lower is 0 in float32 (and -inf must not reach exp)
            total += np.float64(exp_nonpositive(d))
    lse = np.float32(np.log(total))
    for v in range(vocab):
        out[r, v] = (x[r, v] - m) - lse


@njit(cache=True, nogil=True, error_model="numpy")
def top_k_flat(s, add, idx, val):
    rows, vocab = s.shape
    k = idx.shape[0]
    filled = 0
    for r in range(rows):
        a = add[r]
        for v in range(vocab):
            x = s[r, v] + a
            if filled == k and not x > val[k - 1]:
                continue            # equal to the k-th: the earlier (lower) index keeps its place
            # insertion point: after every kept entry ≥ x (earlier indices win ties)
            j = filled if filled < k else k - 1
            while j > 0 and val[j - 1] < x:
                if j < k:
                    val[j] = val[j - 1]
                    idx[j] = idx[j - 1]
                j -= 1
            val[j] = x
            idx[j] = r * vocab + v
            if filled < k:
                filled += 1


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
