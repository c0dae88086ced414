"""Kernels compiled when the package is built (tinybert/api/prebuild.py) and loaded by a fresh install's first call
(tinybert/kernels/prebuilt.py): which CPUs share a tier, a built tier loads on a machine of that tier without
compiling anything and gives transformers' answer, and code that fails a check is compiled instead, never run.

The AVX2 tier is built (every machine that runs the suite has AVX2) and loaded in child processes whose LLVM host
query reports an AVX2 CPU: Numba then compiles for that CPU too, so the child is such a machine in all that
matters here, whatever CPU runs the suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinybert.kernels import cpu, jitcache, prebuilt

HASWELL = cpu.TIERS["avx2"].features | {"aes", "pclmul", "rdrnd", "fsgsbase", "cmov", "mmx", "sse", "sse2", "fxsr"}
SKYLAKE_X = HASWELL | cpu.TIERS["avx512"].features | {"clwb", "adx", "rdseed", "prfchw"}
ZEN4 = SKYLAKE_X | {"avx512vnni", "avx512bf16", "avx512vbmi", "avx512vbmi2", "avx512bitalg", "avx512ifma",
                    "avx512vpopcntdq", "gfni", "vaes", "vpclmulqdq", "sha", "clzero"}
SAPPHIRE_RAPIDS = ZEN4 - {"clzero"} | {"amx-tile", "amx-int8", "amx-bf16", "avx512fp16", "avxvnni"}
AVX512_AND_LATER = ["avx512", "evex512", "avx10", "amx", "avxvnni", "avxifma", "avxneconvert"]
"""Prefixes of the LLVM features a child drops from its host's to be an AVX2 machine (one without AVX2 cannot
run the suite)."""
SANDY_BRIDGE = frozenset({"avx", "sse4.2", "sse4.1", "ssse3", "sse3", "popcnt", "cx16", "sahf", "xsave"})


def test_each_cpu_gets_the_tier_whose_code_it_would_compile():
    assert cpu.tier_for(HASWELL) == "avx2"
    assert cpu.tier_for(SKYLAKE_X) == "avx512"
    assert cpu.tier_for(ZEN4) == "avx512vnni"
    assert cpu.tier_for(SAPPHIRE_RAPIDS) == "amx"
    assert cpu.tier_for(SANDY_BRIDGE) is None          # no AVX2: compiled on the machine
    assert cpu.tier_for(HASWELL - {"f16c"}) is None     # other code (half.py emulates F16C), and not every v3 op
    for name, tier in cpu.TIERS.items():
        assert cpu.tier_for(tier.features) == name
    assert len({cpu.code_facts(t.features) for t in cpu.TIERS.values()}) == len(cpu.TIERS)


def test_code_facts_are_what_the_kernels_read():
    """A tier is a promise that the kernels compile to the same code: its facts must be every target-dependent
    constant the kernel modules read."""
    from tinybert.kernels import half

    assert cpu.code_facts(cpu.TARGET_FEATURES) == (cpu.HOST_AVX2, half.F16C, cpu.WIDE_REGISTERS,
                                                   cpu.POLICY.target_vnni, cpu.POLICY.target_amx)


def test_a_forced_numba_target_never_loads_prebuilt_code():
    code = "from tinybert.kernels import cpu; print(cpu.host_tier())"
    for extra in ({"NUMBA_CPU_NAME": "x86-64-v3"}, {"NUMBA_CPU_FEATURES": cpu.TIERS["avx2"].feature_string},
                  {"NUMBA_ENABLE_AVX": "0"}):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **extra}, capture_output=True,
                             text=True, timeout=300)
        assert out.stdout.strip() == "None", (extra, out.stderr)


def test_tier_selection():
    from tinybert.api import prebuild

    assert prebuild.select("none") == [] and prebuild.select("") == []
    assert "avx2" in prebuild.buildable() and prebuild.select("all") == prebuild.buildable()
    assert prebuild.select("avx2") == ["avx2"]
    with pytest.raises(ValueError, match="unknown kernel tier"):
        prebuild.select("avx9")
    unbuildable = [t for t in cpu.TIERS if t not in prebuild.buildable()]
    if unbuildable:   # e.g. amx on a CPU without AMX
        with pytest.raises(ValueError, match="cannot build"):
            prebuild.select(unbuildable[0])


def test_a_wheel_with_kernels_pins_what_they_were_compiled_with(monkeypatch):
    """setup.py: with kernels, the wheel requires this Numba and llvmlite exactly (their code is only valid
    there) and is not pure; without, the usual ranges."""
    import runpy

    import llvmlite
    import numba

    setup = runpy.run_path(str(Path(__file__).parents[2] / "setup.py"), run_name="setup_under_test")
    monkeypatch.setenv("TINYBERT_KERNEL_TIERS", "host")
    requires = setup["requirements"]()
    assert f"numba=={numba.__version__}" in requires and f"llvmlite=={llvmlite.__version__}" in requires
    monkeypatch.setenv("TINYBERT_KERNEL_TIERS", "none")
    assert not setup["ships_kernels"]() and "numba>=0.60" in setup["requirements"]()


@pytest.fixture(scope="module")
def avx2_tier(tmp_path_factory) -> Path:
    """The AVX2 tier, built as setup.py builds it (about a minute: every kernel compiles)."""
    from tinybert.api import prebuild

    root = tmp_path_factory.mktemp("prebuilt")
    folder = prebuild.build_tier("avx2", root)
    assert folder == root / "avx2"
    return root


CHILD = textwrap.dedent("""
    import json, sys
    import llvmlite.binding as llb
    drop = tuple(json.loads(sys.argv[1]))
    real = llb.get_host_cpu_features
    def fake():
        features = real()
        for name in list(features):
            features[name] = features[name] and not name.startswith(drop)
        return features
    llb.get_host_cpu_features = fake        # this process is an AVX2 machine to LLVM, Numba and tinybert
    import numpy as np
    import tinybert
    from numba.core.dispatcher import Dispatcher
    from tinybert.api.warmup import kernels_ready, warmup
    from tinybert.kernels import cpu, jitcache
    ready = kernels_ready()
    vectors = tinybert.Encoder(sys.argv[2]).encode(json.loads(sys.argv[3]))
    np.save(sys.argv[4], vectors)
    if sys.argv[5] == "all":
        warmup(show_progress=False)          # every other kernel path: decoders, encoder-decoders, fp32
    kernels = [d for m in list(sys.modules.values()) if (m.__name__ or "").startswith("tinybert.kernels.")
               for d in vars(m).values() if isinstance(d, Dispatcher) and d._cache is not None]
    print(json.dumps({"tier": cpu.host_tier(), "ready": ready, "loads": jitcache.prebuilt_loads,
                      "runtime": jitcache.runtime_source,
                      "misses": sorted(d.py_func.__name__ for d in kernels if sum(d.stats.cache_misses.values())),
                      "hits": sum(sum(d.stats.cache_hits.values()) for d in kernels)}))
