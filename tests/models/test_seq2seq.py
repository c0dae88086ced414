"""Encoder-decoder forward pass (T5 v1.0 / v1.1, mT5, BART, mBART, Marian, M2M-100) against transformers on small
random models.

References: transformers' encoder output and full-recompute decoder logits on the same weights, fed
through the converter from ``state_dict()``. Never tinybert's own numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from tinybert_convert.seq2seq import seq2seq_config, seq2seq_tensors  # noqa: E402

from tinybert.errors import UnsupportedModelError  # noqa: E402
from tinybert.kernels.half import to_half_array  # noqa: E402
from tinybert.layers import fairseq_sinusoidal_table, relative_position_bucket, sinusoidal_table  # noqa: E402
from tinybert.models.seq2seq import Seq2SeqModel  # noqa: E402

VOCAB = 1000
TOL = 1e-4


def _randomise(model, seed: int) -> None:
    """Random values also for what a fresh model initialises to constants (norms, biases, final_logits_bias)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") and "relative_attention_bias" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(0.5 * torch.randn(model.final_logits_bias.shape, generator=gen))


def _build(kind: str):
    torch.manual_seed(0)
    tf = transformers
    if kind in ("t5-v1.0", "t5-v1.1"):
        v11 = kind == "t5-v1.1"
        cfg = tf.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                          num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=24,
                          feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = tf.T5ForConditionalGeneration(cfg)
        if v11:
            # v1.1 checkpoints carry their own LM head (transformers 5 ties it at init: untie it here)
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64) * 0.1)
    elif kind == "mt5":
        cfg = tf.MT5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                           num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=24,
                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = tf.MT5ForConditionalGeneration(cfg)
        # mT5 checkpoints carry their own LM head and config.json says so (transformers 5 ties it at init)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64) * 0.1)
    elif kind == "mbart":
        cfg = tf.MBartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                             decoder_ffn_dim=128, max_position_embeddings=40, scale_embedding=True,
                             decoder_start_token_id=2)
        model = tf.MBartForConditionalGeneration(cfg)
    elif kind == "m2m_100":
        cfg = tf.M2M100Config(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                              decoder_ffn_dim=128, max_position_embeddings=40)
        model = tf.M2M100ForConditionalGeneration(cfg)
    elif kind == "bart":
        cfg = tf.BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                            decoder_ffn_dim=128, max_position_embeddings=40, scale_embedding=True)
        model = tf.BartForConditionalGeneration(cfg)
    else:
        cfg = tf.MarianConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                              decoder_ffn_dim=128, max_position_embeddings=40, scale_embedding=True,
                              activation_function="swish", pad_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 1,
                              eos_token_id=0, forced_eos_token_id=0)
        model = tf.MarianMTModel(cfg)
    _randomise(model, 1)
    model.eval()
    hf = model.config.to_dict()
    if kind in ("t5-v1.1", "mt5"):
        hf["tie_word_embeddings"] = False   # as v1.1's and mT5's config.json say
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = seq2seq_config(hf)
    tensors = seq2seq_tensors(cfg, state)
    assert ("lm_head.weight" in tensors) == (kind in ("t5-v1.1", "mt5"))
    ours = Seq2SeqModel(cfg, tensors)
    return model, ours, cfg


KINDS = ("t5-v1.0", "t5-v1.1", "mt5", "bart", "mbart", "marian", "m2m_100")


@pytest.fixture(scope="module", params=KINDS)
def models(request):
    return _build(request.param)


def _batch(seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB - 2, size=n).astype(np.int32) for n in (7, 30, 13)]


def _padded(seqs: list[np.ndarray], pad: int):
    longest = max(len(s) for s in seqs)
    ids = np.full((len(seqs), longest), pad, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = s
        mask[b, :len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _packed(seqs: list[np.ndarray]):
    starts = np.zeros(len(seqs) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(s) for s in seqs])
    return np.concatenate(seqs).astype(np.int32), starts


def test_encoder_matches_transformers(models):
    model, ours, cfg = models
    seqs = _batch()
    ids, mask = _padded(seqs, cfg.pad_token_id or 0)
    with torch.no_grad():
        ref = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    packed, starts = _packed(seqs)
    got = ours.encode(packed, starts)
    for b, s in enumerate(seqs):
        np.testing.assert_allclose(got[starts[b]:starts[b + 1]], ref[b, :len(s)], atol=TOL, rtol=0)


def test_decoder_steps_match_full_recompute(models):
    model, ours, cfg = models
    seqs = _batch()
    ids, mask = _padded(seqs, cfg.pad_token_id or 0)
    rng = np.random.default_rng(7)
    steps = 12
    dec = np.empty((len(seqs), steps), dtype=np.int64)
    dec[:, 0] = cfg.decoder_start_token_id
    dec[:, 1:] = rng.integers(2, VOCAB - 2, size=(len(seqs), steps - 1))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.from_numpy(dec)).logits.numpy()
    packed, starts = _packed(seqs)
    state = ours.start(ours.encode(packed, starts), starts, length=steps)
    slots = np.arange(len(seqs), dtype=np.int32)
    for t in range(steps):
        logits = ours.step(state, dec[:, t].astype(np.int32), slots, np.full(len(seqs), t, dtype=np.int32))
        np.testing.assert_allclose(logits, ref[:, t], atol=TOL, rtol=0, err_msg=f"step {t}")


