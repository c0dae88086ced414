"""The kernel cache (tinybert/kernels/jitcache.py and Numba's ``cache=True``), each case in fresh processes
with a private NUMBA_CACHE_DIR: a cold cache is filled (by ``tinybert warmup`` or a first run), a warm one is
loaded without compiling or setting up Numba's compiler, a damaged runtime file is rebuilt, and editing one
kernel module recompiles the kernels that inline it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np


def test_warmup_compiles_into_an_empty_cache(tmp_path):
    """A fresh kernel cache is reported cold, and warm after `tinybert warmup`."""
    import os

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    code = "import tinybert; print(tinybert.kernels_ready())"
    before = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert before.stdout.strip() == "False", before.stderr
    warm = subprocess.run([sys.executable, "-m", "tinybert", "warmup", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert warm.returncode == 0, warm.stderr
    # A kernel Numba cannot cache (it touched a ctypes pointer, e.g. numba.get_num_threads()) would
    # be recompiled by every process: the warm start would be a cold start.
    assert "Cannot cache" not in warm.stderr, warm.stderr
    after = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert after.stdout.strip() == "True", after.stderr
    assert any(tmp_path.rglob("*.nbc")), "no compiled kernels were cached"
    # Warm means warm for any batch: 1 to 70 rows take every GEMM driver (the few-row bands among them).
    run = textwrap.dedent("""
        import sys
        import numpy as np
        from numba.core.dispatcher import Dispatcher
        from tinybert.api.warmup import _tiny_model
        for quantization in ("int8", "fp32"):
            model = _tiny_model(quantization, "gelu")
            for rows in (1, 5, 12, 40, 70):
                ids = np.arange(rows, dtype=np.int32) % 15 + 1
                starts = np.append(np.arange(0, rows, 7), rows).astype(np.int64)
                model(ids, np.zeros_like(ids), starts, np.ones(rows, dtype=np.uint8))
        kernels = [d for m in list(sys.modules.values()) if (m.__name__ or "").startswith("tinybert.kernels.")
                   for d in vars(m).values() if isinstance(d, Dispatcher) and d._cache is not None]
        print(sum(sum(d.stats.cache_misses.values()) for d in kernels),
              sum(sum(d.stats.cache_hits.values()) for d in kernels))
    """)
    used = subprocess.run([sys.executable, "-c", run], env=env, capture_output=True, text=True, timeout=600)
    misses, hits = map(int, used.stdout.split())
    assert misses == 0 and hits > 0, (misses, hits, used.stderr)


def test_warm_start_loads_cached_kernels_without_compiler_setup(minilm_files, sentences, reference_embeddings,
                                                               tmp_path):
    """A process on a warm kernel cache compiles nothing, skips Numba's compiler set-up, and is right.

    The first process fills a private kernel cache; the second must load every kernel from it (no
    cache miss) without importing Numba's lowering registries (the 0.2-0.3 s jitcache.py avoids),
    and its embeddings must still match transformers."""
    import os

    texts = sentences[:48]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tinybert
        from numba.core.dispatcher import Dispatcher
        from tinybert.kernels import jitcache
        texts = {texts!r}
        v = tinybert.Encoder({str(minilm_files["int8"])!r}).encode(texts, batch_size=16)
        np.save(sys.argv[1], v)
        kernels = [d for m in list(sys.modules.values()) if (m.__name__ or "").startswith("tinybert.kernels.")
                   for d in vars(m).values() if isinstance(d, Dispatcher) and d._cache is not None]
        misses = sum(sum(d.stats.cache_misses.values()) for d in kernels)
        hits = sum(sum(d.stats.cache_hits.values()) for d in kernels)
        fast = all(jitcache.uses_fast_loading(d) for d in kernels if d.stats.cache_hits)
        print(misses, hits, fast, "numba.np.linalg" in sys.modules, jitcache.runtime_source)
    """)

    def run(name: str) -> tuple[list[str], np.ndarray]:
        out = tmp_path / f"{name}.npy"
        result = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr
        return result.stdout.split(), np.load(out)

    def assert_right(vectors: np.ndarray) -> None:
        ref = reference_embeddings[:len(texts)]
        cos = (vectors * ref).sum(1) / np.linalg.norm(vectors, axis=1)
        assert cos.mean() >= 0.999 and cos.min() >= 0.995, (cos.mean(), cos.min())

    cold_misses, _, _, _, cold_runtime = run("cold")[0]
    assert int(cold_misses) > 0, "the first process found a warm cache: the test proves nothing"
    assert cold_runtime == "compiled"
    (misses, hits, fast, registries, runtime), warm = run("warm")
    # Warm: Numba's runtime linked from the stored object code too (no LLVM compile in the process).
    assert (int(misses), fast, registries, runtime) == (0, "True", "False", "cache")
    assert int(hits) >= 5
    assert_right(warm)

    # A damaged runtime file is not linked: the process compiles the runtime again, stores it whole,
    # and is still right.
    [stored] = (tmp_path / "cache").rglob("tinybert-nrt-*.bin")
    blob = bytearray(stored.read_bytes())
    blob[-100] ^= 0xFF
    stored.write_bytes(bytes(blob))
    (misses, _, _, _, runtime), damaged = run("damaged")
    assert (int(misses), runtime) == (0, "compiled")
    assert_right(damaged)
    assert stored.read_bytes() != bytes(blob)
    stored.write_bytes(stored.read_bytes()[:40])      # truncated
    assert run("truncated")[0][4] == "compiled"
    assert run("again")[0][4] == "cache"


