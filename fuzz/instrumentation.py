"""Names of tinybert's kernel modules, found without importing tinybert (the fuzzers must leave them
uninstrumented: Numba compiles them from their bytecode)."""

from __future__ import annotations

import importlib.util
import pkgutil
from pathlib import Path


def kernel_modules() -> list[str]:
    spec = importlib.util.find_spec("tinybert")
    folder = Path(next(iter(spec.submodule_search_locations))) / "kernels"
    return ["tinybert.kernels"] + [f"tinybert.kernels.{m.name}" for m in pkgutil.iter_modules([str(folder)])]
