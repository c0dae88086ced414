"""Decoder kernels (RMSNorm, SiLU·up, RoPE, KV-cache attention) against numpy references written from
the math and against transformers / torch on the same inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numba import njit
from tinybert_convert.rope import rope_from_hf_config

from tinybert.kernels import activations, decoder, half, rope

RNG = np.random.default_rng(20240611)


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # LlamaConfig warns about small test rope settings
    yield
    transformers.logging.set_verbosity(level)


# ----------------------------------------------------------------------------------------- rms_norm

@pytest.mark.parametrize("rows,dim,eps", [(1, 1, 1e-6), (1, 2048, 1e-5), (7, 33, 1e-6), (40, 2048, 1e-6)])
def test_rms_norm_matches_llama_rms_norm(rows, dim, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = (RNG.standard_normal((rows, dim)) * 3 + 0.5).astype(np.float32)
    w = RNG.uniform(-1.5, 1.5, dim).astype(np.float32)
    hf = LlamaRMSNorm(dim, eps=eps)
    with torch.no_grad():
        hf.weight.copy_(torch.from_numpy(w))
        expected = hf(torch.from_numpy(x)).numpy()
    xd = x.astype(np.float64)
    reference = xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + eps) * w
    np.testing.assert_allclose(expected, reference, atol=1e-5)  # the two references agree

    out = np.full_like(x, np.nan)
    decoder.rms_norm(x, w, eps, out)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=1e-5)

    decoder.rms_norm(x, w, eps, x)  # out aliasing x
    np.testing.assert_allclose(x, expected, atol=1e-5, rtol=1e-5)


def test_rms_norm_covers_both_paths():
    assert 7 * 33 < decoder.PARALLEL_MIN_WORK <= 40 * 2048


# ------------------------------------------------------------------------------ gated silu (SwiGLU)

SILU = activations.KINDS.index("silu")

@pytest.mark.parametrize("rows,inter", [(1, 1), (1, 5632), (3, 37), (48, 1500)])
def test_gated_silu_matches_torch(rows, inter):
    gate_up = (RNG.standard_normal((rows, 2 * inter)) * 4).astype(np.float32)
    special = np.array([100.0, -100.0, 88.0, -88.0, 90.0, -90.0, 0.0, -0.0, 1e-3, -1e-3, 20.0, -20.0], np.float32)
    flat = gate_up[:, :inter].reshape(-1)
    flat[: min(flat.size, special.size)] = special[: flat.size]
    gate_up[:, :inter] = flat.reshape(rows, inter)
    out = np.full((rows, inter), np.nan, np.float32)
    activations.gated(gate_up, out, SILU)

    gate, up = torch.from_numpy(gate_up[:, :inter]), torch.from_numpy(gate_up[:, inter:])
    expected = (torch.nn.functional.silu(gate) * up).numpy()
    g = gate_up[:, :inter].astype(np.float64)
    reference = g / (1.0 + np.exp(-g)) * gate_up[:, inter:]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)


def test_gated_silu_extremes():
    gate_up = np.array([[100.0, -100.0, 1e4, -1e4, 3.0e38, -3.0e38, 2.0, 3.0, 0.5, 0.5, 1.0, 1.0]], np.float32)
    out = np.empty((1, 6), np.float32)
    activations.gated(gate_up, out, SILU)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], [200.0, 0.0, 5e3, 0.0, 3.0e38, 0.0], rtol=1e-6, atol=1e-30)


def test_gated_silu_covers_both_paths():
    assert 3 * 37 < activations.GELU_PARALLEL_MIN <= 48 * 1500


# ---------------------------------------------------------------------------------------------- RoPE

ROPE_CASES = {
    "default": dict(rope_type="default", rope_theta=10000.0),
    "linear": dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
    "llama3-64": dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                      high_freq_factor=4.0, original_max_position_embeddings=64),
    "llama3-128": dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                       high_freq_factor=4.0, original_max_position_embeddings=128),
    # Factors that are not powers of two (dividing differs from multiplying by a reciprocal), and an
    # original length that puts frequencies in the smoothing band where operation order shows.
    "linear-3": dict(rope_type="linear", rope_theta=10000.0, factor=3.0),
    "llama3-odd": dict(rope_type="llama3", rope_theta=10000.0, factor=6.0, low_freq_factor=1.5,
                       high_freq_factor=3.5, original_max_position_embeddings=56),
}
POSITIONS = np.array([0, 1, 2, 3, 17, 63, 64, 127, 128, 1000, 4095, 8191, 65535, 100_003], np.int32)
MAX_POSITIONS = 100_004


def _llama_config(params: dict, head_dim: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                       max_position_embeddings=1024, rope_parameters=dict(params))


def _hf_cos_sin(cfg, positions):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    emb = LlamaRotaryEmbedding(cfg)
    with torch.no_grad():
        cos, sin = emb(torch.zeros(1), torch.from_numpy(positions.astype(np.int64))[None])
    return cos[0], sin[0]  # [len(positions), head_dim]


@pytest.fixture(scope="module")
def tables():
    """(case, head_dim) -> (config, canonical rope dict, cos, sin); built once per module."""
    cache: dict = {}

    def get(case: str, head_dim: int):
        if (case, head_dim) not in cache:
            cfg = _llama_config(ROPE_CASES[case], head_dim)
            params = rope_from_hf_config(cfg.to_dict())
            cache[case, head_dim] = (cfg, params, *rope.rope_tables(head_dim, MAX_POSITIONS, params))
        return cache[case, head_dim]

    return get


@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_tables_match_llama_rotary_embedding(tables, case, head_dim):
    cfg, _, cos, sin = tables(case, head_dim)
    assert cos.shape == sin.shape == (MAX_POSITIONS, head_dim // 2)
    assert cos.dtype == sin.dtype == np.float32
    hf_cos, hf_sin = _hf_cos_sin(cfg, POSITIONS)
    half = head_dim // 2
    np.testing.assert_array_equal(hf_cos[:, :half].numpy(), hf_cos[:, half:].numpy())  # duplicated halves
    np.testing.assert_allclose(cos[POSITIONS], hf_cos[:, :half].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(sin[POSITIONS], hf_sin[:, :half].numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_inv_freq_bit_exact_where_torch_pow_is_correctly_rounded(case, head_dim):
    # For these (theta, head_dim) pairs torch's SIMD powf happens to round correctly, so every step
    # after it (linear division, the llama3 smoothing in float32) must reproduce transformers exactly.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = _llama_config(ROPE_CASES[case], head_dim)
    hf = LlamaRotaryEmbedding(cfg).inv_freq.numpy()
    np.testing.assert_array_equal(rope._inv_freq(head_dim, rope_from_hf_config(cfg.to_dict())), hf)


@pytest.mark.parametrize("theta,head_dim", [(1234.5, 96), (1e6, 128), (10000.0, 96)])
def test_inv_freq_within_one_ulp_of_torch_elsewhere(theta, head_dim):
    # torch's powf is not always correctly rounded; ours (float64 power, rounded) is. 1 ulp apart at most.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = _llama_config(dict(rope_type="default", rope_theta=theta), head_dim)
    hf = LlamaRotaryEmbedding(cfg).inv_freq.numpy()
    ours = rope._inv_freq(head_dim, rope_from_hf_config(cfg.to_dict()))
    assert np.abs(ours.view(np.int32).astype(np.int64) - hf.view(np.int32)).max() <= 1
    exponent = (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)).astype(np.float64)
    exact = 1.0 / np.float64(np.float32(theta)) ** exponent  # from the float32 exponent torch uses
    assert np.abs(ours / exact - 1).max() < 2 ** -23


def _ref_rope(x, positions, cos, sin):
    half = x.shape[-1] // 2
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    lo, hi = x[..., :half], x[..., half:]
    return np.concatenate([lo * c - hi * s, hi * c + lo * s], axis=-1)


@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_apply_rope_matches_apply_rotary_pos_emb(tables, case, head_dim):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg, _, cos, sin = tables(case, head_dim)
    n, heads = POSITIONS.size, 3
    q = RNG.standard_normal((n, heads, head_dim)).astype(np.float32)
    k = RNG.standard_normal((n, heads, head_dim)).astype(np.float32)
    hf_cos, hf_sin = _hf_cos_sin(cfg, POSITIONS)
    # transformers' layout is [batch, heads, seq, d]
    hq, hk = apply_rotary_pos_emb(torch.from_numpy(q).transpose(0, 1)[None], torch.from_numpy(k).transpose(0, 1)[None],
                                  hf_cos[None], hf_sin[None])
    expected_q, expected_k = hq[0].transpose(0, 1).numpy(), hk[0].transpose(0, 1).numpy()
    reference = _ref_rope(q, POSITIONS, cos, sin)
    rope.apply_rope(q, POSITIONS, cos, sin)
    rope.apply_rope(k, POSITIONS, cos, sin)
    np.testing.assert_allclose(q, expected_q, atol=1e-5, rtol=0)
    np.testing.assert_allclose(k, expected_k, atol=1e-5, rtol=0)
    np.testing.assert_allclose(q, reference, atol=1e-6, rtol=0)


def test_apply_rope_parallel_path_and_views(tables):
    _, _, cos, sin = tables("llama3-128", 64)
    n, heads, d = 400, 4, 64
    assert n * heads * d >= rope.PARALLEL_MIN_WORK > 3 * heads * d
    positions = RNG.integers(0, MAX_POSITIONS, n).astype(np.int32)
    x = RNG.standard_normal((n, heads, d)).astype(np.float32)
    expected = _ref_rope(x, positions, cos, sin)
    rope.apply_rope(x, positions, cos, sin)
    np.testing.assert_allclose(x, expected, atol=1e-6, rtol=0)
    # In place on the q part of a fused projection (a strided view), serial path.
    fused = RNG.standard_normal((3, 2 * heads * d)).astype(np.float32)
    before = fused.copy()
    view = fused[:, : heads * d].reshape(3, heads, d)
    assert np.shares_memory(view, fused)
    rope.apply_rope(view, positions[:3], cos, sin)
    np.testing.assert_allclose(fused[:, : heads * d].reshape(3, heads, d),
                               _ref_rope(before[:, : heads * d].reshape(3, heads, d), positions[:3], cos, sin),
                               atol=1e-6, rtol=0)
    np.testing.assert_array_equal(fused[:, heads * d:], before[:, heads * d:])


def test_apply_rope_rotates_by_position():
    # A hand-checkable case: d = 2, theta irrelevant (θ_0 = 1), so position p rotates by p radians.
    cos, sin = rope.rope_tables(2, 8, {"type": "default", "theta": 10000.0})
    x = np.tile(np.array([1.0, 0.0], np.float32), (4, 1, 1))
    rope.apply_rope(x, np.array([0, 1, 3, 7], np.int32), cos, sin)
    np.testing.assert_allclose(x[:, 0], np.stack([np.cos([0, 1, 3, 7]), np.sin([0, 1, 3, 7])], 1), atol=1e-6)


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_from_hf_config_llama_configs(case):
    cfg = _llama_config(ROPE_CASES[case], 64).to_dict()
    expected = {"default": {"type": "default", "theta": 10000.0},
                "linear": {"type": "linear", "theta": 10000.0, "factor": 4.0},
                "llama3-64": {"type": "llama3", "theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                "llama3-128": {"type": "llama3", "theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
                "linear-3": {"type": "linear", "theta": 10000.0, "factor": 3.0},
                "llama3-odd": {"type": "llama3", "theta": 10000.0, "factor": 6.0, "low_freq_factor": 1.5,
                               "high_freq_factor": 3.5, "original_max_position_embeddings": 56}}[case]
    assert rope_from_hf_config(cfg) == {**expected, "attention_scaling": 1.0}


def test_rope_from_hf_config_legacy_keys():
    llama31 = {"max_position_embeddings": 131072, "rope_theta": 500000.0,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    assert rope_from_hf_config(llama31) == {
        "type": "llama3", "theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "attention_scaling": 1.0}
    assert rope_from_hf_config({"rope_theta": 1e6, "rope_scaling": None}) == {
        "type": "default", "theta": 1e6, "attention_scaling": 1.0}
    assert rope_from_hf_config({}) == {"type": "default", "theta": 10000.0, "attention_scaling": 1.0}
    assert rope_from_hf_config({"rope_scaling": {"type": "linear", "factor": 2.0}}) == {
        "type": "linear", "theta": 10000.0, "factor": 2.0, "attention_scaling": 1.0}
    # llama3 without original_max_position_embeddings falls back to max_position_embeddings, as transformers does
    no_original = {"max_position_embeddings": 2048, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}}
    assert rope_from_hf_config(no_original)["original_max_position_embeddings"] == 2048


def test_legacy_config_gives_the_same_tables_as_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    legacy = {"hidden_size": 128, "num_attention_heads": 2, "max_position_embeddings": 4096, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 128}}
    cfg = LlamaConfig(**legacy)
    hf = LlamaRotaryEmbedding(cfg).inv_freq.numpy()
    np.testing.assert_array_equal(rope._inv_freq(64, rope_from_hf_config(legacy)), hf)


@pytest.mark.parametrize("params", [
    dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
    dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256),
])
def test_rope_from_hf_config_rejects_unsupported_types(params):
    cfg = _llama_config(params, 64).to_dict()
    with pytest.raises(ValueError, match=params["rope_type"]):
        rope_from_hf_config(cfg)


@pytest.mark.parametrize("factor", [None, 3.0])
def test_longrope_tables_match_phi3_within_the_original_context(factor):
    """longrope (Phi-3): transformers' short factors and attention scaling √(1 + ln s / ln L) (s = the config's
    factor, else max_position_embeddings / L) at every position up to the original context L, where
    transformers takes them; "su" is its older name."""
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    short = [float(x) for x in 1.0 + 0.37 * np.arange(32)]
    params = dict(rope_type="longrope", rope_theta=10000.0, short_factor=short, long_factor=[40.0] * 32,
                  **({"factor": factor} if factor else {}))
    cfg = Phi3Config(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096,
                     original_max_position_embeddings=256, rope_parameters=params)
    ours = rope_from_hf_config(cfg.to_dict())
    scale = factor or 4096 / 256
    assert ours["type"] == "longrope" and ours["original_max_position_embeddings"] == 256
    assert ours["attention_scaling"] == pytest.approx(math.sqrt(1 + math.log(scale) / math.log(256)))
    emb = Phi3RotaryEmbedding(cfg)
    np.testing.assert_array_equal(rope._inv_freq(64, ours), emb.original_inv_freq.numpy())
    positions = np.arange(256, dtype=np.int64)
    with torch.no_grad():
        hf_cos, hf_sin = emb(torch.zeros(1), torch.from_numpy(positions)[None])
    cos, sin = rope.rope_tables(64, 256, ours)
    np.testing.assert_allclose(cos, hf_cos[0, :, :32].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(sin, hf_sin[0, :, :32].numpy(), atol=1e-6, rtol=0)
    legacy = {**cfg.to_dict(), "rope_scaling": {**params, "type": "su"}}
    legacy["rope_scaling"].pop("rope_type")
    assert rope_from_hf_config(legacy) == ours


def test_longrope_long_tables_match_phi3_past_the_original_context():
    """A forward reaching the original context L = 256 takes transformers' long factors at every position, one
    below L the short ones; RotaryTables (layers/attention.py) holds both in one table and indexes them per row:
    a position below L, or L plus the position."""
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    from tinybert.layers.attention import RotaryTables

    rng = np.random.default_rng(3)
    short, long = rng.uniform(1, 40, 32).tolist(), rng.uniform(1, 40, 32).tolist()
    cfg = Phi3Config(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096,
                     original_max_position_embeddings=256,
                     rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=short,
                                          long_factor=long))
    ours = rope_from_hf_config(cfg.to_dict())
    assert ours["long_factors"] == long and ours["factors"] == short
    tables = RotaryTables(64, 4096, ours)
    assert tables.switch == 256
    for n in (200, 256, 257, 700):                  # the call's last position is n − 1
        at = np.arange(n, dtype=np.int32)
        with torch.no_grad():
            hf_cos, hf_sin = Phi3RotaryEmbedding(cfg)(torch.zeros(1), torch.from_numpy(at.astype(np.int64))[None])
        index, cos, sin = tables.rows(at, np.full(n, n - 1, dtype=np.int32))
        np.testing.assert_array_equal(index, at + (256 if n > 256 else 0))
        np.testing.assert_allclose(cos[index], hf_cos[0, :, :32].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(sin[index], hf_sin[0, :, :32].numpy(), atol=1e-6, rtol=0)
    # rows of two sequences in one call, one ending below L: each its own factors
    at = np.concatenate([np.arange(10), np.arange(300)]).astype(np.int32)
    last = np.repeat(np.array([9, 299], dtype=np.int32), [10, 300])
    index, _, _ = tables.rows(at, last)
    np.testing.assert_array_equal(index, np.concatenate([np.arange(10), 256 + np.arange(300)]))


def test_rope_rejects_bad_input():
    with pytest.raises(ValueError, match="ntk"):
        rope.rope_tables(64, 16, {"type": "ntk", "theta": 10000.0})
    with pytest.raises(ValueError, match="factor"):
        rope.rope_tables(64, 16, {"type": "linear", "theta": 10000.0})
    with pytest.raises(ValueError, match="even"):
        rope.rope_tables(63, 16, {"type": "default", "theta": 10000.0})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        rope_from_hf_config({"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                      "partial_rotary_factor": 0.5}})
    with pytest.raises(ValueError, match="factor"):
        rope_from_hf_config({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


# ----------------------------------------------------------------------------------- KV cache + attention

def _make_cache(slots_total, kv_heads, t_max, d):
    # NaN everywhere a kernel must not read: any stray read poisons the output.
    return (np.full((slots_total, kv_heads, t_max, d), np.nan, np.float32),
            np.full((slots_total, kv_heads, t_max, d), np.nan, np.float32))


def _ref_cached_attention(q, k_cache, v_cache, slots, positions, scale):
    n, q_heads, d = q.shape
    group = q_heads // k_cache.shape[1]
    out = np.empty((n, q_heads, d))
    for r in range(n):
        for h in range(q_heads):
            keys = k_cache[slots[r], h // group, : positions[r] + 1].astype(np.float64)
            values = v_cache[slots[r], h // group, : positions[r] + 1].astype(np.float64)
            s = keys @ q[r, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[r, h] = p @ values / p.sum()
    return out


def _sdpa(q_seq, k_seq, v_seq, scale, causal):
    """torch's scaled_dot_product_attention on one sequence, q [L, Hq, d], k/v [L', Hkv, d]."""
    group = q_seq.shape[1] // k_seq.shape[1]
    qt = torch.from_numpy(q_seq).transpose(0, 1)[None]
    kt = torch.from_numpy(k_seq).transpose(0, 1)[None].repeat_interleave(group, dim=1)
    vt = torch.from_numpy(v_seq).transpose(0, 1)[None].repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
    return out[0].transpose(0, 1).numpy()


def _prefill(lengths, slot_ids, q_heads, kv_heads, d, t_max, slots_total=4, q_gain=1.0):
    """Rows for every prompt token of each sequence (shuffled), their k/v written to the cache."""
    rows = [(b, p) for b, n in enumerate(lengths) for p in range(n)]
    order = RNG.permutation(len(rows))
    seq = np.array([rows[i][0] for i in order])
    positions = np.array([rows[i][1] for i in order], np.int32)
    slots = np.array([slot_ids[b] for b in seq], np.int32)
    n = len(rows)
    q = (RNG.standard_normal((n, q_heads, d)) * q_gain).astype(np.float32)
    k_new = RNG.standard_normal((n, kv_heads, d)).astype(np.float32)
    v_new = RNG.standard_normal((n, kv_heads, d)).astype(np.float32)
    k_cache, v_cache = _make_cache(slots_total, kv_heads, t_max, d)
    decoder.write_kv(k_new, v_new, slots, positions, k_cache, v_cache)
    return q, k_cache, v_cache, slots, positions


ATTN_SHAPES = [(q_heads, kv_heads, d) for q_heads, kv_heads in [(4, 4), (4, 2), (8, 2)] for d in (64, 32, 24, 8, 1)]


@pytest.mark.parametrize("lengths", [(5, 1, 13), (33, 1, 70)])
@pytest.mark.parametrize("q_heads,kv_heads,d", ATTN_SHAPES)
def test_cached_attention_prefill(lengths, q_heads, kv_heads, d):
    slot_ids = (2, 0, 3)
    t_max = max(lengths) + 9
    q, k_cache, v_cache, slots, positions = _prefill(lengths, slot_ids, q_heads, kv_heads, d, t_max)
    scale = 1.0 / math.sqrt(d)
    out = np.full_like(q, np.nan)
    decoder.cached_attention(q, k_cache, v_cache, slots, positions, scale, out)
    np.testing.assert_allclose(out, _ref_cached_attention(q, k_cache, v_cache, slots, positions, scale),
                               atol=2e-6, rtol=1e-5)
    for b, n in enumerate(lengths):  # torch, one causal sequence at a time
        mine = np.nonzero(slots == slot_ids[b])[0]
        mine = mine[np.argsort(positions[mine])]
        kv = slice(0, n)
        expected = _sdpa(q[mine], k_cache[slot_ids[b], :, kv].transpose(1, 0, 2).copy(),
                         v_cache[slot_ids[b], :, kv].transpose(1, 0, 2).copy(), scale, causal=True)
        np.testing.assert_allclose(out[mine], expected, atol=2e-6, rtol=1e-5)


def test_attention_covers_both_paths():
    def work(lengths, q_heads, d):
        return sum(n * (n + 1) // 2 for n in lengths) * q_heads * d

    assert work((5, 1, 13), 8, 64) < decoder.PARALLEL_MIN_WORK <= work((33, 1, 70), 4, 64)


@pytest.mark.parametrize("q_heads,kv_heads,d", [(12, 12, 64), (8, 2, 128), (4, 1, 24), (2, 2, 1)])
def test_cached_attention_decode(q_heads, kv_heads, d):
    lengths, slot_ids = (7, 150, 1), (3, 0, 1)  # 150 keys: several key blocks, a running-max rescale
    t_max = 160
    _, k_cache, v_cache, _, _ = _prefill(lengths, slot_ids, q_heads, kv_heads, d, t_max)
    slots = np.array(slot_ids, np.int32)
    positions = np.array([n - 1 for n in lengths], np.int32)
    q = RNG.standard_normal((3, q_heads, d)).astype(np.float32)
    scale = 1.0 / math.sqrt(d)
    out = np.empty_like(q)
    decoder.cached_attention(q, k_cache, v_cache, slots, positions, scale, out)
    np.testing.assert_allclose(out, _ref_cached_attention(q, k_cache, v_cache, slots, positions, scale),
                               atol=2e-6, rtol=1e-5)
    for r, (n, slot) in enumerate(zip(lengths, slot_ids)):
        expected = _sdpa(q[r:r + 1], k_cache[slot, :, :n].transpose(1, 0, 2).copy(),
                         v_cache[slot, :, :n].transpose(1, 0, 2).copy(), scale, causal=False)
        np.testing.assert_allclose(out[r], expected[0], atol=2e-6, rtol=1e-5)
    # Position 0 sees exactly one key: the output is its value row.
    np.testing.assert_allclose(out[2], np.repeat(v_cache[1, :, 0], q_heads // kv_heads, axis=0), rtol=1e-6)


@pytest.mark.parametrize("d", [64, 24])
def test_cached_attention_large_logits(d):
    # Logits up to about ±80 (e**80 overflows float32): the running maximum keeps every exponent
    # <= 0. Key norms grow along the long sequence, so its maximum keeps rising in later key blocks
    # and the accumulated sum has to be rescaled.
    lengths, slot_ids = (200, 70), (1, 0)
    q, k_cache, v_cache, slots, positions = _prefill(lengths, slot_ids, 4, 2, d, 210)
    k_cache[1, :, :200] *= np.linspace(0.2, 2.0, 200, dtype=np.float32)[None, :, None]
    scale = 1.0 / math.sqrt(d)
    largest = max(np.abs(k_cache[slots[r], h // 2, : positions[r] + 1] @ q[r, h]).max()
                  for r in range(q.shape[0]) for h in range(4)) * scale
    q *= np.float32(80.0 / largest)
    out = np.empty_like(q)
    decoder.cached_attention(q, k_cache, v_cache, slots, positions, scale, out)
    assert np.isfinite(out).all()
    reference = _ref_cached_attention(q, k_cache, v_cache, slots, positions, scale)
    np.testing.assert_allclose(out, reference, atol=2e-4, rtol=1e-4)
    last = positions == 199
    expected = _sdpa(q[last], k_cache[1, :, :200].transpose(1, 0, 2).copy(),
                     v_cache[1, :, :200].transpose(1, 0, 2).copy(), scale, causal=False)
    np.testing.assert_allclose(out[last], expected, atol=2e-4, rtol=1e-4)


def _spikes(n):
    logits = np.full(n, -80.0)
    logits[[0, 64, 130]] = 80.0  # at the first key of blocks
    logits[[65, 199]] = 79.0
    return logits


@pytest.mark.parametrize("pattern", ["rising", "spikes"])
def test_cached_attention_extreme_logit_patterns(pattern):
    # Logits of ±80 placed so that the maximum of a later block (or of a block's first key) is far
    # above the running maximum (2**(s - m) would overflow float32 without the rescale): rising
    # climbs from -80 to +80 along the sequence, spikes puts +80 at the first key of key blocks.
    d, n = 8, 200
    k_cache, v_cache = _make_cache(2, 1, n + 5, d)
    logits = np.linspace(-80.0, 80.0, n) if pattern == "rising" else _spikes(n)
    scale = 1.0 / math.sqrt(d)
    q = np.zeros((n, 2, d), np.float32)
    q[:, :, 0] = 1.0
    k_new = np.zeros((n, 1, d), np.float32)
    k_new[:, 0, 0] = logits / scale
    k_new[:, 0, 1:] = RNG.standard_normal((n, d - 1))  # orthogonal to q: no effect on the scores
    v_new = RNG.standard_normal((n, 1, d)).astype(np.float32)
    slots, positions = np.ones(n, np.int32), np.arange(n, dtype=np.int32)
    decoder.write_kv(k_new, v_new, slots, positions, k_cache, v_cache)
    out = np.empty_like(q)
    decoder.cached_attention(q, k_cache, v_cache, slots, positions, scale, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _ref_cached_attention(q, k_cache, v_cache, slots, positions, scale),
                               atol=2e-5, rtol=1e-4)


def test_cached_attention_out_may_alias_q():
    q, k_cache, v_cache, slots, positions = _prefill((40, 9), (0, 1), 4, 2, 32, 48, slots_total=2)
    expected = _ref_cached_attention(q, k_cache, v_cache, slots, positions, 0.2)
    decoder.cached_attention(q, k_cache, v_cache, slots, positions, 0.2, q)
    np.testing.assert_allclose(q, expected, atol=2e-6, rtol=1e-5)


def test_cached_attention_tied_and_equal_keys():
    # All keys equal: uniform weights, so the output is the mean of the values.
    d, n = 16, 130
    k_cache, v_cache = _make_cache(1, 1, n, d)
    k_cache[0, 0] = 0.25
    v_cache[0, 0] = RNG.standard_normal((n, d)).astype(np.float32)
    q = RNG.standard_normal((1, 3, d)).astype(np.float32)
    out = np.empty_like(q)
    decoder.cached_attention(q, k_cache, v_cache, np.zeros(1, np.int32), np.array([n - 1], np.int32), 0.5, out)
    np.testing.assert_allclose(out[0], np.broadcast_to(v_cache[0, 0].mean(0), (3, d)), atol=1e-6)


# ------------------------------------------------------------------------------------------- write_kv

@pytest.mark.parametrize("n,kv_heads,d", [(1, 2, 64), (5, 3, 7), (300, 4, 64)])
def test_write_kv_round_trip(n, kv_heads, d):
    slots_total, t_max = 3, 128
    pairs = RNG.permutation(slots_total * t_max)[:n]  # distinct (slot, position) pairs
    slots, positions = (pairs // t_max).astype(np.int32), (pairs % t_max).astype(np.int32)
    k_new = RNG.standard_normal((n, kv_heads, d)).astype(np.float32)
    v_new = RNG.standard_normal((n, kv_heads, d)).astype(np.float32)
    k_cache = np.full((slots_total, kv_heads, t_max, d), -7.0, np.float32)
    v_cache = np.full((slots_total, kv_heads, t_max, d), 9.0, np.float32)
    decoder.write_kv(k_new, v_new, slots, positions, k_cache, v_cache)
    np.testing.assert_array_equal(k_cache[slots, :, positions], k_new)
    np.testing.assert_array_equal(v_cache[slots, :, positions], v_new)
    untouched = np.ones((slots_total, t_max), bool)
    untouched[slots, positions] = False
    assert (k_cache.transpose(0, 2, 1, 3)[untouched] == -7.0).all()
    assert (v_cache.transpose(0, 2, 1, 3)[untouched] == 9.0).all()


def test_write_kv_covers_both_paths():
    assert 5 * 3 * 7 < decoder.PARALLEL_MIN_WORK <= 300 * 4 * 64


# ------------------------------------------------------------------------------- float16 KV cache (half.py)

@njit
def _halves(x, native, emulated):
    for i in range(x.size):
        native[i] = half.to_half(x[i])
        emulated[i] = half.to_half_emulated(x[i])


@njit
def _floats(h, native, emulated):
    for i in range(h.size):
        native[i] = half.from_half(h[i])
        emulated[i] = half.from_half_emulated(h[i])


def test_half_conversions_match_numpy():
    # Both the compiled conversion (F16C's instructions where the target has them) and the integer emulation
    # (the path of targets without F16C, run here on any CPU) against numpy's float16: 2 million random bit
    # patterns (every exponent, subnormals, inf, NaN) plus the rounding edges; and back, every one of the
    # 65,536 halves.
    bits = RNG.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    edges = [65504, 65519.996, 65520, 2.0**-14, 2.0**-14 * (1 - 2.0**-11), 2.0**-24, 2.0**-25,
             2.0**-25 * (1 + 2.0**-20), 2.0**-26, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 0.0, np.inf]
    x = np.concatenate([bits.view(np.float32), np.array(edges + [-e for e in edges], np.float32)])
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    native, emulated = np.empty_like(expected), np.empty_like(expected)
    _halves(x, native, emulated)
    nan = np.isnan(x)
    assert nan.any() and (expected[~nan] == 0x7C00).any() and (expected[~nan] < 0x400).any()
    for got in (native, emulated):
        np.testing.assert_array_equal(got[~nan], expected[~nan])
        assert np.isnan(got[nan].view(np.float16)).all()
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    native, emulated = np.empty(65536, np.float32), np.empty(65536, np.float32)
    _floats(every, native, emulated)
    exact = every.view(np.float16).astype(np.float32)
    nan = np.isnan(exact)
    for got in (native, emulated):
        np.testing.assert_array_equal(got[~nan], exact[~nan])
        assert np.isnan(got[nan]).all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("q_heads,kv_heads,d", [(12, 12, 64), (8, 2, 24)])
def test_float16_cache(q_heads, kv_heads, d, bias):
    # write_kv stores numpy's float16 of each key and value; attention over the float16 cache is the float32
    # kernel's over a float32 cache holding those rounded values, bit for bit (the arithmetic is float32
    # either way; only the loads convert). Prefill rows and decode rows, with and without a position bias.
    lengths, slot_ids = (5, 150, 1), (3, 0, 1)
    q, k32, v32, slots, positions = _prefill(lengths, slot_ids, q_heads, kv_heads, d, 160)
    k_new = RNG.standard_normal((positions.size, kv_heads, d)).astype(np.float32) * 5
    v_new = RNG.standard_normal((positions.size, kv_heads, d)).astype(np.float32)
    k16 = np.full(k32.shape, 0x7E00, np.uint16)      # NaN wherever nothing is written
    v16 = np.full(v32.shape, 0x7E00, np.uint16)
    decoder.write_kv(k_new, v_new, slots, positions, k16, v16)
    np.testing.assert_array_equal(k16[slots, :, positions], half.to_half_array(k_new))
    np.testing.assert_array_equal(v16[slots, :, positions], half.to_half_array(v_new))
    k32[slots, :, positions] = k16[slots, :, positions].view(np.float16).astype(np.float32)
    v32[slots, :, positions] = v16[slots, :, positions].view(np.float16).astype(np.float32)
    table = (RNG.standard_normal((q_heads, 160)) * 3).astype(np.float32) if bias else np.zeros((1, 0), np.float32)
    decode = np.array([n - 1 for n in lengths], np.int32), np.array(slot_ids, np.int32)
    for rows_q, at, where in ((q, positions, slots), (q[:3], *decode)):
        expected, out = np.empty_like(rows_q), np.empty_like(rows_q)
        decoder.cached_attention_with_bias(rows_q, k32, v32, where, at, 0.125, table, expected)
        decoder.cached_attention_with_bias(rows_q, k16, v16, where, at, 0.125, table, out)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------ encoder-decoder (T5 bias, beams)

@pytest.mark.parametrize("heads,d", [(4, 64), (8, 24), (2, 1)])
def test_cached_attention_bias(heads, d):
    """The position-biased path of the cached attention kernel vs float64 numpy: score of key t of row r
    gets bias[h, p − t], p = positions[r]; rows at positions 0, a block edge and past several blocks."""
    lengths = (1, 33, 70)
    q, k_cache, v_cache, slots, positions = _prefill(lengths, (2, 0, 3), heads, heads, d, t_max=80)
    bias = (RNG.standard_normal((heads, 80)) * 3).astype(np.float32)
    out = np.empty_like(q)
    decoder.cached_attention_with_bias(q, k_cache, v_cache, slots, positions, 0.125, bias, out)
    ref = np.empty(q.shape)
    for r in range(q.shape[0]):
        p = positions[r]
        for h in range(heads):
            keys = k_cache[slots[r], h, :p + 1].astype(np.float64)
            s = keys @ q[r, h].astype(np.float64) * 0.125 + bias[h, p - np.arange(p + 1)]
            w = np.exp(s - s.max())
            ref[r, h] = w @ v_cache[slots[r], h, :p + 1].astype(np.float64) / w.sum()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("d", [64, 16, 5])
@pytest.mark.parametrize("threads", [1, 2, 7])   # 1, 2: a task per sequence (3 heads); 7: two (2 + 1 heads)
def test_encoder_attention_with_bias(d, threads):
    """The encoder attention kernel's T5 path (scale 1, relative bias by offset) vs float64 numpy."""
    from tinybert.kernels.attention import NO_QUANTIZED_TABLES, attention_with_bias

    heads, lengths = 3, (1, 9, 30, 7)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    t = int(starts[-1])
    q, k, v = (RNG.standard_normal((t, heads, d)).astype(np.float32) for _ in range(3))
    center = max(lengths) - 1
    bias = (RNG.standard_normal((heads, 2 * center + 1)) * 3).astype(np.float32)
    qkv = np.concatenate([q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1)], axis=1)
    flat_out = np.empty((t, heads * d), dtype=np.float32)
    attention_with_bias(qkv, starts, np.ones(t, np.uint8), heads, 1.0, bias, center,
                        np.zeros((0, 2, 1, 16), np.float32), *NO_QUANTIZED_TABLES, -1, -1, np.zeros(0, np.int32), 0,
                        flat_out, threads)
    out = flat_out.reshape(t, heads, d)
    for b in range(len(lengths)):
        s0, s1 = starts[b], starts[b + 1]
        for i in range(s0, s1):
            for h in range(heads):
                s = k[s0:s1, h].astype(np.float64) @ q[i, h] + bias[h, center + np.arange(s0, s1) - i]
                w = np.exp(s - s.max())
                np.testing.assert_allclose(out[i, h], w @ v[s0:s1, h] / w.sum(), atol=2e-5, rtol=1e-4)


