"""Per-sequence sums of packed hidden states (the reduction behind mean pooling).

out[b, :] = Σ_{t in starts[b]:starts[b+1]} hidden[t, :], accumulated in float64.
hidden float32 [T, H] C-contiguous, starts int64 [B+1] (validated by the caller), out float64 [B, H].

np.add.reduceat over axis 0 did the same at ~7 ns per element (12 ms of a 330 ms batch of
32 x 130 tokens); here the rows of a sequence are added element-wise into a float64 row, which
LLVM vectorises, and sequences run in parallel.
"""

from numba import njit, prange

from .jitcache import fast_cache_loading


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def segment_sum(hidden, starts, out):
    dim = hidden.shape[1]
    for b in prange(starts.shape[0] - 1):
        acc = out[b]
        acc[:] = 0.0
        for t in range(starts[b], starts[b + 1]):
            row = hidden[t]
            for i in range(dim):
                acc[i] += row[i]


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
