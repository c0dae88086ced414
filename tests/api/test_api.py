"""API-level behaviour that is not numerical fidelity: imports, threads, input forms."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

import tinybert
from tinybert.api import scheduler


def test_runtime_never_imports_torch_or_transformers(minilm_files):
    """Load and encode in a fresh process where importing torch or transformers would fail."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError("blocked: " + name)
                return None
        sys.meta_path.insert(0, Block())
        import tinybert
        enc = tinybert.Encoder({str(minilm_files["int8"])!r})
        v = enc.encode(["The runtime needs no torch."])
        assert v.shape == (1, 384), v.shape
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
        assert not bad, bad
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_thread_count_does_not_change_results(minilm_files, sentences, hf_tokenizer, precision, monkeypatch):
    # threads=2 runs many batches whole, one per thread (Scheduler.map); splits a lone batch into
    # two parts run on their own threads with single-threaded kernels (scheduler.sequence_groups); runs a
    # lone sequence on two-threaded kernels. Every kernel is row- or sequence-wise and deterministic,
    # so all of these must agree bit for bit with threads=1.
    one = tinybert.Encoder(minilm_files[precision], threads=1)
    two = tinybert.Encoder(minilm_files[precision], threads=2)
    taken = {"alone": 0, "split": 0}
    runs = two.runner.scheduler
    alone, split = runs.run_alone, runs._run_part
    monkeypatch.setattr(runs, "run_alone", lambda *a: taken.__setitem__("alone", taken["alone"] + 1) or alone(*a))
    monkeypatch.setattr(runs, "_run_part", lambda *a: taken.__setitem__("split", taken["split"] + 1) or split(*a))
    for texts, batch_size, alone_runs in ((sentences[:40], 32, 2), (sentences[:100], 8, 13), (sentences[:20], 32, 0)):
        taken.update(alone=0, split=0)
        np.testing.assert_array_equal(one.encode(texts, batch_size=batch_size),
                                      two.encode(texts, batch_size=batch_size))
        assert taken["alone"] == alone_runs, (len(texts), batch_size, taken)      # many batches: pipelined
    assert taken["split"] == 2                      # one batch of 20 sentences: split over the threads
    assert len(scheduler.sequence_groups(np.array([0, 40, 90, 130, 170]), 2)) == 2
    np.testing.assert_array_equal(one.encode(sentences[5]), two.encode(sentences[5]))
    batch = hf_tokenizer(sentences[:9], padding=True, return_tensors="np")     # padded, masked forward
    np.testing.assert_array_equal(one.forward(batch["input_ids"], batch["attention_mask"]),
                                  two.forward(batch["input_ids"], batch["attention_mask"]))


@pytest.mark.parametrize("threads", [1, 2])
def test_pooling_chunk_by_chunk_equals_pooling_the_hidden_states(minilm_files, sentences, threads):
    # encode() pools each CHUNK_TOKENS chunk as it leaves the model (Scheduler._run_part, per sequence) instead
    # of holding the batch's [T, H] hidden states: every mode must give what pooling those gives, bit for
    # bit, for a batch of several chunks, on one thread and split over two (each part chunked again).
    from tinybert.models.heads import pool_segments

    enc = tinybert.Encoder(minilm_files["int8"], threads=threads)
    encodings = enc.tokenizer.encode_batch(sentences[:60])
    batch = enc.runner.pack(encodings, list(range(len(encodings))))
    assert batch.ids.size > 3 * scheduler.CHUNK_TOKENS
    hidden = enc.runner.run(batch)
    for mode in ("mean", "cls", "max", "mean_sqrt_len"):
        np.testing.assert_array_equal(enc.runner.run(batch, pool=mode), pool_segments(hidden, batch.starts, mode))


def test_row_bands_only_where_the_weights_fit_the_cache(minilm_files, sentences, monkeypatch):
    # A few rows split by rows make each thread read every weight: the encoder allows it only when its
    # int8 weights fit gemm_vnni.ROW_BANDS_WEIGHTS, and the result is the same either way.
    from tinybert.kernels import gemm_vnni
    from tinybert.layers import use_row_bands

    enc = tinybert.Encoder(minilm_files["int8"], threads=2)
    layers = [layer for block in enc.runner.model.blocks for layer in block.linears()]
    quads = [layer for layer in layers if layer._quads]
    total = sum(layer.weight.nbytes for layer in quads)
    assert all(layer.row_bands == (total <= gemm_vnni.ROW_BANDS_WEIGHTS) for layer in quads)
    assert not any(layer.row_bands for layer in layers if not layer._quads)
    text = sentences[3]                                   # 8-64 tokens: the rows the bands are for
    assert 8 <= len(enc.tokenizer.encode_batch([text])[0].ids) <= 64
    for budget, banded in ((total, True), (total - 1, False)):
        monkeypatch.setattr(gemm_vnni, "ROW_BANDS_WEIGHTS", budget)
        for layer in layers:
            layer.row_bands = False
        use_row_bands(layers)
        assert all(layer.row_bands == banded for layer in quads)
        if banded:
            with_bands = enc.encode(text)
        else:
            np.testing.assert_array_equal(enc.encode(text), with_bands)


