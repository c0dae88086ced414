"""Kernels of beam search's per-step scoring, over a [rows, V] block of logits.

log_softmax_rows:  out[r, v] = (x[r, v] − m_r) − log Σ_u exp(x[r, u] − m_r),  m_r = max_u x[r, u]
                   float32 values, the shift-by-max order torch's CPU kernel uses, the sum of
                   exponentials in float64; x, out [R, V] (out may alias x).
top_k_flat:        the k largest of s[r, v] + add[r] over the flattened [R · V] (row-major) block, best
                   first, ties to the lower flat index; idx int64 [k] and val float32 [k] receive them.
                   One pass with a sorted buffer of k: an entry enters only if it beats the current k-th,
                   and a block of 64 entries whose maximum does not is skipped after one vectorised max.

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
    if m > -np.inf:
        for v in range(vocab):
            # exp of anything below -104 is 0 in float32; clamping there instead adds < 2e-38 per entry (no
            # difference after the float32 log) and keeps the loop branch-free, so it vectorises (-inf
            # entries included). A row of -inf alone keeps total 0.
            total += np.float64(exp_nonpositive(max(x[r, v] - m, np.float32(-104.0))))
    lse = np.float32(np.log(total))
    for v in range(vocab):
        out[r, v] = (x[r, v] - m) - lse


_TOP_K_BLOCK = 64


@njit(cache=True, nogil=True, fastmath=_FAST_FINITE_UNSAFE, error_model="numpy", inline="always")
def _block_max(s, r, v0, v1):
    best = s[r, v0]
    for v in range(v0 + 1, v1):
        best = fmax(best, s[r, v])
    return best


@njit(cache=True, nogil=True, error_model="numpy")
def top_k_flat(s, add, idx, val):
    rows, vocab = s.shape
    k = idx.shape[0]
    filled = 0
    for r in range(rows):
        a = add[r]
        for v0 in range(0, vocab, _TOP_K_BLOCK):
            v1 = min(v0 + _TOP_K_BLOCK, vocab)
            # Once k entries are kept, a block whose best does not beat the k-th is skipped whole: one
            # vectorised max instead of a compare per entry (almost every block, after the first few).
            if filled == k and not _block_max(s, r, v0, v1) + a > val[k - 1]:
                continue
            filled = _top_k_block(s, r, v0, v1, a, idx, val, filled)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _top_k_block(s, r, v0, v1, a, idx, val, filled):
    k = idx.shape[0]
    vocab = s.shape[1]
    for v in range(v0, v1):
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
    return filled


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
