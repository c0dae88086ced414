"""Compile every kernel for CPU tiers while the package is built, so that a fresh install's first call loads
machine code instead of compiling it (kernels/prebuilt.py loads and checks what this writes).

For each tier, a child process compiles for the tier's generic CPU (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES)
into an empty Numba cache by running warmup(), then its cache files are copied to ``<root>/<tier>/`` with a
manifest: the tier, the codegen's magic tuple, Numba, llvmlite and Python, the kernels' source hash and a
SHA-256 per file. warmup() runs the kernels, so a machine builds the tiers its CPU can run (``buildable``).

``python -m tinybert.api.prebuild --root DIR [--tiers host|all|none|T1,T2]`` (setup.py runs it on the build
tree; TINYBERT_KERNEL_TIERS sets the tiers there). "host" is this machine's tier: right for ``pip install .``
on the machine that runs it; "all" for a wheel that other machines install.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llvmlite.binding as llb

from ..kernels import cpu, prebuilt


def _host_features() -> frozenset[str]:
    return frozenset(k for k, v in llb.get_host_cpu_features().items() if v)


def buildable() -> list[str]:
    """The tiers this machine can build: its CPU has every instruction of their code."""
    host = _host_features()
    return [name for name, tier in cpu.TIERS.items() if tier.features <= host]


def select(spec: str) -> list[str]:
    """The tiers that ``spec`` (host | all | none | comma-separated names) asks for; ValueError for a tier this
    machine cannot build."""
    spec = spec.strip().lower()
    if spec in ("", "none", "off"):
        return []
    if spec == "all":
        return buildable()
    if spec == "host":
        tier = cpu.tier_for(_host_features())
        return [tier] if tier is not None else []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in cpu.TIERS:
            raise ValueError(f"unknown kernel tier {name!r}: choose from {', '.join(cpu.TIERS)}, host, all or none")
        if name not in buildable():
            raise ValueError(f"this machine's CPU cannot run tier {name!r} code, so it cannot build it")
    return names


def build_tier(tier: str, root: Path, python: str = sys.executable) -> Path:
    """Compile every kernel for ``tier`` in a child process and write ``root/<tier>/``; returns that folder."""
    spec = cpu.TIERS[tier]
    with tempfile.TemporaryDirectory(prefix="tinybert-prebuild-") as cache:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "TINYBERT_"))}
        env.update(NUMBA_CACHE_DIR=cache, NUMBA_CPU_NAME=spec.cpu, NUMBA_CPU_FEATURES=spec.feature_string,
                   TINYBERT_PREBUILT_KERNELS="off")
        subprocess.run([python, "-m", "tinybert.api.prebuild", "--child", tier, "--root", str(root)],
                       env=env, check=True)
    return root / tier


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _child(tier: str, root: Path) -> None:
    """In the child: compile everything for the target the environment names, and keep the cache files."""
    from ..kernels import attention, jitcache
    from .warmup import warmup

    if cpu.code_facts(cpu.TARGET_FEATURES) != cpu.code_facts(cpu.TIERS[tier].features):
        raise SystemExit(f"the child compiles for {sorted(cpu.TARGET_FEATURES)}, not tier {tier}")
    warmup(show_progress=False)
    dispatcher = attention.attention_with_bias
    cache_folder = Path(dispatcher._cache._cache_path)
    magic = dispatcher.targetctx.codegen().magic_tuple()
    out = root / tier
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = {}
    for path in sorted(cache_folder.iterdir()):
        if path.suffix in (".nbi", ".nbc") or path.name.startswith("tinybert-nrt-"):
            shutil.copyfile(path, out / path.name)
            files[path.name] = _file_digest(out / path.name)
    runtime = jitcache.runtime_file_name(magic)
    manifest = {"format": prebuilt.MANIFEST_FORMAT, "tier": tier, "kernels": jitcache.KERNELS_STAMP,
                **prebuilt.runtime_versions(), "magic": list(magic), "policy": list(cpu.POLICY),
                "runtime": runtime if runtime in files else None, "files": files}
    (out / prebuilt.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def build(tiers: list[str], root: Path, python: str = sys.executable) -> list[Path]:
    """Build ``tiers`` into ``root``, as many at once as there are CPUs (each compile runs on one)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(tiers), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda tier: build_tier(tier, root, python), tiers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinybert.api.prebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder that receives one folder per tier")
    parser.add_argument("--tiers", default=os.environ.get("TINYBERT_KERNEL_TIERS", "host"),
                        help="host, all, none, or tier names separated by commas (%(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.root)
        return
    try:
        tiers = select(args.tiers)
    except ValueError as err:
        parser.error(str(err))
    for folder in build(tiers, args.root):
        print(f"tinybert: kernels for tier {folder.name} in {folder}", file=sys.stderr)
    if not tiers:
        print("tinybert: no kernel tier built (the first calls will compile)", file=sys.stderr)


if __name__ == "__main__":
    main()