def _counting_model(enc: tinybert.Encoder, fail_at: int | None = None) -> dict:
    """Wrap enc's model: count the calls begun and ended (raising an InputError in call ``fail_at``)."""
    import threading
    import time

    seen = {"begun": 0, "ended": 0}
    lock = threading.Lock()
    model = enc.runner.model

    def counted(*args):
        with lock:
            seen["begun"] += 1
            number = seen["begun"]
        try:
            time.sleep(0.01)          # hold the call open, so that others run beside it
            if number == fail_at:
                raise tinybert.InputError("call failed on purpose")
            return model(*args)
        finally:
            with lock:
                seen["ended"] += 1
    enc.runner.model = counted
    return seen


def test_pipelined_batches_raise_the_error_and_leave_nothing_running(minilm_files, sentences):
    # A failing batch in a worker reaches the caller, and when it does no other batch is still
    # running (or left queued to start later) on the worker threads.
    enc = tinybert.Encoder(minilm_files["int8"], threads=2)
    seen = _counting_model(enc, fail_at=3)
    with pytest.raises(tinybert.InputError, match="on purpose"):
        enc.encode(sentences[:80], batch_size=4)
    assert seen["begun"] == seen["ended"] >= 3, seen
    assert seen["begun"] < 20, seen                         # the batches after the error never ran
    # An abandoned generator (a caller that stops iterating) does the same.
    seen = _counting_model(enc)
    encodings = enc.tokenizer.encode_batch(sentences[:80])
    batches = enc.runner.batches(encodings, 4)
    next(batches)
    batches.close()
    assert seen["begun"] == seen["ended"] < 20, seen
    # ... and the encoder still works afterwards.
    enc.runner.model = tinybert.Encoder(minilm_files["int8"]).runner.model
    assert enc.encode(sentences[:9], batch_size=4).shape == (9, 384)


def test_sequence_groups():
    starts = np.array([0, 10, 200, 210, 220, 400], np.int64)
    assert scheduler.sequence_groups(starts, 1) == [(0, 5)]
    for parts in (2, 3, 4, 8):
        groups = scheduler.sequence_groups(starts, parts)
        assert groups[0][0] == 0 and groups[-1][1] == 5 and len(groups) <= parts
        assert all(b0 < b1 for b0, b1 in groups) and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert scheduler.sequence_groups(starts, 2) == [(0, 2), (2, 5)]      # 200 tokens each
    assert scheduler.sequence_groups(np.array([0, 30, 60], np.int64), 2) == [(0, 2)]   # too few tokens to split
    assert scheduler.sequence_groups(np.array([0, 500], np.int64), 2) == [(0, 1)]      # one sequence


def test_sequence_chunks():
    starts = np.array([0, 100, 200, 300, 900, 950, 1000, 1010], np.int64)
    chunks = scheduler.sequence_chunks(starts, 256)
    assert chunks == [(0, 2), (2, 3), (3, 4), (4, 7)]          # 200, 100, 600 alone, 110 tokens
    assert scheduler.sequence_chunks(starts, 10_000) == [(0, 7)]
    assert scheduler.sequence_chunks(np.array([0, 5], np.int64), 1) == [(0, 1)]


class _Toy:
    """A packed batch with no arrays but its starts: the scheduler needs nothing else."""

    def __init__(self, starts: np.ndarray) -> None:
        self.starts = starts

    def select(self, b0: int, b1: int) -> _Toy:
        return _Toy(self.starts[b0:b1 + 1] - self.starts[b0])


def _toy(lengths) -> _Toy:
    return _Toy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _positions(batch: _Toy) -> np.ndarray:
    """Per token: its position in its sequence (what a chunk sees must not depend on the chunking)."""
    return np.concatenate([np.arange(n) for n in np.diff(batch.starts)]).astype(np.float32)[:, None]


