"""Element-wise activations, in place on float32 [T, I].

gelu:      x * Φ(x) = 0.5 x (1 + erf(x / √2))                (BERT "gelu")
           (erf from mathfn: a float32 rational approximation that vectorises, |error| < 5e-7)
gelu_tanh: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))        ("gelu_new", "gelu_pytorch_tanh")
relu:      max(x, 0)
"""

import math

import numpy as np
from numba import njit, prange

from .mathfn import erf

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, parallel=True)
def gelu(x):
    n_rows, dim = x.shape
    half = np.float32(0.5)
    one = np.float32(1.0)
    k = np.float32(_INV_SQRT2)
    for r in prange(n_rows):
        for i in range(dim):
            v = x[r, i]
            x[r, i] = half * v * (one + erf(v * k))


@njit(cache=True, parallel=True)
def gelu_tanh(x):
    n_rows, dim = x.shape
    for r in prange(n_rows):
        for i in range(dim):
            v = np.float64(x[r, i])
            x[r, i] = np.float32(0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))))


@njit(cache=True, parallel=True)
def relu(x):
    n_rows, dim = x.shape
    for r in prange(n_rows):
        for i in range(dim):
            if x[r, i] < 0:
                x[r, i] = 0.0


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu}
