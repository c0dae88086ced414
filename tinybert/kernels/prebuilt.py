"""Kernels compiled when the package was built: loaded, after checks, instead of compiled on the first call.

A wheel (or ``pip install .``) may carry, for each CPU tier it was built for (cpu.TIERS), the Numba cache
files of every kernel compiled for that tier's generic CPU (api/prebuild.py), in ``prebuilt/<tier>/`` beside
this module with a ``manifest.json``. Numba's own cache cannot serve them: it keys code on the exact host CPU
(``znver4`` and its feature list), so code built on one Zen 4 would not load on another, or on a Xeon with
the same instructions. Here, code is keyed on the tier instead, and used only when

* Numba compiles for the host (no NUMBA_CPU_NAME / NUMBA_CPU_FEATURES) and the host's tier
  (cpu.host_tier: the kernels compile to the same code, and the CPU has every instruction) is the
  manifest's;
* the manifest names this Numba, llvmlite and Python, and the kernels' source hash (jitcache.KERNELS_STAMP);
* each file's SHA-256 matches the manifest's before it is read (Numba's files are pickles: an intact file is
  the one the build wrote, as trusted as the package's own code).

Anything else is a miss, and the kernel compiles as it would without prebuilt code (and lands in Numba's
cache). TINYBERT_PREBUILT_KERNELS=off turns this off; a folder path points at another set of tier folders.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import sys
from pathlib import Path

import llvmlite
import numba

from . import cpu

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_MANIFEST_MAX_BYTES = 1 << 20
_FILE_MAX_BYTES = 1 << 28
ENV = "TINYBERT_PREBUILT_KERNELS"


def prebuilt_root() -> Path | None:
    """The folder of tier folders this process reads: TINYBERT_PREBUILT_KERNELS, else the package's own."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path(__file__).parent / "prebuilt"


def runtime_versions() -> dict[str, str]:
    """What compiled code depends on besides the CPU and the kernels' source: a manifest must name these."""
    return {"numba": numba.__version__, "llvmlite": llvmlite.__version__, "python": sys.implementation.cache_tag}


class _Magic:
    """Stands in for a codegen in Numba's ``_index_key``, which reads only ``magic_tuple()``."""

    def __init__(self, magic: tuple[str, str, str]):
        self._magic = magic

    def magic_tuple(self) -> tuple[str, str, str]:
        return self._magic


class Prebuilt:
    """One tier's prebuilt kernels, from a manifest that passed ``load_manifest``'s checks."""

    def __init__(self, tier: str, folder: Path, magic: tuple[str, str, str], files: dict[str, str],
                 runtime: str | None, policy: tuple):
        self.tier = tier
        self.policy = policy        # the cpu.POLICY warmup() ran under: the kernels it chose are all here
        self.folder = folder
        self.magic = magic          # the codegen.magic_tuple() the files were compiled under
        self.files = files          # file name -> SHA-256 hex
        self.runtime = runtime      # the file of Numba's runtime (jitcache.initialize_runtime), if built
        self._indexes: dict[str, dict | None] = {}

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name`` if the manifest lists it and they hash to its digest, else None."""
        digest = self.files.get(name)
        if digest is None:
            return None
        try:
            path = self.folder / name
            if path.stat().st_size > _FILE_MAX_BYTES:
                return None
            blob = path.read_bytes()
        except OSError:
            return None
        return blob if hashlib.sha256(blob).hexdigest() == digest else None

    def _overloads(self, index_name: str, stamp) -> dict | None:
        """A function's index (signature key -> data file), if it was built from this source (``stamp``)."""
        if index_name not in self._indexes:
            overloads = None
            blob = self.read(index_name)
            if blob is not None:
                stream = io.BytesIO(blob)
                if pickle.load(stream) == numba.__version__:   # Numba's index: its version, then the rest
                    built_from, overloads = pickle.loads(stream.read())
                    overloads = overloads if built_from == stamp and isinstance(overloads, dict) else None
            self._indexes[index_name] = overloads
        return self._indexes[index_name]

    def load(self, cache, sig, target_context):
        """The compiled overload of ``sig`` for the Numba disk cache ``cache`` (a FunctionCache), or None."""
        file = cache._cache_file
        overloads = self._overloads(os.path.basename(file._index_path), file._source_stamp)
        name = overloads.get(cache._index_key(sig, _Magic(self.magic))) if overloads else None
        blob = self.read(name) if isinstance(name, str) else None
        if blob is None:
            return None
        return cache._impl.rebuild(target_context, pickle.loads(blob))


def load_manifest(folder: Path, tier: str, kernels_stamp: str) -> Prebuilt | None:
    """``folder``'s manifest if it describes ``tier`` built from these kernels for this Numba and Python."""
    try:
        path = folder / MANIFEST
        if path.stat().st_size > _MANIFEST_MAX_BYTES:
            return None
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    expected = {"tier": tier, "kernels": kernels_stamp, **runtime_versions()}
    if any(manifest.get(k) != v for k, v in expected.items()):
        return None
    magic, files, runtime = manifest.get("magic"), manifest.get("files"), manifest.get("runtime")
    if not (isinstance(magic, list) and len(magic) == 3 and all(isinstance(m, str) for m in magic)):
        return None
    if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        return None
    if any(os.path.basename(k) != k or k.startswith(".") for k in files):
        return None     # names are plain files of this folder
    if runtime is not None and runtime not in files:
        return None
    policy = manifest.get("policy")
    if not (isinstance(policy, list) and all(isinstance(p, bool) for p in policy)):
        return None
    return Prebuilt(tier, folder, tuple(magic), files, runtime, tuple(policy))


@functools.lru_cache(maxsize=1)
def prebuilt_for_host(kernels_stamp: str) -> Prebuilt | None:
    """The prebuilt kernels this process may load (see the module docstring), or None."""
    root, tier = prebuilt_root(), cpu.host_tier()
    if root is None or tier is None:
        return None
    return load_manifest(root / tier, tier, kernels_stamp)
