"""Embedding sum: out[t] = tokens[ids[t]] + positions[pos[t]] + types[type_ids[t]].

Token rows come either int8 with a per-row scale (``tokens[r] = q[r] * s[r]``) or float32.
Arrays: ids/pos/type_ids int32 [T]; tables [rows, E]; out float32 [T, E].
"""

import numpy as np
from numba import njit, prange

from .jitcache import fast_cache_loading


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def embed_int8(ids, pos, type_ids, tok_q, tok_s, pos_table, type_table, out):
    n_tokens, dim = out.shape
    for t in prange(n_tokens):
        row, p, ty = ids[t], pos[t], type_ids[t]
        s = tok_s[row]
        for e in range(dim):
            out[t, e] = np.float32(tok_q[row, e]) * s + pos_table[p, e] + type_table[ty, e]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def embed_fp32(ids, pos, type_ids, tok, pos_table, type_table, out):
    n_tokens, dim = out.shape
    for t in prange(n_tokens):
        row, p, ty = ids[t], pos[t], type_ids[t]
        for e in range(dim):
            out[t, e] = tok[row, e] + pos_table[p, e] + type_table[ty, e]


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
