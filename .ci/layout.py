"""The layout's two rules, checked statically.

1. The one-way import rule of tinybert/ (every import, module level or inside a function).

Rooms, lowest first: foundations (format, config, errors, loader, tokenizer, buffers) · kernels · layers · models ·
generation · api · front ends (cli, demo, distributed, server/, integrations/, the package's __init__ /
__main__). A module may import its own room and the rooms below it, never one above. Kernels import only
kernels; foundations only foundations.
Below the front ends nothing imports the converter, the C API, torch, transformers or Ray, with one exception:
api/resolve.py converts a Hugging Face folder or Hub id on first use, so it imports the converter (lazily: the
converter itself needs torch only for pytorch_model.bin inputs).

2. pyproject.toml lists every package of tinybert/ (setuptools' explicit ``packages`` does not recurse, so a
   folder missing from it is missing from wheels and non-editable installs).

    python .ci/layout.py        # exit 1 and one line per violation
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tinybert"
FOUNDATIONS = {"buffers", "config", "errors", "format", "loader", "tokenizer"}
RANK = {"foundations": 0, "kernels": 1, "layers": 2, "models": 3, "generation": 4, "api": 5, "frontends": 6}
OUTSIDE = ("tinybert_convert", "tinybert_capi", "torch", "transformers", "ray", "pyarrow")
ALLOWED = {("api/resolve.py", "tinybert_convert")}      # (module, outside package): see rule 1


def room(parts: list[str]) -> str:
    """The room of module tinybert.<parts...>."""
    if not parts or parts[0] in ("__init__", "__main__", "cli", "demo", "distributed", "server", "integrations") \
            or not is_module(
            "tinybert." + parts[0]):                   # a name of the package itself: its public face
        return "frontends"
    if parts[0] in FOUNDATIONS:
        return "foundations"
    if parts[0] in RANK:
        return parts[0]
    raise SystemExit(f"tinybert/{'/'.join(parts)}: in no room; add it to .ci/layout.py")


def is_module(name: str) -> bool:
    parts = name.split(".")[1:]
    return (ROOT.joinpath(*parts).with_suffix(".py").is_file() or ROOT.joinpath(*parts, "__init__.py").is_file()
            if parts else True)


def imported(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; `from a import b` counts a.b when b is a module."""
    package = ["tinybert", *path.relative_to(ROOT).parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                whole = module == "tinybert" or (module.startswith("tinybert.") and is_module(sub))
                out.append((node.lineno, sub if whole else module))
    return out


def main() -> int:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("").parts
        mine = room(list(rel) if rel[-1] != "__init__" else list(rel[:-1]))
        for line, name in imported(path, ast.parse(path.read_text(encoding="utf-8"))):
            top = name.split(".")[0]
            where = f"tinybert/{path.relative_to(ROOT)}:{line}"
            if top in OUTSIDE and mine != "frontends" and (path.relative_to(ROOT).as_posix(), top) not in ALLOWED:
                bad.append(f"{where}: {mine} imports {name}")
            if top != "tinybert" or name == "tinybert.__version__":      # the version string: package metadata
                continue
            theirs = room(name.split(".")[1:])
            if RANK[theirs] > RANK[mine] or (mine == "kernels" and theirs != "kernels"):
                bad.append(f"{where}: {mine} imports {name} ({theirs})")
    pyproject = (ROOT.parent / "pyproject.toml").read_text(encoding="utf-8")    # no tomllib before Python 3.11
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", pyproject, re.M | re.S).group(1)))
    for init in sorted(ROOT.rglob("__init__.py")):
        name = ".".join(("tinybert", *init.relative_to(ROOT).parts[:-1]))
        if name not in listed:
            bad.append(f"pyproject.toml: {name} is not in [tool.setuptools] packages")
    print("\n".join(bad) or "imports point one way; pyproject.toml lists every package")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
