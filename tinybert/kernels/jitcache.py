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

Stale code: Numba keys a function's cache entries on a hash of its own file, but a kernel compiles
in the functions it calls from other modules (``gemm_vnni`` inlines ``quant.row_scale_centre``): after
an edit of quant.py alone, the cached VNNI kernels would keep the old code. ``fast_cache_loading``
therefore adds KERNELS_STAMP, a hash of every module of this package (a new module too: the stamp globs
the folder), to each kernel's key, so a change to any of them recompiles all of them. A hash of the
contents, not times: an installed copy of the same source has the same key, which is what lets kernels
compiled when the package was built load (prebuilt.py).

Numba's runtime: ``rtsys.initialize`` builds NRT's few LLVM functions (reference counts, atomics)
and compiles them, every process. That compile runs LLVM's optimiser and code generator, which
faulted in 27 MB of libllvmlite's code and took 24 ms, in a process that otherwise only links
cached machine code. ``initialize_runtime`` keeps NRT's object code in the kernel cache folder
(one file per Numba/LLVM/CPU, named by a hash of those, with a SHA-256 of its contents checked
before use) and links it like any cached kernel: measured, peak RSS of a warm MiniLM encode
179 → 159 MB. The file holds machine code and LLVM bitcode only, nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from pathlib import Path

import llvmlite
import numba
from llvmlite import binding as ll
from numba.core import config
from numba.core.caching import FunctionCache
from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import _nrt_python, nrtdynmod, rtsys

from . import prebuilt


class _WarmCache(FunctionCache):
    """Numba's per-function disk cache, minus the compiler set-up when loading."""

    def load_overload(self, sig, target_context):
        global prebuilt_loads
        # Cached code calls NRT for every array it touches.
        initialize_runtime(target_context, Path(self._cache_path))
        shipped = prebuilt.prebuilt_for_host(KERNELS_STAMP)
        if shipped is not None:
            result = shipped.load(self, sig, target_context)
            if result is not None:
                prebuilt_loads += 1
                return result
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


_SUPPORTED = all(hasattr(FunctionCache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors"))
_RUNTIME_SUPPORTED = (hasattr(rtsys, "_init") and hasattr(nrtdynmod, "create_nrt_module")
                      and hasattr(_nrt_python, "c_helpers"))
_RUNTIME_MAGIC = b"tinybert-nrt-1\n"

runtime_source: str | None = None
"""How this process got Numba's runtime through ``initialize_runtime``: "prebuilt" (linked the object code
built with the package), "cache" (linked the stored object code), "compiled" (built it, and stored it when
the folder was writable), "numba" (Numba's own ``rtsys.initialize``), or None (not yet, or Numba
initialised it first)."""
prebuilt_loads = 0
"""Kernels this process loaded from the package's prebuilt code (prebuilt.py)."""


def runtime_file_name(magic: tuple) -> str:
    """The file name of NRT's object code compiled by a codegen whose ``magic_tuple()`` is ``magic``."""
    key = repr((numba.__version__, llvmlite.__version__, ll.llvm_version_info, sys.version, magic)).encode()
    return f"tinybert-nrt-{hashlib.sha256(key).hexdigest()[:20]}.bin"


def _stored_runtime(folder: Path, codegen) -> tuple[tuple[bytes, bytes] | None, Path, str]:
    """NRT's (object code, bitcode) from the package's prebuilt code or ``folder``, the file to store it in
    when neither has it, and where it came from."""
    shipped = prebuilt.prebuilt_for_host(KERNELS_STAMP)
    if shipped is not None and shipped.runtime is not None:
        blob = shipped.read(shipped.runtime)
        stored = _parse_runtime(blob) if blob is not None else None
        if stored is not None:
            return stored, folder, "prebuilt"
    path = folder / runtime_file_name(codegen.magic_tuple())
    return _read_runtime(path), path, "cache"


def _read_runtime(path: Path) -> tuple[bytes, bytes] | None:
    """(object code, bitcode) from a runtime file, or None unless it is whole and intact."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    return _parse_runtime(blob)


def _parse_runtime(blob: bytes) -> tuple[bytes, bytes] | None:
    head = len(_RUNTIME_MAGIC) + 32 + 8
    if len(blob) < head or not blob.startswith(_RUNTIME_MAGIC):
        return None
    digest, body = blob[len(_RUNTIME_MAGIC):len(_RUNTIME_MAGIC) + 32], blob[head:]
    if hashlib.sha256(body).digest() != digest:
        return None
    split = int.from_bytes(blob[head - 8:head], "little")
    if split > len(body):
        return None
    return body[:split], body[split:]


def _write_runtime(path: Path, obj: bytes, bitcode: bytes) -> None:
    body = obj + bitcode
    tmp = path.with_name(f"{path.name}.tmp.{uuid.uuid4().hex[:12]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_RUNTIME_MAGIC + hashlib.sha256(body).digest() + len(obj).to_bytes(8, "little") + body)
        os.replace(tmp, path)    # readers see the old file or the whole new one
    except OSError:
        tmp.unlink(missing_ok=True)   # a read-only cache folder: compile again next time


def initialize_runtime(target_context, folder: Path) -> None:
    """``rtsys.initialize(target_context)``, linking NRT's object code from ``folder`` when a previous
    process stored it there (see the module docstring)."""
    global runtime_source
    if not _RUNTIME_SUPPORTED:     # a Numba whose runtime internals differ: its own (idempotent) set-up
        if runtime_source is None:
            rtsys.initialize(target_context)
            runtime_source = "numba"
        return
    if rtsys._init:
        return
    with global_compiler_lock:
        if rtsys._init:
            return
        # What rtsys.initialize does before it compiles: NRT's C helpers become linkable symbols.
        if config.NRT_STATS:
            _nrt_python.memsys_enable_stats()
        for name, address in _nrt_python.c_helpers.items():
            ll.add_symbol(name if name.startswith("_") else "NRT_" + name, address)
        codegen = target_context.codegen()
        stored, path, source = _stored_runtime(folder, codegen)
        if stored is not None:
            library = codegen.unserialize_library(("nrt", "object", stored))
            runtime_source = source
        else:
            ir_module, library = nrtdynmod.create_nrt_module(target_context)
            library.enable_object_caching()
            library.add_ir_module(ir_module)
            library.finalize()
            _, _, (obj, bitcode) = library.serialize_using_object_code()
            _write_runtime(path, obj, bitcode)
            runtime_source = "compiled"
        rtsys._library = library
        rtsys._init = True


def kernels_stamp(folder: Path = Path(__file__).parent) -> str:
    """A SHA-256 of the names and contents of every module in ``folder``: the part of each kernel's cache
    key that covers the code it compiles in from the other modules."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


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