def test_float16_cache_stays_close_to_transformers(models):
    """The float16 KV cache (int8 models' default) on the float32 weights: keys and values of self- and
    cross-attention rounded to float16, every step's logits still within 100x the float32 tolerance of
    transformers, and the cross-attention cache the float16 rounding of the float32 one."""
    model, ours, cfg = models
    assert ours.kv_dtype == "float32"
    seqs = _batch()
    ids, mask = _padded(seqs, cfg.pad_token_id or 0)
    steps = 8
    dec = np.empty((len(seqs), steps), dtype=np.int64)
    dec[:, 0] = cfg.decoder_start_token_id
    dec[:, 1:] = np.random.default_rng(8).integers(2, VOCAB - 2, size=(len(seqs), steps - 1))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.from_numpy(dec)).logits.numpy()
    packed, starts = _packed(seqs)
    enc = ours.encode(packed, starts)
    full = ours.start(enc, starts, length=steps)
    try:
        ours.kv_dtype = "float16"
        state = ours.start(enc, starts, length=steps)
    finally:
        ours.kv_dtype = "float32"
    assert state.dtype == "float16" and state.cross_k.dtype == np.uint16
    np.testing.assert_array_equal(state.cross_k, to_half_array(full.cross_k))
    slots = np.arange(len(seqs), dtype=np.int32)
    worst = 0.0
    for t in range(steps):
        logits = ours.step(state, dec[:, t].astype(np.int32), slots, np.full(len(seqs), t, dtype=np.int32))
        worst = max(worst, float(np.abs(logits - ref[:, t]).max()))
    assert 0 < worst <= 100 * TOL, worst


def test_decoder_prefill_rows_match_steps(models):
    """Several positions of one slot in one call (a prefill) give the same logits as one at a time."""
    model, ours, cfg = models
    seqs = _batch()[:1]
    packed, starts = _packed(seqs)
    enc = ours.encode(packed, starts)
    dec = np.array([cfg.decoder_start_token_id, 5, 9, 17, 3], dtype=np.int32)
    state = ours.start(enc, starts, length=8)
    together = ours.step(state, dec, np.zeros(5, np.int32), np.arange(5, dtype=np.int32))
    state = ours.start(enc, starts, length=8)
    apart = np.concatenate([ours.step(state, dec[t:t + 1], np.zeros(1, np.int32), np.array([t], np.int32))
                            for t in range(5)])
    np.testing.assert_allclose(together, apart, atol=1e-5, rtol=0)


def test_relative_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-300, 300)
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (16, 24), (8, 20)):
            ref = T5Attention._relative_position_bucket(torch.from_numpy(rel), bidirectional, buckets, dist).numpy()
            np.testing.assert_array_equal(relative_position_bucket(rel, bidirectional, buckets, dist), ref)


def test_sinusoidal_table_matches_transformers():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    for n, dim in ((40, 64), (17, 33)):
        ref = MarianSinusoidalPositionalEmbedding(n, dim).create_weight().numpy()
        np.testing.assert_array_equal(sinusoidal_table(n, dim), ref)


def test_fairseq_sinusoidal_table_matches_transformers():
    """M2M-100 / NLLB positions: fairseq's table (tensor2tensor frequencies, zero padding row) as transformers
    builds it, rounded alike in float32."""
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100SinusoidalPositionalEmbedding

    # NLLB's width 1024: torch's float32 exp is off by one unit in the last place for a few frequencies, which
    # position 1025 multiplies into 1.5e-5.
    for n, dim, pad, tol in ((1026, 64, 1, 1e-7), (300, 33, 1, 1e-7), (50, 16, 3, 1e-7), (1026, 1024, 1, 2e-5)):
        ref = M2M100SinusoidalPositionalEmbedding.get_embedding(n, dim, pad).numpy()
        np.testing.assert_allclose(fairseq_sinusoidal_table(n, dim, pad), ref, atol=tol, rtol=0)


def test_source_pads_take_fairseq_positions(models):
    """A pad token inside a source (M2M-100 numbers only the non-pad tokens and gives pads the zero row) and in
    a decoder row: as transformers computes them (its incremental positions for the decoder)."""
    model, ours, cfg = models
    if cfg.position_padding_idx is None:
        return
    pad = cfg.pad_token_id
    src = np.array([5, 9, pad, 17, 3, pad, 44], dtype=np.int32)
    with torch.no_grad():
        ref = model.get_encoder()(input_ids=torch.from_numpy(src[None].astype(np.int64))).last_hidden_state[0]
    starts = np.array([0, src.size])
    enc = ours.encode(src, starts)
    np.testing.assert_allclose(enc, ref.numpy(), atol=TOL, rtol=0)
    dec = [cfg.decoder_start_token_id, 7, pad, 11, pad]
    state = ours.start(enc, starts, length=8)
    got = ours.step(state, np.array(dec, np.int32), np.zeros(len(dec), np.int32), np.arange(len(dec), dtype=np.int32))
    past, hidden = None, (ref[None],)
    for t, token in enumerate(dec):        # one token at a time with the cache, as generate() decodes
        with torch.no_grad():
            out = model(encoder_outputs=hidden, decoder_input_ids=torch.tensor([[token]]), cache=past,
                        use_cache=True)
        past = out.past_key_values
        np.testing.assert_allclose(got[t], out.logits[0, 0].numpy(), atol=TOL, rtol=0, err_msg=f"step {t}")


