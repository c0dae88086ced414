"""Warm start: load cached kernels without setting up Numba's compiler.

On a warm start Numba finds each kernel's machine code in its disk cache, but before loading it
``FunctionCache.load_overload`` calls ``target_context.refresh()``, which imports and registers
every lowering Numba ships (NumPy, random, typed containers, cffi, datetime, ...): measured in a
fresh process on a warm cache, 0.17-0.35 s of a 0.7-1.2 s start and 11 MB of peak RSS, all for
code that is already compiled. Running cached code needs only Numba's reference-counting runtime
(NRT), so the loader installed here initialises that and loads. A cache miss is unaffected:
Numba's compiler refreshes the context itself before it compiles.

Only tinybert's own kernels get this loader (each kernel module calls ``fast_cache_loading`` on
its namespace); other Numba code in the process keeps Numba's default. If a Numba release changes
the private methods used here, the kernels keep Numba's default loader.

Stale code: Numba keys a function's cache entries on its own file's modification time and size,
but a kernel compiles in the functions it calls from other modules (``gemm_vnni`` inlines
``gemm.row_scale_centre``): after an edit of gemm.py alone, the cached VNNI kernels would keep the
old code. ``fast_cache_loading`` therefore adds KERNELS_STAMP, the times and sizes of every module of
this package, to each kernel's key, so a change to any of them recompiles all of them.
"""

from __future__ import annotations

from pathlib import Path

from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import rtsys


class _WarmCache(FunctionCache):
    """Numba's per-function disk cache, minus the compiler set-up when loading."""

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)   # idempotent; cached code calls NRT for every array it allocates
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


_SUPPORTED = all(hasattr(FunctionCache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors"))


def kernels_stamp(folder: Path = Path(__file__).parent) -> tuple:
    """(name, mtime_ns, size) of every module in ``folder``: the part of each kernel's cache key that
    covers the code it compiles in from the other modules."""
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.glob("*.py")))


KERNELS_STAMP = kernels_stamp()


def fast_cache_loading(namespace: dict) -> int:
    """Give every disk-cached Numba dispatcher in ``namespace`` the fast loader and a cache key that
    includes KERNELS_STAMP; returns how many."""
    count = 0
    for obj in namespace.values():
        if not (isinstance(obj, Dispatcher) and type(obj._cache) is FunctionCache):
            continue
        cache_file = getattr(obj._cache, "_cache_file", None)
        if hasattr(cache_file, "_source_stamp"):
            cache_file._source_stamp = (cache_file._source_stamp, KERNELS_STAMP)
        if _SUPPORTED:
            obj._cache.__class__ = _WarmCache
            count += 1
    return count


def uses_fast_loading(dispatcher: Dispatcher) -> bool:
    """True when ``dispatcher`` loads from the disk cache through the fast loader."""
    return isinstance(getattr(dispatcher, "_cache", None), _WarmCache)