def _log_buckets(query_minus_key, buckets, max_position):
    """transformers' DeBERTa-v2 make_log_bucket_position, in float64 numpy (an independent rewrite)."""
    rel = np.asarray(query_minus_key, dtype=np.float64)
    mid = buckets // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    log_pos = np.ceil(np.log(abs_pos / mid) / np.log((max_position - 1) / mid) * (mid - 1)) + mid
    return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int64)


@pytest.mark.parametrize("threads", [1, 7])
@pytest.mark.parametrize("terms", ["both", "c2p", "p2c"])
@pytest.mark.parametrize("buckets", [0, 8])       # 8: log buckets from distance 4 on (rel not linear)
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_attention_with_content_bias(threads, terms, buckets, masked):
    """The encoder attention kernel's DeBERTa path vs float64 numpy: score = (q_i·k_j + q_i·Kr[m] + k_j·Qr[m]) ·
    scale with m = span + bucket(i − j), Kr / Qr per-head tables packed by pack_position_tables, masked keys,
    each term alone, and sequences both shorter and longer than the linear range of the buckets."""
    from tinybert.kernels.attention import NO_QUANTIZED_TABLES, attention_with_bias, pack_position_tables

    heads, d, span, lengths = 3, 16, 12, (1, 9, 30, 7, 40)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    t = int(starts[-1])
    q, k, v = (RNG.standard_normal((t, heads, d)).astype(np.float32) for _ in range(3))
    kr, qr = (RNG.standard_normal((heads, 2 * span, d)).astype(np.float32) for _ in range(2))
    center = max(lengths) - 1
    qmk = np.arange(center, -center - 1, -1)                  # i − j for rel[center + j − i]
    rel = np.clip((_log_buckets(qmk, buckets, 64) if buckets else qmk) + span, 0, 2 * span - 1).astype(np.int32)
    off_line = np.flatnonzero(rel != rel[center] - np.arange(-center, center + 1)) - center
    linear_span = int(np.abs(off_line).min())
    assert linear_span < max(lengths)                   # clipped at span 12 < 39, or bucketed: both paths run
    mask = np.ones(t, np.uint8)
    if masked:
        mask[[5, 20, 21, 60]] = 0
    tables = {"both": (kr, qr), "c2p": (kr, None), "p2c": (None, qr)}[terms]
    c2p_at = 0 if terms in ("both", "c2p") else -1
    p2c_at = heads if terms == "both" else (0 if terms == "p2c" else -1)
    qkv = np.concatenate([q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1)], axis=1)
    flat_out = np.empty((t, heads * d), dtype=np.float32)
    scale = 1 / math.sqrt(3 * d)
    attention_with_bias(qkv, starts, mask, heads, scale, np.zeros((1, 0), np.float32), center,
                        pack_position_tables(*tables, scale), *NO_QUANTIZED_TABLES, c2p_at, p2c_at, rel, linear_span,
                        flat_out, threads)
    out = flat_out.reshape(t, heads, d)
    for b in range(len(lengths)):
        s0, s1 = starts[b], starts[b + 1]
        keys = np.arange(s0, s1)[mask[s0:s1] == 1]
        for i in range(s0, s1):
            for h in range(heads):
                m = rel[center + keys - i]
                s = k[keys, h].astype(np.float64) @ q[i, h]
                if c2p_at >= 0:
                    s += kr[h, m].astype(np.float64) @ q[i, h]
                if p2c_at >= 0:
                    s += np.einsum("jd,jd->j", k[keys, h].astype(np.float64), qr[h, m])
                w = np.exp((s - s.max()) * scale)
                np.testing.assert_allclose(out[i, h], w @ v[keys, h] / w.sum(), atol=2e-5, rtol=1e-4)


