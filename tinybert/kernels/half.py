"""float16 storage under float32 math: the KV cache of an int8 model holds keys and values as IEEE half
floats, converted as they are stored and loaded (Numba has no float16 type: the arrays are uint16 bits).

    to_half(x)    float32 -> uint16 bits of the nearest float16: ties to even, overflow to ±inf, NaN stays
                  NaN (numpy's ``astype(np.float16)``, bit for bit, for every non-NaN input)
    from_half(h)  uint16 bits -> float32, exact

    cache_value(x, dtype)  x as a cache of ``dtype`` (an array's .dtype) stores it: to_half for uint16,
                           x itself for float32
    cache_load(v)          a stored value as float32 (from_half for uint16, v itself for float32)

The cache_ pair lets one kernel source serve both caches: Numba compiles it once per cache dtype, and the
float32 specialisation is the same code as before. On a target with F16C (every AVX2 CPU) a conversion is
one instruction (vcvtps2ph / vcvtph2ps, 16 lanes at a time in a vectorised loop); elsewhere an integer
emulation with the same results runs (the tests run it on any CPU).

Why half the bytes matter: a batch-1 decode step reads the whole cache of every layer once, and the weight
stream has evicted it from the caches by then. GPT-2 small at 128 + 128 tokens reads 14 MB of float32
keys and values per step besides its 124 MB of int8 weights.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic, overload

from .cpu import TARGET_FEATURES

F16C = "f16c" in TARGET_FEATURES


@intrinsic
def _fptrunc_half(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _fpext_half(typingctx, h):
    if h != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _float_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float32 whose bits are the low 32 of an integer (Numba widens uint32 arithmetic to 64 bits)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0] if bits.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@njit(inline="always", error_model="numpy")
def to_half_emulated(x):
    """to_half in integer arithmetic."""
    bits = _float_bits(x)
    sign = np.uint16((bits >> np.uint32(16)) & np.uint32(0x8000))
    exp = np.int64((bits >> np.uint32(23)) & np.uint32(0xFF))
    man = np.int64(bits & np.uint32(0x7FFFFF))
    if exp == 0xFF:                                     # inf, or NaN (kept a quiet NaN)
        return sign | np.uint16(0x7C00 | (0x200 if man else 0))
    e = exp - 127 + 15                                  # the half's biased exponent
    if e >= 31:
        return sign | np.uint16(0x7C00)
    if e <= 0:                                          # a half subnormal, or zero
        if e < -10:
            return sign                                 # below half the smallest subnormal
        full = man | 0x800000
        shift = 14 - e
        half = full >> shift
        rest = full & ((1 << shift) - 1)
        middle = 1 << (shift - 1)
        if rest > middle or (rest == middle and half & 1):
            half += 1                                   # may carry into the smallest normal: still right
        return sign | np.uint16(half)
    half = (e << 10) | (man >> 13)
    rest = man & 0x1FFF
    if rest > 0x1000 or (rest == 0x1000 and half & 1):
        half += 1                                       # a carry into the exponent rounds up to ±inf at most
    return sign | np.uint16(half)


@njit(inline="always", error_model="numpy")
def from_half_emulated(h):
    """from_half in integer arithmetic."""
    bits = np.uint32(h)
    sign = (bits & np.uint32(0x8000)) << np.uint32(16)
    exp = (bits >> np.uint32(10)) & np.uint32(0x1F)
    man = bits & np.uint32(0x3FF)
    if exp == 0:
        value = np.float32(man) * np.float32(2.0 ** -24)  # zero or subnormal: exact in float32
        return -value if sign else value
    if exp == 31:
        return _bits_float(sign | np.uint32(0x7F800000) | (man << np.uint32(13)))
    return _bits_float(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13)))


if F16C:
    @njit(inline="always", error_model="numpy")
    def to_half(x):
        return _fptrunc_half(x)

    @njit(inline="always", error_model="numpy")
    def from_half(h):
        return _fpext_half(h)
else:
    to_half, from_half = to_half_emulated, from_half_emulated


def cache_value(x, dtype):
    """x (float32) as a cache of ``dtype`` stores it; compiled code only (see the module docstring)."""
    raise NotImplementedError


def cache_load(v):
    """A value read from a cache, as float32; compiled code only."""
    raise NotImplementedError


@overload(cache_value)
def _cache_value(x, dtype):
    # Dispatch on the dtype, not the array: an array argument would be reference-counted at every call.
    if isinstance(dtype, types.DType) and dtype.dtype == types.uint16:
        return lambda x, dtype: to_half(np.float32(x))
    return lambda x, dtype: x


@overload(cache_load)
def _cache_load(v):
    if v == types.uint16:
        return lambda v: from_half(v)
    return lambda v: v


def to_half_array(x: np.ndarray) -> np.ndarray:
    """numpy's float16 conversion, as the uint16 bits a half cache holds."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)
