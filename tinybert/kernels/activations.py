"""Element-wise activations, in place on float32 [T, I]: ``activate(x, kind)``, ``kind`` an index into KINDS.

gelu:      x * Φ(x) = 0.5 x (1 + erf(x / √2))                (BERT "gelu")
           (erf from mathfn: a float32 rational approximation that vectorises, |error| < 5e-7)
gelu_tanh: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))        ("gelu_new", "gelu_pytorch_tanh")
relu:      max(x, 0)
silu:      x / (1 + e**-x)                                   ("silu", "swish")

``gated`` is the gated MLP's activation (SwiGLU, GEGLU, ...): out = act(gate) · up for gate_up =
[gate | up], the fused GEMM's [T, 2I] output; ``act`` is one of the above, by its index in KINDS.
"""

import math

import numpy as np
from numba import njit, prange

from .jitcache import fast_cache_loading
from .mathfn import erf, exp_nonpositive

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# Below this many elements (a decode step's one row) a parallel launch costs more than the work.
PARALLEL_MIN_WORK = 1 << 16
# GELU costs ~1 ns per element (erf's division), so it pays for a fork/join (~3 us) from far fewer
# elements: a batch-1 FFN row block of 16 x 1536 ran 25 us serially.
GELU_PARALLEL_MIN = 1 << 13


# error_model="numpy": Python's divide-by-zero check would keep the division (erf's rational form,
# tanh's quotient) from vectorising.
@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gelu_row(x, r):
    half = np.float32(0.5)
    one = np.float32(1.0)
    k = np.float32(_INV_SQRT2)
    for i in range(x.shape[1]):
        v = x[r, i]
        x[r, i] = half * v * (one + erf(v * k))


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gelu_tanh_row(x, r):
    # tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|) ≤ 1: a vectorised float32 exp instead of a
    # libm tanh call per element (the absolute error stays ~1e-7, scaled by 0.5 x in the GELU).
    c = np.float32(_SQRT_2_OVER_PI)
    for i in range(x.shape[1]):
        v = x[r, i]
        u = c * (v + np.float32(0.044715) * v * v * v)
        e = exp_nonpositive(np.float32(-2.0) * abs(u))
        t = (np.float32(1.0) - e) / (np.float32(1.0) + e)
        t = t if u >= 0 else -t
        x[r, i] = np.float32(0.5) * v * (np.float32(1.0) + t)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _silu_row(x, r):
    one = np.float32(1.0)
    for i in range(x.shape[1]):
        g = x[r, i]
        # e = e**-|g| lies in (0, 1], so nothing overflows for any finite g: sigmoid(g) is
        # 1 / (1 + e) for g >= 0 and e / (1 + e) below (the same value, formed without e**-g).
        # exp_nonpositive stops at e**-87 instead of going to 0, and g times that floor is not
        # negligible for huge g (-3e38 would give -4.9), hence the explicit 0 below -87.
        e = exp_nonpositive(-abs(g))
        num = one if g >= 0 else (e if g > np.float32(-87.0) else np.float32(0.0))
        x[r, i] = g * num / (one + e)


@njit(cache=True, nogil=True, error_model="numpy")
def _relu_row(x, r):
    for i in range(x.shape[1]):
        if x[r, i] < 0:
            x[r, i] = 0.0


KINDS = ("gelu", "gelu_tanh", "relu", "silu")     # ``kind`` of activate and gated: an index into this


@njit(cache=True, nogil=True, error_model="numpy")
def _activate_row(x, r, kind):
    if kind == 0:
        _gelu_row(x, r)
    elif kind == 1:
        _gelu_tanh_row(x, r)
    elif kind == 2:
        _relu_row(x, r)
    else:
        _silu_row(x, r)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def activate(x, kind):
    # ReLU is a compare per element: a fork/join pays only from PARALLEL_MIN_WORK; the others from
    # GELU_PARALLEL_MIN.
    if x.size < (PARALLEL_MIN_WORK if kind == 2 else GELU_PARALLEL_MIN):
        for r in range(x.shape[0]):
            _activate_row(x, r, kind)
    else:
        for r in prange(x.shape[0]):
            _activate_row(x, np.int64(r), kind)   # prange's index is uint64: one signature, not two


@njit(cache=True, nogil=True, error_model="numpy")
def _gated_row(gate_up, out, r, kind):
    # The gate goes through the same row function as the plain activation, in ``out`` (in L1),
    # then takes the product: one code path per activation, plain or gated.
    inter = out.shape[1]
    for i in range(inter):
        out[r, i] = gate_up[r, i]
    _activate_row(out, r, kind)
    for i in range(inter):
        out[r, i] *= gate_up[r, inter + i]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def gated(gate_up, out, kind):
    # gate_up float32 [T, 2I] (gate columns first), out float32 [T, I] not overlapping it.
    if out.size < GELU_PARALLEL_MIN:
        for r in range(out.shape[0]):
            _gated_row(gate_up, out, r, kind)
    else:
        for r in prange(out.shape[0]):
            _gated_row(gate_up, out, np.int64(r), kind)


def _in_place(kind: int):
    def run(x: np.ndarray) -> None:
        activate(x, kind)
    return run


ACTIVATIONS = {name: _in_place(kind) for kind, name in enumerate(KINDS)}   # name → f(x), in place


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