def _linear_deberta_case(d):
    """Five packed sequences (1 to 128 tokens), 2 heads of d, random q, k, v and Kr, Qr tables of span 128, and
    the linear index: (heads, span, lengths, starts, t, q, k, v, kr, qr, center, rel, qkv)."""
    heads, span, lengths = 2, 128, (128, 1, 77, 6, 40)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    t = int(starts[-1])
    q, k, v = (RNG.standard_normal((t, heads, d)).astype(np.float32) for _ in range(3))
    kr, qr = ((RNG.standard_normal((heads, 2 * span, d)) / 4).astype(np.float32) for _ in range(2))
    center = max(lengths) - 1
    rel = (span - np.arange(-center, center + 1)).astype(np.int32)
    qkv = np.concatenate([q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1)], axis=1)
    return heads, span, lengths, starts, t, q, k, v, kr, qr, center, rel, qkv


def _disentangled_reference(q, keys, values, kr, qr, scale):
    """One query's DeBERTa attention output in float64: scores q·k_j + q·Kr_j + k_j·Qr_j (Kr, Qr: the table rows
    of each key's distance), scaled, softmax, times the values."""
    k64 = keys.astype(np.float64)
    s = k64 @ q + kr.astype(np.float64) @ q + np.einsum("jd,jd->j", k64, qr)
    w = np.exp((s - s.max()) * scale)
    return w @ values / w.sum()


