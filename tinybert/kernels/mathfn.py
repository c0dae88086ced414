"""Scalar float32 math that LLVM can vectorise (libm calls such as expf/erff stay scalar in loops).

Inline Numba functions, used inside kernels' inner loops.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a register move, no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", fastmath=True, error_model="numpy")
def exp_nonpositive(x):
    """e**x for x <= 0, float32 to ~1 ulp (Cephes expf: x = n ln2 + r, |r| <= ln2/2,
    e**r by a degree-6 polynomial, 2**n built in the exponent bits). Below -87 it returns
    e**-87 ≈ 1.6e-38 instead of underflowing, harmless wherever it is used (softmax)."""
    x = max(x, np.float32(-87.0))
    n = np.float32(np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5)))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    return y * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(inline="always", fastmath=True, error_model="numpy")
def erf(x):
    """erf(x) in float32 as odd/even rational polynomials on [-4, 4] (the form Eigen and XLA
    use); |error| < 5e-7, and erf(±4) already rounds to ±1 in float32."""
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


@njit(inline="always", fastmath=True, error_model="numpy")
def exp2_nonpositive(x):
    """2**x for x <= 0, float32, relative error < 3e-7: x = n + f with n = floor(x + 1/2),
    |f| <= 1/2; 2**f by a degree-5 minimax polynomial, 2**n built in the exponent bits. Cheaper
    than exp_nonpositive (no ln2 range reduction, one degree less). Below -126 it returns
    2**-126 instead of underflowing, harmless wherever it is used (softmax)."""
    x = max(x, np.float32(-126.0))
    n = np.float32(np.floor(x + np.float32(0.5)))
    f = x - n
    p = np.float32(1.3276471959e-3)
    p = p * f + np.float32(9.6755415026e-3)
    p = p * f + np.float32(5.5507132751e-2)
    p = p * f + np.float32(2.4022119721e-1)
    p = p * f + np.float32(6.9314696706e-1)
    p = p * f + np.float32(1.0000000717)
    return p * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))


@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) for float32 as ``llvm.maxnum`` (result unspecified if either is NaN). Unlike
    Python's max (compare + select), LLVM vectorises a loop reducing with it."""
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32]),
                                            "llvm.maxnum.f32")
        return builder.call(fn, args, fastmath=("nnan", "nsz"))

    return sig, codegen