@pytest.mark.parametrize("threads", [1, 2])
def test_scheduler_runs_any_batch_function(threads, monkeypatch):
    # The scheduler knows nothing of models: any function of a packed batch, per token or per sequence,
    # comes back whole and in order, chunked to CHUNK_TOKENS (a longer sequence alone), split or pipelined.
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two Numba threads")
    monkeypatch.setattr(scheduler, "threads_may_share_kernels", lambda: True)   # toy functions run no kernels
    lengths = np.random.default_rng(3).integers(1, 300, 61)
    runs = scheduler.Scheduler(threads)
    seen = []

    def per_sequence(batch: _Toy) -> np.ndarray:
        seen.append(batch.starts)
        return np.diff(batch.starts).astype(np.float32)[:, None]

    got = np.zeros(len(lengths))
    for rows, batch, out in runs.map(lengths, 8, lambda rows: _toy(lengths[rows]), per_sequence, "sequence"):
        assert np.array_equal(out[:, 0], lengths[rows]) and np.array_equal(np.diff(batch.starts), lengths[rows])
        got[rows] = out[:, 0]
    assert np.array_equal(got, lengths)
    order = [i for rows in scheduler.length_batches(list(lengths), 8) for i in rows]
    assert order == sorted(range(len(lengths)), key=lambda i: -lengths[i])       # longest first, stable
    assert all(s[-1] <= scheduler.CHUNK_TOKENS or s.size == 2 for s in seen)
    whole = _toy(lengths)
    np.testing.assert_array_equal(runs.run(whole, _positions, "token"), _positions(whole))
    np.testing.assert_array_equal(runs.run_alone(whole, per_sequence, "sequence")[:, 0], lengths)


def test_scheduler_raises_a_part_failure_once_every_part_has_ended(monkeypatch):
    # One batch split over two threads: a part that fails is raised in the caller only when the other
    # part has ended too, so nothing of the call still runs once the caller has the error.
    import threading
    import time

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    monkeypatch.setattr(scheduler, "threads_may_share_kernels", lambda: True)
    ended, lock = [], threading.Lock()

    def slow_or_failing(batch: _Toy) -> np.ndarray:
        if batch.starts[-1] == 100:                  # the first part: fails at once
            raise tinybert.InputError("part failed on purpose")
        time.sleep(0.2)
        with lock:
            ended.append(batch.starts[-1])
        return np.zeros((batch.starts.size - 1, 1), np.float32)

    with pytest.raises(tinybert.InputError, match="on purpose"):
        scheduler.Scheduler(2).run(_toy([100, 150]), slow_or_failing, "sequence")
    assert ended == [150]


def test_open_model_is_one_check_for_every_class(minilm_files):
    from tinybert.api.opening import open_model

    opened = open_model(minilm_files["int8"], "encoder", 1, "Encoder")
    assert (opened.threads, opened.config.kind, opened.quantization) == (1, "encoder", "int8")
    assert opened.tokenizer.truncation["max_length"] == opened.config.max_length
    with pytest.raises(tinybert.ModelKindError, match="holds a encoder model; Generator needs a decoder"):
        open_model(minilm_files["int8"], "decoder", None, "Generator")
    with pytest.raises(tinybert.ModelKindError, match="Translator needs an encoder-decoder"):
        open_model(minilm_files["int8"], "encoder-decoder", None, "Translator")
    with pytest.raises(tinybert.InputError, match="threads"):
        open_model(minilm_files["int8"], "encoder", 0, "Encoder")
    with pytest.raises(tinybert.ModelFileError):
        open_model(minilm_files["int8"].with_name("missing.safetensors"), "encoder", 0, "Encoder")


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_larger_than_a_chunk_match_transformers(minilm_files, minilm_dir, hf_tokenizer, sentences,
                                                        threads):
    """A padded batch of 2,048 token rows runs as several chunks per thread, each through the whole
    model, and still matches transformers row for row (fp32, real tokens)."""
    from conftest import hf_last_hidden
    from transformers import AutoModel

    enc = tinybert.Encoder(minilm_files["fp32"], threads=threads)
    batch = dict(hf_tokenizer(sentences[:32], padding="max_length", max_length=64, truncation=True,
                              return_tensors="np"))
    assert batch["input_ids"].size > 4 * scheduler.CHUNK_TOKENS
    got = enc.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    expected = hf_last_hidden(AutoModel.from_pretrained(str(minilm_dir)).eval(), batch)
    real = batch["attention_mask"].astype(bool)
    assert np.abs(got[real] - expected[real]).max() <= 1e-4


def test_single_string_and_tuple_inputs(minilm_files, sentences):
    enc = tinybert.Encoder(minilm_files["int8"])
    as_list = enc.encode([sentences[0], sentences[1]])
    np.testing.assert_allclose(enc.encode(sentences[0]), as_list[:1], atol=1e-6)
    np.testing.assert_allclose(enc.encode((sentences[0], sentences[1])), as_list, atol=1e-6)
    assert as_list.dtype == np.float32 and as_list.shape == (2, enc.dimension)


