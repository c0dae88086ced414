"""Real weights: all-MiniLM-L6-v2 over the 1,000 shared sentences against transformers fp32."""

from __future__ import annotations

import numpy as np
import pytest

import tinybert


@pytest.fixture(scope="module")
def encoders(minilm_files):
    return {dtype: tinybert.Encoder(path) for dtype, path in minilm_files.items()}


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_every_sentence(encoders, sentences, reference_embeddings):
    got = encoders["fp32"].encode(sentences)
    cos = _cosines(got, reference_embeddings)
    print(f"\nMiniLM fp32 cosine: min {cos.min():.7f} mean {cos.mean():.7f}")
    assert cos.min() >= 0.99999


def test_int8_fidelity(encoders, sentences, reference_embeddings):
    got = encoders["int8"].encode(sentences)
    cos = _cosines(got, reference_embeddings)
    p01 = np.percentile(cos, 1)
    print(f"\nMiniLM int8 cosine: mean {cos.mean():.5f} p01 {p01:.5f} min {cos.min():.5f}")
    assert cos.mean() >= 0.999
    assert p01 >= 0.995


def test_12_bit_inputs_everywhere(minilm_dir, tmp_path, sentences, reference_embeddings):
    """``mixed_activations=False``: no layer gets 8-bit inputs, and the embeddings are closer still."""
    from safetensors import safe_open
    from tinybert_convert import convert

    path = convert(minilm_dir, tmp_path / "act12.safetensors", mixed_activations=False)
    with safe_open(str(path), framework="numpy") as fh:
        assert not [name for name in fh.keys() if name.endswith(".smooth")]
    cos = _cosines(tinybert.Encoder(path).encode(sentences), reference_embeddings)
    print(f"\nMiniLM int8, 12-bit inputs: mean {cos.mean():.5f} p01 {np.percentile(cos, 1):.5f}")
    assert cos.mean() >= 0.9995 and np.percentile(cos, 1) >= 0.999


def test_defaults_follow_sentence_transformers(encoders, sentences):
    enc = encoders["fp32"]
    assert enc.pooling == {"mode": "mean", "normalize": True}
    assert enc.config.max_length == 256
    vectors = enc.encode(sentences[:8])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = enc.encode(sentences[:8], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), vectors, atol=1e-6)


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len"])
def test_other_pooling_modes(encoders, sentences, hf_tokenizer, mode):
    """Pooling modes against the same pooling written by hand on transformers' hidden states."""
    enc = encoders["fp32"]
    texts = sentences[10:14]
    batch = hf_tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    hidden = enc.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"][:, :, None].astype(np.float64)
    if mode == "cls":
        expected = hidden[:, 0]
    elif mode == "max":
        expected = np.where(mask > 0, hidden, -1e9).max(1)
    else:
        expected = (hidden * mask).sum(1) / np.sqrt(mask.sum(1))
    got = enc.encode(texts, pooling=mode, normalize=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_padding_invariance(encoders, sentences):
    short = min(sentences, key=len)
    longest = sorted(sentences, key=len)[-31:]
    for enc in encoders.values():
        alone = enc.encode([short])[0]
        in_batch = enc.encode(longest + [short])[-1]
        assert np.abs(alone - in_batch).max() <= 1e-5


def test_batch_size_does_not_change_results(encoders, sentences):
    enc = encoders["int8"]
    a = enc.encode(sentences[:40], batch_size=7)
    b = enc.encode(sentences[:40], batch_size=40)
    assert np.abs(a - b).max() <= 1e-5


def test_tokenizer_parity(encoders, sentences, hf_tokenizer):
    tok = encoders["int8"].tokenizer
    for text, ours in zip(sentences, tok.encode_batch(sentences)):
        theirs = hf_tokenizer(text, truncation=True, max_length=256)["input_ids"]
        assert ours.ids == theirs, text


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_encoder_is_the_post_norm_kernel_sequence(encoders, sentences, dtype):
    """The data-configured block runs exactly the kernels the hand-written post-norm encoder ran (cff4809),
    in the same order on the same arrays: bit-identical hidden states, int8 and fp32."""
    import numba

    from tinybert.kernels.activations import ACTIVATIONS
    from tinybert.kernels.attention import attention
    from tinybert.kernels.embeddings import embed
    from tinybert.kernels.norm import add_layer_norm, layer_norm
    from tinybert.layers import FFN_ROWS
    from tinybert.models.encoder import position_ids
    from tinybert.tokenizer import pack

    model = encoders[dtype].runner.model
    batch = pack(encoders[dtype].tokenizer.encode_batch(sentences[:40]))
    ids, starts = batch.ids, batch.starts
    types, mask = np.zeros_like(ids), np.ones(ids.size, dtype=np.uint8)
    e = model.embeddings
    x = np.empty((ids.size, e.tokens.shape[1]), dtype=np.float32)
    embed(ids, position_ids(model.config, ids, starts), types, e.tokens, e.token_scale, np.float32(1), e.positions,
          e.types, x)
    layer_norm(x, e.norm.weight, e.norm.bias, e.norm.eps, x)
    threads = numba.get_num_threads()
    for block in model.blocks:
        context = np.empty_like(x)
        attention(block.attn.qkv(x, threads), starts, mask, model.config.num_heads, context, threads)
        y = block.attn.out(context, threads)
        add_layer_norm(y, x, block.attn_norm.weight, block.attn_norm.bias, block.attn_norm.eps, y)
        x = y
        for r0 in range(0, x.shape[0], FFN_ROWS):
            rows = x[r0:r0 + FFN_ROWS]
            hidden = block.mlp.up(rows, threads)
            ACTIVATIONS[model.config.activation](hidden)
            n = block.mlp_norm
            add_layer_norm(block.mlp.down(hidden, threads), rows, n.weight, n.bias, n.eps, rows)
    assert np.array_equal(model(ids, types, starts, mask), x)
