"""convert/smooth.py's calibration run: it observes the float model's layers from the outside."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
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
