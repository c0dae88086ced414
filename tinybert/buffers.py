"""Large short-lived buffers in memory maps of their own.

glibc serves a large allocation from its own memory map, and when that map is freed it raises its threshold for
mapping to the freed size (up to 32 MB): every later allocation below it comes from the heap, where freed memory
stays resident. Loading a model frees a few such blocks (the tokenizer's JSON as a str), and from then on each
transient buffer (a raw tensor read from the file, a KV cache) left its pages resident as heap garbage:
measured on the SmolLM2-135M shape at int4 (100 MB file), 7 MB after loading and 5 MB more over repeated
generate calls.

``zeros`` puts such buffers in anonymous maps of their own, which go straight back to the OS when the array is
freed and never move the threshold. It changes no allocator setting: that is the host process's call. While
tracemalloc traces, the maps are reported to it, as numpy reports its own allocations.
"""

from __future__ import annotations

import ctypes
import mmap
import tracemalloc
import weakref

import numpy as np

# Private anonymous memory, as malloc's own maps: Python's default for fileno -1 on Unix is a shared map of
# /dev/zero (shmem), whose pages a forked child would share with this process and write into.
_PRIVATE = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_ANONYMOUS") else {}

# Smaller buffers stay on the heap: a map costs a system call and a page at least, and glibc's default
# threshold (128 KB) already maps these sizes until something has raised it.
MAPPED_MIN_BYTES = 1 << 18


def zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.zeros(shape, dtype), in an anonymous map of its own when it holds MAPPED_MIN_BYTES or more: its
    pages are the OS's again when the array (and every view of it) is gone, and untouched pages cost none."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < MAPPED_MIN_BYTES:
        return np.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, size, **_PRIVATE)
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if tracemalloc.is_tracing():
        _track(buffer, array.ctypes.data, size)
    return array


# numpy's tracemalloc domain: traced maps count as numpy's arrays do
_NUMPY_DOMAIN = 389047


def _track(buffer: mmap.mmap, address: int, size: int) -> None:
    try:    # looked up only when tracing: a host that loaded libpython privately (the C API's) may not export it
        track, untrack = ctypes.pythonapi.PyTraceMalloc_Track, ctypes.pythonapi.PyTraceMalloc_Untrack
    except AttributeError:
        return
    track.argtypes, track.restype = [ctypes.c_uint, ctypes.c_size_t, ctypes.c_size_t], ctypes.c_int
    untrack.argtypes, untrack.restype = [ctypes.c_uint, ctypes.c_size_t], ctypes.c_int
    if track(_NUMPY_DOMAIN, address, size) == 0:
        weakref.finalize(buffer, untrack, _NUMPY_DOMAIN, address)
