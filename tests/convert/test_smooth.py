"""convert/smooth.py's calibration run: it observes the float model's layers from the outside."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from tinybert_convert import smooth

from tinybert import format as fmt
from tinybert.api.warmup import _random_tensors, _tiny_model


class _Layer:
    """Not a tinybert Linear: the observer asks only for in_features and a call."""

    in_features = 3
    out_features = 2

    def __call__(self, x, threads=None):
        return x[:, :2] * 2 + (threads or 0)


def test_observer_wraps_any_layer_and_keeps_its_results():
    layer = _Layer()
    observed = smooth._Observed(layer)
    x1 = np.array([[1.0, -5.0, 0.5], [-2.0, 1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(observed(x1, 4), layer(x1, 4))
    np.testing.assert_array_equal(observed(np.array([[0.0, 3.0, -7.0]], np.float32)), [[0.0, 6.0]])
    observed(np.zeros((0, 3), np.float32))                       # an empty batch observes nothing
    np.testing.assert_array_equal(observed.amax, [2.0, 5.0, 7.0])
    assert observed.out_features == 2 and observed.layer is layer and type(layer) is _Layer


def test_reference_run_records_every_smoothable_layer_and_changes_nothing():
    cfg = _tiny_model("fp32", "gelu").config
    tensors = _random_tensors(fmt.encoder_tensor_shapes(cfg.to_dict()), "fp32")
    rng = np.random.default_rng(0)
    batches = [SimpleNamespace(ids=rng.integers(1, cfg.vocab_size, 7).astype(np.int32),
                               starts=np.array([0, 3, 7], dtype=np.int64)) for _ in range(2)]
    hidden, ranges = smooth._reference(cfg, tensors, batches)
    plain = smooth._run(smooth.EncoderModel(cfg, tensors), batches)
    np.testing.assert_array_equal(hidden, plain)                  # observing leaves the outputs alone
    assert set(ranges) == {f"{fmt.layer_prefix(i)}{kind}" for i in range(cfg.num_layers)
                           for kind in ("attn.qkv", "mlp.up")}
    for name, amax in ranges.items():
        assert amax.dtype == np.float32 and amax.shape == (cfg.hidden_size,) and (amax > 0).all(), name


# ---------------------------------------------------------------------------------------------- generation

def _smooth_names(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return {name for name in fh.keys() if name.endswith(fmt.SMOOTH_SUFFIX)}


def test_generation_linears_are_every_linear_and_observing_changes_nothing(decoder_model):
    from tinybert.loader import load

    _, files = decoder_model("llama-mqa-tied")
    loaded = load(files["fp32"])
    tensors = {name: loaded.tensors[name] for name in loaded.tensors}
    model = smooth._generation_model(loaded.config, tensors)
    found = smooth._generation_linears(model)
    layers = loaded.config.num_layers
    assert set(found) == {fmt.LM_HEAD} | {f"{fmt.layer_prefix(i)}{kind}" for i in range(layers)
                                          for kind in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, loaded.config.vocab_size, n).astype(np.int32) for n in (5, 9, 2)]
    plain = smooth._generation_logits(model, seqs)
    for owner, attr in found.values():
        setattr(owner, attr, smooth._Observed(getattr(owner, attr)))
    np.testing.assert_array_equal(smooth._generation_logits(model, seqs), plain)
    assert plain.shape == (16, loaded.config.vocab_size)     # one row per teacher-forced token


def test_int8_decoder_gets_8bit_inputs_everywhere_tied_head_included(decoder_model):
    """The converter measured the random test models within budget at 8 bits: every linear carries the
    marker, the tied LM head as ``lm_head.weight.smooth`` = 1 (its weight is the token table)."""
    from tinybert.loader import load

    _, files = decoder_model("llama-mqa-tied")
    names = _smooth_names(files["int8"])
    loaded = load(files["int8"])
    expected = {f"{fmt.layer_prefix(i)}{kind}.weight{fmt.SMOOTH_SUFFIX}" for i in range(loaded.config.num_layers)
                for kind in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}
    assert names == expected | {"lm_head.weight" + fmt.SMOOTH_SUFFIX}
    np.testing.assert_array_equal(loaded.tensors["lm_head.weight" + fmt.SMOOTH_SUFFIX], 1.0)
    assert not _smooth_names(files["fp32"])


def test_generation_calibration_reports_and_falls_back_to_12_bits(decoder_model, monkeypatch, bpe_tokenizer_file):
    from tinybert.loader import load

    _, files = decoder_model("gpt2")
    loaded = load(files["fp32"])
    tensors = {name: np.asarray(loaded.tensors[name]) for name in loaded.tensors}
    report: dict = {}
    out = smooth.generation_activation_tensors(loaded.config, tensors, bpe_tokenizer_file.read_text(), report=report)
    assert report["chosen"] and report["all"] <= max(smooth.GENERATION_BUDGET, report["12-bit"])
    assert 0.0 <= report["all argmax changed"] <= 0.05
    assert any(name.endswith(fmt.SMOOTH_SUFFIX) for name in out)
    # A budget no 8-bit variant meets (below the 12-bit error itself): 12 bits everywhere.
    monkeypatch.setattr(smooth, "_generation_budget", lambda twelve_bit_error: 0.0)
    report = {}
    out = smooth.generation_activation_tensors(loaded.config, tensors, bpe_tokenizer_file.read_text(), report=report)
    assert report["chosen"] == [] and report["all"] > 0 and report["all but lm_head and mlp.down"] > 0
    assert not any(name.endswith(fmt.SMOOTH_SUFFIX) for name in out)


def test_tied_head_marker_must_be_all_ones(decoder_model, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from tinybert.errors import ModelFileError
    from tinybert.loader import load

    _, files = decoder_model("llama-mqa-tied")
    with safe_open(str(files["int8"]), framework="numpy") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        metadata = fh.metadata()
    tensors["lm_head.weight" + fmt.SMOOTH_SUFFIX] = np.full_like(tensors["lm_head.weight" + fmt.SMOOTH_SUFFIX], 2.0)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ModelFileError, match="tied LM head must be all ones"):
        load(tmp_path / "bad.safetensors")