@pytest.mark.parametrize("d", [64, 24])
def test_encoder_attention_with_linear_content_bias(d):
    """The skewed DeBERTa path (rel linear over the sequence, no masked key: the micro-kernel adds both terms as it
    makes the scores) vs float64 numpy, with sequences past one panel pair of the tables."""
    from tinybert.kernels.attention import NO_QUANTIZED_TABLES, attention_with_bias, pack_position_tables

    heads, span, lengths, starts, t, q, k, v, kr, qr, center, rel, qkv = _linear_deberta_case(d)
    out = np.empty((t, heads * d), dtype=np.float32)
    scale = 1 / math.sqrt(3 * d)
    attention_with_bias(qkv, starts, np.ones(t, np.uint8), heads, scale, np.zeros((1, 0), np.float32), center,
                        pack_position_tables(kr, qr, scale), *NO_QUANTIZED_TABLES, 0, heads, rel, center + 1, out, 2)
    out = out.reshape(t, heads, d)
    for b in range(len(lengths)):
        s0, s1 = starts[b], starts[b + 1]
        keys = np.arange(s0, s1)
        for i in range(s0, s1):
            for h in range(heads):
                m = span + (i - keys)
                expected = _disentangled_reference(q[i, h], k[keys, h], v[keys, h], kr[h, m], qr[h, m], scale)
                np.testing.assert_allclose(out[i, h], expected, atol=2e-5, rtol=1e-4)