def test_unsupported_configs():
    with pytest.raises(UnsupportedModelError):
        seq2seq_config({"model_type": "pegasus"})
    with pytest.raises(UnsupportedModelError):
        seq2seq_config({"model_type": "t5", "feed_forward_proj": "gated-gelu-x"})
    with pytest.raises(UnsupportedModelError):
        seq2seq_config({"model_type": "bart", "architectures": ["BartForSequenceClassification"]})


def test_causal_bias_grows_by_doubling(monkeypatch):
    """A decode step asks for the bias of one position more than the last: the table is rebuilt O(log n) times
    over n steps, and always holds the bias of every position asked for. (Rebuilt at every step, its slightly
    longer arrays grew the heap by ~2 MB per 2,000-step translation with a fresh model each time, until
    fuzz.configs ran out of address space.)"""
    import dataclasses

    from fuzz.seeds import seq2seq_config
    from tinybert import format as fmt
    from tinybert.layers import attention

    cfg = dataclasses.replace(seq2seq_config(), max_positions=4097).decoder_block
    table = np.random.default_rng(0).standard_normal((cfg.relative_buckets, cfg.num_heads)).astype(np.float32)
    positions = attention.Positions(cfg, {fmt.stack_prefix("decoder") + fmt.REL_BIAS: table}, "decoder")
    builds = []
    real = attention.relative_position_bucket
    monkeypatch.setattr(attention, "relative_position_bucket", lambda *a: builds.append(a) or real(*a))
    for upto in range(1, 2001):
        bias = positions.causal_bias(upto)
        assert bias.shape[1] >= upto
    assert len(builds) <= 7, len(builds)            # 64, 128, ..., 2048
    assert bias.shape[1] <= 4097
    expected = table[real(-np.arange(2000), False, cfg.relative_buckets, cfg.relative_max_distance)].T
    np.testing.assert_array_equal(bias[:, :2000], expected)
    assert positions.causal_bias(4097).shape[1] == 4097          # doubling stops at max_positions ...
    assert positions.causal_bias(4100).shape[1] == 4100          # ... but never gives fewer positions than asked


def test_language_and_position_fields_are_validated():
    """The multilingual fields of a file's config: a file written before them (keys absent) loads meaning none;
    bad codes, ids, layouts and padding indices are ModelFileErrors before anything is allocated."""
    from tinybert.config import Seq2SeqConfig
    from tinybert.errors import ModelFileError

    cfg = seq2seq_config({**transformers.M2M100Config(vocab_size=VOCAB, d_model=64, encoder_layers=1,
                                                      decoder_layers=1, encoder_attention_heads=4,
                                                      decoder_attention_heads=4, encoder_ffn_dim=32,
                                                      decoder_ffn_dim=32).to_dict(),
                          "architectures": ["M2M100ForConditionalGeneration"]})
    assert cfg.position_padding_idx == 1 and cfg.positions == "sinusoidal" and cfg.pre_norm
    data = cfg.to_dict()
    old = {k: v for k, v in data.items() if k not in ("position_padding_idx", "language_codes", "language_position",
                                                      "source_eos_token_id")}
    loaded = Seq2SeqConfig.from_dict(old)
    assert loaded.position_padding_idx is None and loaded.language_codes == {} and not loaded.multilingual
    good = Seq2SeqConfig.from_dict({**data, "language_codes": {"fra_Latn": 7}, "source_eos_token_id": 2})
    assert good.multilingual and good.language_codes == {"fra_Latn": 7}
    for bad, words in [({"language_codes": {"fra_Latn": VOCAB}, "source_eos_token_id": 2}, "language_codes"),
                       ({"language_codes": {"": 3}, "source_eos_token_id": 2}, "language_codes"),
                       ({"language_codes": {"fra_Latn": "3"}, "source_eos_token_id": 2}, "language_codes"),
                       ({"language_codes": {f"c{i}": 3 for i in range(5000)}, "source_eos_token_id": 2}, "4096"),
                       ({"language_codes": {"fra_Latn": 3}}, "source_eos_token_id"),
                       ({"language_codes": ["fra_Latn"]}, "language_codes"),
                       ({"language_position": "middle"}, "language_position"),
                       ({"position_padding_idx": 1 << 20}, "position_padding_idx"),
                       ({"position_padding_idx": 1, "pad_token_id": None}, "pad_token_id"),
                       ({"position_padding_idx": 1, "positions": "learned"}, "sinusoidal")]:
        with pytest.raises(ModelFileError, match=words):
            Seq2SeqConfig.from_dict({**data, **bad})
