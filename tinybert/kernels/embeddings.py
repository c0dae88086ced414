"""Embedding sum: out[t] = tokens[ids[t]] · factor + positions[pos[t]] + types[type_ids[t]].

One kernel for every family. Token rows come either int8 with a per-row scale (``tokens[r] = q[r] · s[r]``)
or float32 with an empty scale; ``factor`` is a float32 (Marian's √d; 1 elsewhere, which leaves the
product exact). A position or type table with no rows is left out (rotary or relative positions, no
token types). Arrays: ids/pos/type_ids int32 [T]; tables [rows, E]; out float32 [T, E].
"""

import numpy as np
from numba import njit, prange

from .jitcache import fast_cache_loading


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def embed(ids, pos, type_ids, tokens, token_scale, factor, pos_table, type_table, out):
    n_tokens, dim = out.shape
    scaled = token_scale.shape[0] > 0
    has_pos = pos_table.shape[0] > 0
    has_types = type_table.shape[0] > 0
    for t in prange(n_tokens):
        row = ids[t]
        s = np.float32(token_scale[row] * factor) if scaled else np.float32(factor)
        for e in range(dim):
            v = np.float32(tokens[row, e]) * s
            if has_pos:
                v += pos_table[pos[t], e]
            if has_types:
                v += type_table[type_ids[t], e]
            out[t, e] = v


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
