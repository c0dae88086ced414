"""API-level behaviour that is not numerical fidelity: imports, threads, input forms."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

import tinybert


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


def test_thread_count_does_not_change_results(minilm_files, sentences):
    one = tinybert.Encoder(minilm_files["int8"], threads=1).encode(sentences[:16])
    two = tinybert.Encoder(minilm_files["int8"], threads=2).encode(sentences[:16])
    assert np.abs(one - two).max() <= 1e-6


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
