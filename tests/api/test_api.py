"""API-level behaviour that is not numerical fidelity: imports, threads, input forms."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

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


def test_encode_threads_caps_one_call(minilm_files, sentences, monkeypatch):
    """encode(threads=1) on a two-thread Encoder: every batch on the calling thread, none on the pool, the
    same vectors; a count outside 1..the Encoder's threads is an InputError before any work."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    enc = tinybert.Encoder(minilm_files["int8"], threads=2)
    expected = enc.encode(sentences[:40], batch_size=8)
    runs, where = enc.runner.scheduler, []
    part = runs._run_part
    monkeypatch.setattr(runs, "_run_part", lambda *a: where.append(threading.current_thread()) or part(*a))
    np.testing.assert_array_equal(enc.encode(sentences[:40], batch_size=8, threads=1), expected)
    assert where == [threading.current_thread()] * 5            # five batches of 8, each on this thread
    for bad in (0, 3, True, 1.0):
        with pytest.raises(tinybert.InputError, match="threads must be"):
            enc.encode(sentences[:2], threads=bad)


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
    with pytest.raises(tinybert.ModelKindError,
                       match=r"holds an encoder \(BERT family\) model; Generator needs a decoder .*open it with Enc"):
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


