"""Local (sliding-window) attention in packed bidirectional rows, as ModernBERT's local layers: a bias of the
[heads, distance] form shuts out keys more than ``window`` positions away (layers/attention.py). Checked against
a numpy softmax over the window; keys outside it must get weight exactly 0, and a query with no key in its window
(padding far from any token) must stay finite."""

from __future__ import annotations

import numpy as np

from tinybert.config import BlockConfig
from tinybert.layers import PackedRows, Positions

HEADS, D, WINDOW = 2, 16, 3


def _rows(starts: list[int], key_mask: np.ndarray) -> PackedRows:
    cfg = BlockConfig(hidden_size=HEADS * D, num_heads=HEADS, num_kv_heads=HEADS, head_dim=D, intermediate_size=8,
                      norm="layernorm", norm_eps=1e-5, pre_norm=True, activation="gelu", gated_mlp=False,
                      positions="learned", max_positions=64, layer_windows=(0, WINDOW + 1))   # |i − j| ≤ WINDOW
    return PackedRows(cfg, Positions(cfg, {}), np.array(starts, dtype=np.int64), key_mask, 1)


def _reference(qkv: np.ndarray, starts: list[int], key_mask: np.ndarray, window: int | None) -> np.ndarray:
    a = HEADS * D
    out = np.zeros((qkv.shape[0], a))
    for b0, b1 in zip(starts[:-1], starts[1:]):
        pos = np.arange(b1 - b0)
        allowed = key_mask[b0:b1][None, :].astype(bool) & np.ones((b1 - b0, 1), dtype=bool)
        if window is not None:
            allowed &= np.abs(pos[None, :] - pos[:, None]) <= window
        for h in range(HEADS):
            q, k, v = (qkv[b0:b1, part * a + h * D: part * a + (h + 1) * D].astype(np.float64) for part in range(3))
            scores = np.where(allowed, q @ k.T / np.sqrt(D), -np.inf)
            with np.errstate(invalid="ignore"):     # rows with no allowed key: NaN, never compared
                p = np.exp(scores - scores.max(1, keepdims=True))
                out[b0:b1, h * D:(h + 1) * D] = (p / p.sum(1, keepdims=True)) @ v
    return out


def test_window_matches_numpy_and_gives_far_keys_zero_weight():
    rng = np.random.default_rng(0)
    starts = [0, 11, 14, 34]            # lengths 11, 3 (inside one window), 20
    qkv = rng.standard_normal((34, 3 * HEADS * D)).astype(np.float32)
    mask = np.ones(34, dtype=np.uint8)
    rows = _rows(starts, mask)
    local, full = rows.attend(qkv.copy(), 1), rows.attend(qkv.copy(), 0)
    np.testing.assert_allclose(local, _reference(qkv, starts, mask, WINDOW), atol=2e-5)
    np.testing.assert_allclose(full, _reference(qkv, starts, mask, None), atol=2e-5)
    assert np.abs(local - full).max() > 1e-2          # the window changed what the long sequences see
    # Values of keys outside every window of query 0 (positions > WINDOW of the first sequence): weight exactly 0.
    changed = qkv.copy()
    changed[WINDOW + 1:11, 2 * HEADS * D:] = 1e6
    assert np.array_equal(rows.attend(changed, 1)[0], local[0])


def test_query_with_no_key_in_its_window_stays_finite():
    """A padded row whose last tokens are padding more than WINDOW positions after the last real token: those
    queries see no key; their outputs (padding, never read) must be finite, the real tokens' exact."""
    rng = np.random.default_rng(1)
    starts = [0, 16]
    qkv = rng.standard_normal((16, 3 * HEADS * D)).astype(np.float32)
    mask = np.zeros(16, dtype=np.uint8)
    mask[:5] = 1
    local = _rows(starts, mask).attend(qkv.copy(), 1)
    assert np.isfinite(local).all()
    np.testing.assert_allclose(local[:5], _reference(qkv, starts, mask, WINDOW)[:5], atol=2e-5)
