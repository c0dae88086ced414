"""Kernels against plain numpy references written from the math, on odd shapes too."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from tinybert.kernels import activations, attention, embeddings, mathfn, norm

RNG = np.random.default_rng(1234)


def _ref_layer_norm(x, w, b, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * w + b).astype(np.float32)


@pytest.mark.parametrize("rows,dim", [(1, 1), (1, 384), (7, 33), (64, 768), (200, 385)])  # last: parallel, tail
def test_layer_norm(rows, dim):
    x = (RNG.standard_normal((rows, dim)) * 3 + 1).astype(np.float32)
    res = RNG.standard_normal((rows, dim)).astype(np.float32)
    w = RNG.uniform(0.5, 1.5, dim).astype(np.float32)
    b = RNG.standard_normal(dim).astype(np.float32)
    out = np.empty_like(x)
    norm.layer_norm(x, w, b, 1e-12, out)
    np.testing.assert_allclose(out, _ref_layer_norm(x, w, b, 1e-12), atol=2e-5)
    expected = _ref_layer_norm(x + res, w, b, 1e-5)
    res2 = res.copy()
    norm.add_layer_norm(x.copy(), res2, w, b, 1e-5, res2)  # out aliasing the residual
    np.testing.assert_allclose(res2, expected, atol=2e-5)
    norm.add_layer_norm(x, res, w, b, 1e-5, x)  # in place, as the blocks use it
    np.testing.assert_allclose(x, expected, atol=2e-5)


def _ref_head_rms_norm(qkv, q_heads, k_heads, wq, wk, eps):
    """float64 numpy: each of the first q_heads + k_heads heads RMS-normed, the rest of the row as it was."""
    d = wq.size
    out = qkv.astype(np.float64)
    heads = out[:, :(q_heads + k_heads) * d].reshape(qkv.shape[0], q_heads + k_heads, d)
    w = np.concatenate([np.tile(wq, (q_heads, 1)), np.tile(wk, (k_heads, 1))])
    heads[:] = heads / np.sqrt((heads * heads).mean(-1, keepdims=True) + eps) * w
    return out


@pytest.mark.parametrize("rows,q_heads,k_heads,d,eps", [
    (1, 12, 4, 64, 1e-6),      # a decode step (grouped-query attention)
    (3, 2, 2, 33, 1e-5),       # odd head_dim: the vector loops' tails
    (300, 16, 8, 128, 1e-6),   # above PARALLEL_MIN_WORK: the prange path
    (5, 1, 1, 1, 1e-6),
])
def test_head_rms_norm_matches_numpy(rows, q_heads, k_heads, d, eps):
    from tinybert.kernels.decoder import rms_norm

    v_width = k_heads * d
    qkv = (RNG.standard_normal((rows, (q_heads + k_heads) * d + v_width)) * 3 + 0.5).astype(np.float32)
    wq, wk = (RNG.uniform(-1.5, 1.5, d).astype(np.float32) for _ in range(2))
    expected = _ref_head_rms_norm(qkv, q_heads, k_heads, wq, wk, eps)
    values = qkv[:, (q_heads + k_heads) * d:].copy()
    heads = qkv[:, :(q_heads + k_heads) * d].reshape(-1, d).copy()
    norm.head_rms_norm(qkv, q_heads, k_heads, wq, wk, np.float32(eps))
    np.testing.assert_allclose(qkv, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(qkv[:, (q_heads + k_heads) * d:], values)   # the value columns untouched
    # the same arithmetic as rms_norm, head by head
    rms_q, rms_k = np.empty_like(heads), np.empty_like(heads)
    rms_norm(heads, wq, eps, rms_q)
    rms_norm(heads, wk, eps, rms_k)
    is_q = np.tile(np.arange(q_heads + k_heads) < q_heads, rows)[:, None]
    np.testing.assert_allclose(qkv[:, :(q_heads + k_heads) * d].reshape(-1, d), np.where(is_q, rms_q, rms_k),
                               atol=1e-6, rtol=1e-6)


def test_head_rms_norm_covers_both_paths_and_rejects_bad_shapes():
    assert 3 * 4 * 33 < activations.PARALLEL_MIN_WORK <= 300 * 24 * 128
    w = np.ones(4, np.float32)
    for qkv, wk in [(np.zeros((2, 7), np.float32), w),                  # narrower than the heads
                    (np.zeros((2, 12), np.float64), w),                 # not float32
                    (np.zeros((12, 2), np.float32).T, w),               # not C-contiguous
                    (np.zeros((2, 12), np.float32), np.ones(3, np.float32))]:   # weights of two sizes
        with pytest.raises(ValueError):
            norm.head_rms_norm(qkv, 1, 1, w, wk, np.float32(1e-6))


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu", "silu"])
def test_activations(name):
    x = (RNG.standard_normal((5, 67)) * 4).astype(np.float32)
    x[0, :5] = [0.0, -0.0, 10.0, -10.0, 1e-3]
    xd = x.astype(np.float64)
    if name == "gelu":
        expected = 0.5 * xd * (1 + np.vectorize(math.erf)(xd / math.sqrt(2)))
    elif name == "gelu_tanh":
        expected = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    elif name == "silu":
        expected = xd / (1 + np.exp(-xd))
    else:
        expected = np.maximum(xd, 0)
    activations.ACTIVATIONS[name](x)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


def _ref_attention(qkv, mask, heads):
    batch, seq = mask.shape
    hidden = qkv.shape[1] // 3
    d = hidden // heads
    x = qkv.astype(np.float64).reshape(batch, seq, 3, heads, d)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    scores = np.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    valid = mask.astype(bool)
    valid = np.where(valid.any(1, keepdims=True), valid, True)  # all-masked row: attend to all
    scores = np.where(valid[:, None, None, :], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhij,bjhd->bihd", p, v).reshape(batch * seq, hidden).astype(np.float32)


@pytest.mark.parametrize("batch,seq,heads,d", [(1, 1, 1, 8), (3, 17, 4, 16), (2, 128, 12, 32), (1, 512, 2, 64)])
def test_attention(batch, seq, heads, d):
    hidden = heads * d
    qkv = (RNG.standard_normal((batch * seq, 3 * hidden)) * 2).astype(np.float32)
    lengths = RNG.integers(1, seq + 1, batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.uint8)
    if batch > 1:
        mask[-1, :] = 0  # a row with no valid key
        mask[0, : seq // 2] = 0  # left padding too
        mask[0, -1] = 1
    out = np.empty((batch * seq, hidden), dtype=np.float32)
    starts = np.arange(0, batch * seq + 1, seq, dtype=np.int64)
    attention.attention(qkv, starts, mask.reshape(-1), heads, out)
    np.testing.assert_allclose(out, _ref_attention(qkv, mask, heads), atol=2e-5)


def test_attention_packed_sequences_equal_separate_runs():
    """Packed variable-length sequences give what each sequence gives alone."""
    heads, d = 3, 8
    lengths = [5, 1, 17, 2]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qkv = RNG.standard_normal((starts[-1], 3 * heads * d)).astype(np.float32)
    out = np.empty((starts[-1], heads * d), dtype=np.float32)
    attention.attention(qkv, starts, np.ones(starts[-1], dtype=np.uint8), heads, out)
    for b, n in enumerate(lengths):
        rows = slice(starts[b], starts[b + 1])
        expected = _ref_attention(qkv[rows], np.ones((1, n), dtype=np.uint8), heads)
        np.testing.assert_allclose(out[rows], expected, atol=2e-5)


@pytest.mark.parametrize("d", [32, 64])
@pytest.mark.parametrize("seq", [1, 7, 128, 300, 512])
def test_attention_head_dims_and_lengths(seq, d):
    """One sequence per row of the batch: unmasked, right-padded, masked with gaps."""
    heads, batch = 2, 3
    hidden = heads * d
    qkv = (RNG.standard_normal((batch * seq, 3 * hidden)) * 2).astype(np.float32)
    mask = np.ones((batch, seq), dtype=np.uint8)
    mask[1, (seq + 1) // 2:] = 0  # end padding (a 1-token row keeps its only key)
    mask[2] = RNG.random(seq) < 0.6  # scattered masked keys
    mask[2, 0] = 1
    out = np.empty((batch * seq, hidden), dtype=np.float32)
    starts = np.arange(0, batch * seq + 1, seq, dtype=np.int64)
    attention.attention(qkv, starts, mask.reshape(-1), heads, out)
    np.testing.assert_allclose(out, _ref_attention(qkv, mask, heads), atol=2e-5)


@pytest.mark.parametrize("d", [32, 64, 24])
def test_attention_packed_mixed_lengths_with_masks(d):
    """Packed sequences of mixed lengths, some keys masked, one sequence with no valid key."""
    heads = 3
    hidden = heads * d
    lengths = [7, 128, 1, 300, 16, 33, 5]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qkv = (RNG.standard_normal((starts[-1], 3 * hidden)) * 2).astype(np.float32)
    key_mask = (RNG.random(starts[-1]) < 0.7).astype(np.uint8)
    key_mask[starts[:-1]] = 1
    key_mask[starts[5]:starts[6]] = 0  # the 33-token sequence has no valid key: attends to all
    out = np.empty((starts[-1], hidden), dtype=np.float32)
    attention.attention(qkv, starts, key_mask, heads, out)
    for b, n in enumerate(lengths):
        rows = slice(starts[b], starts[b + 1])
        expected = _ref_attention(qkv[rows], key_mask[rows].reshape(1, n), heads)
        np.testing.assert_allclose(out[rows], expected, atol=2e-5)


@pytest.mark.parametrize("seq,d", [(16, 32), (128, 32), (512, 64)])
def test_attention_batch1_twelve_heads(seq, d):
    heads = 12
    hidden = heads * d
    qkv = (RNG.standard_normal((seq, 3 * hidden)) * 2).astype(np.float32)
    mask = np.ones((1, seq), dtype=np.uint8)
    mask[0, -3:] = 0
    out = np.empty((seq, hidden), dtype=np.float32)
    attention.attention(qkv, np.array([0, seq], dtype=np.int64), mask.reshape(-1), heads, out)
    np.testing.assert_allclose(out, _ref_attention(qkv, mask, heads), atol=2e-5)


def test_attention_large_scores_and_non_contiguous_input():
    """Scores spanning hundreds of units (exp underflow must not matter) and a qkv that is a
    strided view."""
    heads, d, seq = 2, 32, 40
    hidden = heads * d
    wide = (RNG.standard_normal((seq, 3 * hidden + 5)) * 3).astype(np.float32)
    wide[0, 5 + hidden:5 + 2 * hidden] *= 30  # key 0: scores of ±hundreds, e**-1000 underflows
    qkv = wide[:, 5:]
    mask = np.ones((1, seq), dtype=np.uint8)
    out = np.empty((seq, hidden), dtype=np.float32)
    attention.attention(qkv, np.array([0, seq], dtype=np.int64), mask.reshape(-1), heads, out)
    # Scores of several hundred carry fp32 rounding of ~1e-5 relative into the weights: rtol 1e-5.
    np.testing.assert_allclose(out, _ref_attention(np.ascontiguousarray(qkv), mask, heads), rtol=1e-5, atol=2e-5)


def test_embeddings():
    vocab, positions, types, dim, tokens = 50, 20, 3, 13, 37
    q = RNG.integers(-127, 128, (vocab, dim)).astype(np.int8)
    s = RNG.uniform(0.001, 0.1, vocab).astype(np.float32)
    pos_table = RNG.standard_normal((positions, dim)).astype(np.float32)
    type_table = RNG.standard_normal((types, dim)).astype(np.float32)
    ids = RNG.integers(0, vocab, tokens).astype(np.int32)
    pos = RNG.integers(0, positions, tokens).astype(np.int32)
    typ = RNG.integers(0, types, tokens).astype(np.int32)
    table = q.astype(np.float32) * s[:, None]
    expected = table[ids] + pos_table[pos] + type_table[typ]
    out = np.empty((tokens, dim), dtype=np.float32)
    one, none = np.float32(1.0), np.zeros(0, dtype=np.float32)
    embeddings.embed(ids, pos, typ, q, s, one, pos_table, type_table, out)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    embeddings.embed(ids, pos, typ, table, none, one, pos_table, type_table, out)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # A factor (Marian's √d) scales the token rows only; tables without rows are left out.
    factor, empty = np.float32(3.0), np.zeros((0, dim), dtype=np.float32)
    embeddings.embed(ids, pos, typ, q, s, factor, empty, empty, out)
    np.testing.assert_allclose(out, table[ids] * 3, rtol=1e-6, atol=1e-6)
    embeddings.embed(ids, pos, typ, table, none, factor, pos_table, empty, out)
    np.testing.assert_allclose(out, table[ids] * 3 + pos_table[pos], rtol=1e-6, atol=1e-6)


@njit(cache=False)
def _apply_exp(x, out):
    for i in range(x.size):
        out[i] = mathfn.exp_nonpositive(x[i])


def test_exp_nonpositive_matches_numpy():
    x = np.concatenate([np.linspace(-87, 0, 100_001), RNG.uniform(-30, 0, 10_000), [0.0, -1e-30]]).astype(np.float32)
    out = np.empty_like(x)
    _apply_exp(x, out)
    expected = np.exp(x.astype(np.float64))
    assert (np.abs(out - expected) / expected).max() < 3e-7


@njit(cache=False)
def _apply_exp2(x, out):
    for i in range(x.size):
        out[i] = mathfn.exp2_nonpositive(x[i])


def test_exp2_nonpositive_matches_numpy():
    x = np.concatenate([np.linspace(-126, 0, 100_001), RNG.uniform(-30, 0, 10_000), [0.0, -1e-30, -0.5, -1.5]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    _apply_exp2(x, out)
    expected = np.exp2(x.astype(np.float64))
    assert (np.abs(out - expected) / expected).max() < 3e-7
    low = np.array([-127, -1000, -np.inf], dtype=np.float32)
    _apply_exp2(low, out[:3])
    np.testing.assert_allclose(out[:3], 2.0**-126, rtol=3e-7)  # clamped, not underflowed


def test_pool_segments_matches_numpy():
    from tinybert.errors import InputError
    from tinybert.models.heads import pool_segments

    lengths = [1, 7, 130, 2, 16]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hidden = (RNG.standard_normal((starts[-1], 48)) * 3).astype(np.float32)
    segs = [hidden[starts[b]:starts[b + 1]].astype(np.float64) for b in range(len(lengths))]
    np.testing.assert_allclose(pool_segments(hidden, starts, "mean"), [s.mean(0) for s in segs], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool_segments(hidden, starts, "mean_sqrt_len"),
                               [s.sum(0) / np.sqrt(len(s)) for s in segs], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pool_segments(hidden, starts, "max"), [s.max(0) for s in segs])
    np.testing.assert_array_equal(pool_segments(hidden, starts, "cls"), [s[0] for s in segs])
    for bad in ([0, 5, 3], [0, 0, 4], [0, hidden.shape[0] + 1], [-1, 4], [0]):
        with pytest.raises(InputError):
            pool_segments(hidden, np.array(bad, np.int64), "mean")
