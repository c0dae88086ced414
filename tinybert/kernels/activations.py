"""Element-wise activations, in place on float32 [T, I].

gelu:      x * Φ(x) = 0.5 x (1 + erf(x / √2))                (BERT "gelu")
           erf is a float32 rational approximation (odd polynomial / even polynomial on
           [-4, 4], the form Eigen and XLA use; |error| < 5e-7): unlike a libm call it vectorises.
gelu_tanh: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))        ("gelu_new", "gelu_pytorch_tanh")
relu:      max(x, 0)
"""

import math

import numpy as np
from numba import njit, prange

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def erf32(x):
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = np.float32(-2.72614225801306e-10)
    p = p * x2 + np.float32(2.77068142495902e-08)
    p = p * x2 + np.float32(-2.10102402082508e-06)
    p = p * x2 + np.float32(-5.69250639462346e-05)
    p = p * x2 + np.float32(-7.34990630326855e-04)
    p = p * x2 + np.float32(-2.95459980854025e-03)
    p = p * x2 + np.float32(-1.60960333262415e-02)
    q = np.float32(-1.45660718464996e-05)
    q = q * x2 + np.float32(-2.13374055278905e-04)
    q = q * x2 + np.float32(-1.68282697438203e-03)
    q = q * x2 + np.float32(-7.37332916720468e-03)
    q = q * x2 + np.float32(-1.42647390514189e-02)
    return x * p / q


@njit(cache=True, parallel=True)
def gelu(x):
    n_rows, dim = x.shape
    half = np.float32(0.5)
    one = np.float32(1.0)
    k = np.float32(_INV_SQRT2)
    for r in prange(n_rows):
        for i in range(dim):
            v = x[r, i]
            x[r, i] = half * v * (one + erf32(v * k))


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
