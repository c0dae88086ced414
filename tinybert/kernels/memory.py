"""Cache lines: aligned buffers, and a prefetch hint for reads the hardware cannot predict.

NumPy aligns allocations to 16 bytes and Numba to 32, but a 64-byte vector load (zmm) or an AMX
tile row that starts off a cache line touches two lines.  For AMX tile loads that is ruinous:
measured on this project's Emerald Rapids VM, a ``tileloadd``/``tdpbsud`` loop ran 6.5x slower on
32-byte-aligned rows (42 ns per tile product) than on 64-byte-aligned ones (6.5 ns).  So every
buffer a micro-kernel streams whole rows from is allocated through here.

``prefetch`` is for reads the hardware cannot predict: attention reads each head's 32-64 floats of a token,
tokens a page apart, and asking for them ahead took its K/V gather from 37 to 13 kcycles per 128-token head;
a decode GEMV reads a panel's bias (and scales) beside its weight stream, a miss per panel without it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import irloop
from .jitcache import fast_cache_loading

ALIGN = 64   # bytes: one cache line, one zmm register, one AMX tile row
EPILOGUE_AHEAD_PANELS = 4   # how many 16-channel panels ahead a decode GEMV asks for its epilogue's per-channel data


def last_level_cache_bytes(default: int = 8 << 20) -> int:
    """Size of the CPU's largest cache (Linux sysfs; ``default`` where it cannot be read)."""
    from pathlib import Path

    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
            if (index / "type").read_text().strip() in ("Unified", "Data"):
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                sizes.append(int(text.rstrip("KMG")) * scale)
        except (OSError, ValueError):
            continue
    return max(sizes, default=default)


def aligned_empty(shape: tuple[int, ...] | int, dtype: np.dtype | type, fill: int | float | None = None) -> np.ndarray:
    """A C-contiguous array whose data starts on a 64-byte boundary (Python-side allocation)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count * dtype.itemsize + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    out = raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)
    if fill is not None:
        out.fill(fill)
    return out


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def aligned_bytes(nbytes):
    """uint8[nbytes] starting on a 64-byte boundary (inside jitted code; view it as the dtype needed)."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (ALIGN - raw.ctypes.data % ALIGN) % ALIGN
    return raw[start:start + nbytes]


@intrinsic
def prefetch(typingctx, arr, index, write):
    """Hint the cache line holding ``arr.flat[index]`` into L1 (``llvm.prefetch``: prefetcht0, or
    prefetchw when ``write`` is a true literal). Never faults, so an index past the end is harmless;
    ``arr`` must be C-contiguous (the index is a flat offset from its data pointer)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(write, types.BooleanLiteral)):
        return None
    rw = 1 if write.literal_value else 0

    def codegen(context, builder, signature, args):
        data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0]).data
        idx = context.cast(builder, args[1], signature.args[1], types.int64)
        irloop.prefetch(builder, builder.gep(data, [idx]), 0, bool(rw))
        return context.get_dummy_value()

    return types.void(arr, index, write), codegen


fast_cache_loading(globals())   # warm starts skip Numba's compiler set-up (see jitcache.py)
