"""Sizes a file states and no tensor backs (a rotary or sinusoidal context, T5's nominal one) and sizes a call
asks for (max_length) allocate only what is used: a few-KB config edit cannot make the process allocate
gigabytes. Peak memory is measured with tracemalloc, which sees numpy's allocations."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import seq2seq_sources

from tinybert.layers import KVCache
from tinybert.loader import load

# Far more than these tiny models need, far less than the tables or caches their stated sizes would take.
PEAK_LIMIT = 64 << 20


def _with_config(src: Path, dst: Path, **changes) -> Path:
    """``src`` rewritten with its config's fields changed (the tensors unchanged)."""
    from safetensors.numpy import load_file, save_file

    metadata = dict(load(src).metadata)
    config = json.loads(metadata["config"])
    config.update(changes)
    metadata["config"] = json.dumps(config)
    save_file(load_file(str(src)), str(dst), metadata=metadata)
    return dst


def _peak(run) -> tuple[object, int]:
    """run()'s result and the peak of traced allocations during it, in bytes."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_kv_cache_holds_what_is_used_and_grows_keeping_its_contents(seq2seq_model):
    cfg = load(seq2seq_model("t5-v1.1")[1]["fp32"]).config
    cache = KVCache(cfg, 3, 10**9)
    assert cache.length == 10**9 and cache.held <= 128
    cache.self_k[:, :, :, :cache.held] = np.random.default_rng(0).random(cache.self_k.shape)
    before = cache.self_k.copy()
    cache.reserve(1000)
    assert 1000 <= cache.held <= 2 * 1000 and cache.self_v.shape == cache.self_k.shape
    np.testing.assert_array_equal(cache.self_k[:, :, :, :before.shape[3]], before)
    assert not cache.self_k[:, :, :, before.shape[3]:].any()


def test_t5_with_a_huge_stated_context_and_max_length(seq2seq_model, tmp_path):
    """T5's positions are relative, so its max_positions is nominal: at 2**20 (the most the loader takes) a
    max_length of 10**9 used to size the decoder cache for every position (0.5 GiB for this tiny model)."""
    from tinybert import Translator

    path = _with_config(seq2seq_model("t5-v1.1")[1]["fp32"], tmp_path / "t5.safetensors", max_positions=1 << 20)
    src = seq2seq_sources()[1]          # its output reaches the model's EOS after a few tokens
    translator = Translator(path)
    expected = translator.translate_ids([src], beam_size=1, max_length=40)
    got, peak = _peak(lambda: translator.translate_ids([src], beam_size=1, max_length=10**9))
    assert got == expected and got[0]["finish_reason"] == "eos"
    assert peak < PEAK_LIMIT, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("kind", ["marian", "llama"])
def test_stated_context_of_millions_costs_nothing_until_used(kind, seq2seq_model, decoder_model, tmp_path):
    """Sinusoidal (Marian) and rotary (Llama) tables are built for the positions used, not for max_positions
    (2**20 here, the most the loader takes: hundreds of MB of tables, in float64 while building)."""
    from tinybert import Generator, Translator

    files = seq2seq_model(kind)[1] if kind == "marian" else decoder_model(kind)[1]
    path = _with_config(files["fp32"], tmp_path / f"{kind}.safetensors", max_positions=1 << 20)
    if kind == "marian":
        expected = Translator(files["fp32"]).translate_ids([seq2seq_sources()[0]], beam_size=2, max_length=12)
        got, peak = _peak(lambda: Translator(path).translate_ids([seq2seq_sources()[0]], beam_size=2,
                                                                 max_length=12))
    else:
        prompt = [[5, 6, 7, 8]]
        expected = Generator(files["fp32"]).generate_ids(prompt, max_new_tokens=200)
        got, peak = _peak(lambda: Generator(path).generate_ids(prompt, max_new_tokens=200))
    assert got == expected
    assert peak < PEAK_LIMIT, f"{peak / 2**20:.0f} MiB"


def _owner(array: np.ndarray) -> object:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array.base.obj if isinstance(array.base, memoryview) else array.base


def test_large_short_lived_buffers_get_maps_of_their_own_and_tracemalloc_sees_them(decoder_model):
    """buffers.zeros: below MAPPED_MIN_BYTES a heap array, from it an anonymous map of its own (freed, its pages
    leave the process at once); either way zeros, writable, and counted by tracemalloc as numpy's arrays are.
    The KV cache and the loader's raw tensors are made with it."""
    import mmap

    from tinybert import buffers

    small = buffers.zeros((3, 5), np.float32)
    assert small.shape == (3, 5) and small.dtype == np.float32 and not small.any() and _owner(small) is None
    shape = (2, buffers.MAPPED_MIN_BYTES // 4 + 1)          # just past the bound in uint16
    large = buffers.zeros(shape, np.uint16)
    assert large.shape == shape and large.dtype == np.uint16 and large.flags.writeable and large.flags.c_contiguous
    assert isinstance(_owner(large), mmap.mmap) and not large.any()
    large[1, -1] = 7
    assert large.sum() == 7
    if hasattr(mmap, "MAP_ANONYMOUS"):        # a private map (rw-p), not Python's default shared one (rw-s)
        start = large.ctypes.data
        with open("/proc/self/maps") as maps:
            spans = [line.split() for line in maps]
        perms = [s[1] for s in spans if int(s[0].split("-")[0], 16) <= start < int(s[0].split("-")[1], 16)]
        assert perms == ["rw-p"], perms

    size = 8 << 20
    tracemalloc.start()
    try:
        traced = buffers.zeros((size // 4,), np.float32)
        held = tracemalloc.get_traced_memory()[0]
        del traced
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held >= size and abs(held - after - size) < 64 << 10, (held, after)     # counted, then released

    cfg = load(decoder_model("llama")[1]["fp32"]).config
    cache = KVCache(cfg, 64, 10**6)
    assert cache.self_k.nbytes >= buffers.MAPPED_MIN_BYTES and isinstance(_owner(cache.self_k), mmap.mmap)
    cache.reserve(cache.held + 1)
    assert isinstance(_owner(cache.self_v), mmap.mmap)