""")


def _run_avx2_machine(root: Path, model: Path, texts: list[str], tmp_path: Path, paths: str = "encode",
                      **env) -> tuple[dict, np.ndarray]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "TINYBERT_PREBUILT_KERNELS": str(root), **env}
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "TINYBERT_INT8_ISA", "TINYBERT_INT8_EMULATE"):
        env.pop(name, None)
    out = tmp_path / "vectors.npy"
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(AVX512_AND_LATER), str(model), json.dumps(texts),
                             str(out), paths], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), np.load(out)


def _assert_right(vectors: np.ndarray, reference: np.ndarray) -> None:
    cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995, (cos.mean(), cos.min())


def test_a_built_tier_runs_everything_without_compiling(avx2_tier, minilm_files, sentences, reference_embeddings,
                                                        tmp_path):
    """A fresh process on an AVX2 machine with an empty Numba cache: every kernel of every path (warmup's)
    loads from the tier, Numba's runtime too, nothing compiles, and MiniLM's embeddings are transformers'."""
    manifest = json.loads((avx2_tier / "avx2" / prebuilt.MANIFEST).read_text())
    assert manifest["tier"] == "avx2" and manifest["magic"][1] == "x86-64-v3" and manifest["runtime"]
    assert manifest["kernels"] == jitcache.KERNELS_STAMP and len(manifest["files"]) > 20
    texts = sentences[:32]
    info, vectors = _run_avx2_machine(avx2_tier, minilm_files["int8"], texts, tmp_path, paths="all")
    assert info["tier"] == "avx2" and info["ready"] is True
    assert info["misses"] == [] and info["loads"] >= 15 and info["hits"] >= info["loads"]
    assert info["runtime"] == "prebuilt"
    assert not list((tmp_path / "numba-cache").rglob("*.nbi")), "something compiled"
    _assert_right(vectors, reference_embeddings[:len(texts)])


def test_damaged_or_foreign_prebuilt_code_is_compiled_instead(avx2_tier, minilm_files, sentences,
                                                              reference_embeddings, tmp_path):
    """A kernel whose file fails its SHA-256 is compiled, not loaded (the others still load); a manifest for
    another Numba loads nothing; either way the answer is transformers'."""
    root = tmp_path / "root"
    shutil.copytree(avx2_tier, root)
    folder = root / "avx2"
    [data] = [p for p in folder.glob("attention.attention_with_bias-*.nbc")]
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    data.write_bytes(bytes(blob))
    texts = sentences[:16]
    info, vectors = _run_avx2_machine(root, minilm_files["int8"], texts, tmp_path / "damaged")
    assert info["misses"] == ["attention_with_bias"] and info["loads"] >= 5
    _assert_right(vectors, reference_embeddings[:len(texts)])

    shutil.copytree(avx2_tier, root, dirs_exist_ok=True)      # whole again
    manifest = json.loads((folder / prebuilt.MANIFEST).read_text())
    (folder / prebuilt.MANIFEST).write_text(json.dumps({**manifest, "numba": "0.1.0"}))
    info, vectors = _run_avx2_machine(root, minilm_files["int8"], texts, tmp_path / "foreign")
    assert info["loads"] == 0 and info["ready"] is False and "attention_with_bias" in info["misses"]
    _assert_right(vectors, reference_embeddings[:len(texts)])


def test_manifest_checks(avx2_tier, tmp_path):
    folder = tmp_path / "avx2"
    shutil.copytree(avx2_tier / "avx2", folder)
    good = json.loads((folder / prebuilt.MANIFEST).read_text())

    def load(manifest=None, raw: bytes | None = None, tier: str = "avx2", stamp: str = jitcache.KERNELS_STAMP):
        (folder / prebuilt.MANIFEST).write_bytes(raw if raw is not None else json.dumps(manifest).encode())
        return prebuilt.load_manifest(folder, tier, stamp)

    shipped = load(good)
    assert shipped is not None and shipped.magic == tuple(good["magic"])
    assert load(good, tier="avx512") is None                       # another tier's code
    assert load(good, stamp="0" * 64) is None                       # other kernel sources
    for key, value in (("numba", "0.1"), ("llvmlite", "0.1"), ("python", "cpython-399"), ("format", 2),
                       ("magic", ["a", "b"]), ("files", {"../x": "0" * 64}), ("files", {"a": 1}),
                       ("runtime", "not-listed.bin"), ("policy", "vnni")):
        assert load({**good, key: value}) is None, key
    for key in ("numba", "kernels", "magic", "files", "policy"):
        assert load({k: v for k, v in good.items() if k != key}) is None, key
    assert load(raw=b"{not json") is None and load(raw=b"[]") is None
    assert load(raw=b" " * (2 << 20)) is None                      # bounded before it is parsed
    (folder / prebuilt.MANIFEST).unlink()
    assert prebuilt.load_manifest(folder, "avx2", jitcache.KERNELS_STAMP) is None

    # Files: only listed names, only intact bytes.
    name = next(n for n in good["files"] if n.endswith(".nbc"))
    assert shipped.read(name) == (folder / name).read_bytes()
    assert shipped.read("manifest.json") is None and shipped.read("missing.nbc") is None
    (folder / name).write_bytes((folder / name).read_bytes()[:-1])
    assert shipped.read(name) is None


def test_prebuilt_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(prebuilt.ENV, "off")
    assert prebuilt.prebuilt_root() is None
    monkeypatch.setenv(prebuilt.ENV, str(tmp_path))
    assert prebuilt.prebuilt_root() == tmp_path
    monkeypatch.delenv(prebuilt.ENV)
    assert prebuilt.prebuilt_root() == Path(prebuilt.__file__).parent / "prebuilt"