def test_forward_accepts_lists_and_default_mask(minilm_files, hf_tokenizer, sentences):
    enc = tinybert.Encoder(minilm_files["fp32"])
    ids = hf_tokenizer([sentences[3]])["input_ids"]
    from_list = enc.forward(ids)
    from_array = enc.forward(np.asarray(ids, dtype=np.int64), np.ones((1, len(ids[0])), dtype=np.int64))
    assert from_list.shape == (1, len(ids[0]), 384)
    np.testing.assert_array_equal(from_list, from_array)


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
    """gemm_vnni's kernels compile in gemm.py's quantiser; Numba keys their cache on gemm_vnni.py alone.
    With jitcache.KERNELS_STAMP in the key, touching gemm.py must recompile them (a stale cache would
    keep the old quantiser), while an untouched package loads them from the cache."""
    import os
    import shutil

    import tinybert

    shutil.copytree(Path(tinybert.__file__).parent, tmp_path / "pkg" / "tinybert",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path / "pkg"))
    code = textwrap.dedent("""
        import numpy as np
        import tinybert
        from tinybert.kernels import gemm, gemm_vnni
        assert tinybert.__file__.startswith(PACKAGE)
        rng = np.random.default_rng(0)
        wq = rng.integers(-127, 128, (32, 64)).astype(np.int8)
        gemm.linear_int8(rng.standard_normal((4, 64)).astype(np.float32), gemm_vnni.pack_quads(wq),
                         np.ones(32, np.float32), np.zeros(32, np.float32), path="vnni", act_bits=8)
        stats = gemm_vnni._linear_quads.stats
        print(sum(stats.cache_misses.values()), sum(stats.cache_hits.values()))
    """).replace("PACKAGE", repr(str(tmp_path / "pkg")))

    def run():
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                                cwd=tmp_path)      # not the checkout: "-c" puts the working directory first
        assert result.returncode == 0, result.stderr
        return tuple(int(v) for v in result.stdout.split())

    assert run() == (1, 0)                 # cold: compiled
    assert run() == (0, 1)                 # warm: loaded
    gemm_py = tmp_path / "pkg" / "tinybert" / "kernels" / "gemm.py"
    os.utime(gemm_py, ns=(gemm_py.stat().st_atime_ns, gemm_py.stat().st_mtime_ns + 10**9))
    assert run() == (1, 0)                 # gemm.py changed: gemm_vnni's kernel recompiled


@pytest.mark.parametrize("isa", ["amx", "avx512vnni"])
def test_quads_kernels_run_the_whole_model_on_any_cpu(isa, minilm_files, sentences, reference_embeddings, tmp_path):
    """all-MiniLM-L6-v2 on the AVX-512 VNNI / AMX kernels, forced with TINYBERT_INT8_EMULATE=1.

    On a CPU without those instructions the kernels emulate them exactly (gemm_vnni.py), so the
    quads layout, the byte split, both drivers and their epilogues run end to end here too. The
    paths are built to give the very same float32 sums as the pairs path, so the embeddings must
    equal this process's bit for bit, and match transformers. A batch of many tokens takes the AMX
    driver (capped at avx512vnni: the VNNI one); a 5-token sentence takes the VNNI driver."""
    import os

    from tinybert.kernels import gemm, gemm_vnni

    texts = sentences[:24]
    short = "A short one."
    env = dict(os.environ, TINYBERT_INT8_EMULATE="1", TINYBERT_INT8_ISA=isa)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tinybert
        from tinybert.kernels import gemm, gemm_vnni
        enc = tinybert.Encoder({str(minilm_files["int8"])!r})
        np.save(sys.argv[1], enc.encode({texts!r}, batch_size=24))
        np.save(sys.argv[2], enc.encode({short!r}))
        print(gemm.best_layout(), gemm_vnni.AMX_AVAILABLE, enc.runner.model.blocks[0].attn.qkv._quads)
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    amx = isa == "amx" and (gemm_vnni.AMX_AVAILABLE or gemm_vnni.AMX_EMULATED)
    assert result.stdout.split() == ["quads", str(amx), "True"]
    quads, quads_short = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")

    enc = tinybert.Encoder(minilm_files["int8"])
    np.testing.assert_array_equal(quads, enc.encode(texts, batch_size=24))
    np.testing.assert_array_equal(quads_short, enc.encode(short))
    if not gemm_vnni.VNNI_AVAILABLE:
        assert gemm.best_layout() == "pairs"        # the emulation never runs unless asked for
    cos = (quads * reference_embeddings[:len(texts)]).sum(1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995, (cos.mean(), cos.min())