def test_runtime_set_up_falls_back_to_numba_when_its_internals_differ(minilm_files):
    """jitcache.initialize_runtime uses Numba internals (rtsys._init, nrtdynmod): a Numba without them
    must get its own rtsys.initialize, never our loader, and still run."""
    code = textwrap.dedent(f"""
        import numpy as np
        import tinybert
        from tinybert.kernels import jitcache
        jitcache._RUNTIME_SUPPORTED = False
        v = tinybert.Encoder({str(minilm_files["int8"])!r}).encode("A fallback.")
        print(jitcache.runtime_source, v.shape, bool(np.isfinite(v).all()))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    source, *rest = result.stdout.split()
    assert source in ("numba", "None") and rest == ["(1,", "384)", "True"], result.stdout


def test_editing_one_kernel_module_recompiles_the_kernels_that_inline_it(tmp_path):
    """gemm_vnni's activation splitter (``_split_rows``) compiles in quant.py's row quantiser
    (``row_scale_centre``); Numba keys its cache on gemm_vnni.py alone. With jitcache.KERNELS_STAMP in the key,
    editing quant.py must recompile it (a stale cache would keep the old quantiser), and so must editing any
    other kernel module (gemm.py), while an unedited package loads it from the cache, whatever the files' times.

    (The splitter, not the whole VNNI GEMM: the same cache key and the same inlined quantiser, compiled in a few
    seconds instead of ~20 per cold run.)"""
    import os
    import shutil

    import tinybert

    shutil.copytree(Path(tinybert.__file__).parent, tmp_path / "pkg" / "tinybert",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path / "pkg"))
    code = textwrap.dedent("""
        import numpy as np
        import tinybert
        from tinybert.kernels import gemm_vnni
        from tinybert.kernels.quant import ACT8_QMAX, NO_SMOOTHING
        assert tinybert.__file__.startswith(PACKAGE)
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        xh, xl = np.zeros((16, 64), np.int8), np.zeros((16, 64), np.int8)
        xs, xc, xsum = np.empty(4, np.float32), np.empty(4, np.float32), np.empty(4, np.int64)
        gemm_vnni._split_rows(x, xh, xl, xs, xc, xsum, ACT8_QMAX, NO_SMOOTHING)
        assert np.isfinite(xs).all() and xs.min() > 0
        stats = gemm_vnni._split_rows.stats
        print(sum(stats.cache_misses.values()), sum(stats.cache_hits.values()))
    """).replace("PACKAGE", repr(str(tmp_path / "pkg")))

    def run():
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                                cwd=tmp_path)      # not the checkout: "-c" puts the working directory first
        assert result.returncode == 0, result.stderr
        return tuple(int(v) for v in result.stdout.split())

    def edit(name: str) -> None:
        path = tmp_path / "pkg" / "tinybert" / "kernels" / name
        path.write_text(path.read_text() + "\n# edited\n")

    def touch(name: str) -> None:
        path = tmp_path / "pkg" / "tinybert" / "kernels" / name
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))

    assert run() == (1, 0)                 # cold: compiled
    assert run() == (0, 1)                 # warm: loaded
    edit("quant.py")
    assert run() == (1, 0)                 # quant.py changed: the splitter that inlines it recompiled
    assert run() == (0, 1)
    edit("gemm.py")
    assert run() == (1, 0)                 # any kernel module changed: recompiled too
    touch("quant.py")
    touch("gemm_vnni.py")
    assert run() == (0, 1)                 # new times, same code (an install copies files): still warm