def _quantized_rows(x):
    """Per row of x (float32 [..., d]): round(x / a) and a = max |x| / 127, as the 8-bit position tile's inputs."""
    a = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
    a = np.where(a > 0, a, np.float32(1)).astype(np.float32)
    return np.floor(x * (np.float32(1) / a) + np.float32(128.5)) - 128, a[..., 0]


@pytest.mark.parametrize("d", [64, 24])
def test_encoder_attention_with_8bit_position_terms(d):
    """The 8-bit position tile (int8 DeBERTa on VNNI; emulated elsewhere) vs float64 numpy of the same 8-bit
    arithmetic: q rows and keys rounded per row, the position tables per head (quantize_position_tables), products
    exact in integers, q · k in float. And against the unquantized scores, within the rounding's error. A
    sequence longer than the index's linear span takes the float path, and the others still the 8-bit one."""
    from tinybert.kernels.attention import (
        NR,
        TABLE_RIGHT,
        attention_with_bias,
        pack_position_tables,
        quantize_position_tables,
    )

    heads, span, lengths, starts, t, q, k, v, kr, qr, center, rel, qkv = _linear_deberta_case(d)
    scale = 1 / math.sqrt(3 * d)
    packed = pack_position_tables(kr, qr, scale)
    t8, corr, tscale = quantize_position_tables(packed)
    top = packed.shape[1] * NR - TABLE_RIGHT - 1
    # Table row m of head table g, from the bytes: column top − m.
    cols = top - np.arange(2 * span)
    int_tables = t8[:, cols // NR, :, cols % NR, :].reshape(2 * span, 2 * heads, d).transpose(1, 0, 2)
    assert np.array_equal(corr[:, cols], -128 * int_tables.astype(np.int32).sum(-1))
    out = np.empty((t, heads * d), dtype=np.float32)
    attention_with_bias(qkv, starts, np.ones(t, np.uint8), heads, scale, np.zeros((1, 0), np.float32), center,
                        packed, t8, corr, tscale, 0, heads, rel, 100, out, 2)
    out = out.reshape(t, heads, d)
    log2e = 1.4426950408889634
    qq, qa = _quantized_rows(q)
    kq, ka = _quantized_rows(k)
    worst = 0.0
    for b in range(len(lengths)):
        s0, s1 = starts[b], starts[b + 1]
        keys = np.arange(s0, s1)
        for i in range(s0, s1):
            for h in range(heads):
                m = span + (i - keys)
                c2p = int_tables[h, m].astype(np.float64) @ qq[i, h]
                p2c = np.einsum("jd,jd->j", kq[keys, h].astype(np.float64), int_tables[heads + h, m])
                s = (k[keys, h].astype(np.float64) @ q[i, h] * scale * log2e + qa[i, h] * float(tscale[h]) * c2p
                     + ka[keys, h] * float(tscale[heads + h]) * scale * log2e * p2c)
                w = np.exp2(s - s.max())
                eight_bit = w @ v[keys, h] / w.sum()
                exact = _disentangled_reference(q[i, h], k[keys, h], v[keys, h], kr[h, m], qr[h, m], scale)
                np.testing.assert_allclose(out[i, h], eight_bit if s1 - s0 <= 100 else exact, atol=2e-5, rtol=1e-4)
                worst = max(worst, float(np.abs(out[i, h] - exact).max()))
    print(f"8-bit position terms, d = {d}: largest output error vs float64 {worst:.2e}")
    assert worst < 2e-2


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_copy_slots(dtype):
    cache = RNG.standard_normal((2, 6, 3, 10, 4)).astype(np.float32)
    if dtype == np.uint16:
        cache = half.to_half_array(cache)
    before = cache.copy()
    dest, src = np.array([4, 1, 5]), np.array([0, 0, 2])
    decoder.copy_slots(cache, dest, src, 7)
    expected = before.copy()
    expected[:, dest, :, :7] = before[:, src, :, :7]
    np.testing.assert_array_equal(cache, expected)


def test_runtime_knows_no_hugging_face_rope_names():
    """HF config parsing is the converter's (convert/rope.py): the runtime reads the canonical dict only."""
    from pathlib import Path

    import tinybert

    assert not hasattr(rope, "rope_from_hf_config")
    names = ("rope_scaling", "rope_parameters", "rope_theta", "rope_type")
    for path in Path(tinybert.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not [name for name in names if name in text], path


def test_encoder_attention_without_avx512(tmp_path):
    """The attention kernels compiled for AVX2 (16 vector registers: the micro-kernels split their tiles into
    panels and, for DeBERTa's skewed tile, rows in threes) pass the encoder attention tests above."""
    import os
    import subprocess
    import sys

    code = ("import sys, pytest; from tinybert.kernels import cpu; assert not cpu.WIDE_REGISTERS; "
            f"sys.exit(pytest.main(['-q', '-n', '0', '-p', 'no:cacheprovider', {__file__!r}, "
            "'-k', 'test_encoder_attention_with and not avx512']))")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2,+popcnt,+bmi2", "PYTEST_ADDOPTS": ""}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout, run.stdout[-3000:]
