"""An EmbeddingGemma-style embedder against sentence-transformers and transformers on the same random weights: a
bidirectional Gemma3TextModel (use_bidirectional_attention: every layer attends both ways, its sliding layers to
the keys within ±4 of the query, a window shorter than the texts) saved as a sentence-transformers folder with mean
Pooling, two Dense modules, Normalize and EmbeddingGemma's prompts (conftest.embedding_gemma), converted and opened
with ``tinybert.Encoder``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import EMBEDDING_GEMMA_PROMPTS

import tinybert
from tinybert.config import DecoderConfig
from tinybert.errors import ModelFileError, ModelKindError, UnsupportedModelError


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    # the shared sentences (most longer than the ±4 window), one token, and one cut at max_seq_length 100
    return sentences[:40] + ["a", " ".join(sentences[200:240])]


def test_config_is_bidirectional_with_symmetric_windows(embedding_gemma):
    _, files, _, model = embedding_gemma
    enc = tinybert.Encoder(files["fp32"])
    assert model.config.sliding_window == 5        # transformers: config.json's 8 // 2 + 1, an exclusive bound
    cfg = enc.config
    assert not cfg.causal and not cfg.block.causal
    assert cfg.layer_windows == (5, 0, 5) and cfg.local_rope["theta"] == 10_000.0 and cfg.rope["theta"] == 1e6
    assert cfg.to_dict()["causal"] is False
    assert enc.pooling == {"mode": "mean", "normalize": True} and enc.dimension == 48
    assert enc.prompts == {**EMBEDDING_GEMMA_PROMPTS}


@pytest.mark.parametrize("prompt_name", [None, "query", "document"])
def test_fp32_matches_sentence_transformers(embedding_gemma, texts, prompt_name):
    model, files, _, _ = embedding_gemma
    ref = model.encode(texts, prompt_name=prompt_name, batch_size=16)
    enc = tinybert.Encoder(files["fp32"])
    assert enc.max_seq_length == model.max_seq_length == 100 < len(model.tokenizer(texts[-1])["input_ids"])
    got = enc.encode(texts, prompt_name=prompt_name, batch_size=16)
    assert got.shape == ref.shape == (len(texts), 48)
    worst = float(np.abs(got - ref).max())
    print(f"embeddinggemma fp32 (prompt {prompt_name}): max |embedding - sentence-transformers| {worst:.2e}")
    assert worst <= 1e-4
    # batches of one and of all give the same vectors (packed rows, no padding)
    np.testing.assert_allclose(enc.encode(texts[:8], prompt_name=prompt_name, batch_size=1), got[:8], atol=1e-6)


def test_encode_query_and_document_match(embedding_gemma, texts):
    model, files, _, _ = embedding_gemma
    enc = tinybert.Encoder(files["fp32"])
    np.testing.assert_allclose(enc.encode_query(texts[:8]), model.encode_query(texts[:8]), atol=1e-4)
    np.testing.assert_allclose(enc.encode_document(texts[:8]), model.encode_document(texts[:8]), atol=1e-4)
    np.testing.assert_allclose(enc.encode(texts[:8], truncate_dim=16), model.encode(texts[:8], truncate_dim=16),
                               atol=1e-4)


def test_left_padding_in_sentence_transformers_gives_the_same_vectors(embedding_gemma, texts):
    """Bidirectional attention sees no padding (it is masked as keys) and the rotary angles shift alike for
    every token of a left-padded row: sentence-transformers padding on the left (as Gemma tokenizers may) gives
    the vectors tinybert gives without padding."""
    model, files, _, _ = embedding_gemma
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left"
    try:
        ref = model.encode(texts, batch_size=16)
    finally:
        model.tokenizer.padding_side = side
    np.testing.assert_allclose(tinybert.Encoder(files["fp32"]).encode(texts, batch_size=16), ref, atol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_matches_transformers(embedding_gemma, texts, side):
    """Last hidden states of padded ids equal transformers' Gemma3TextModel (final norm applied) on either
    padding side: a bidirectional decoder masks padding as keys, as an encoder does."""
    import torch

    _, files, _, model = embedding_gemma
    enc = tinybert.Encoder(files["fp32"])
    rows = [enc.tokenizer.encode(t).ids[:60] for t in texts[:6] + texts[-1:]]
    width = max(map(len, rows))
    pads = [[0] * (width - len(r)) for r in rows]
    ids = np.array([r + p if side == "right" else p + r for r, p in zip(rows, pads)])
    mask = np.array([[1] * len(r) + [0] * len(p) if side == "right" else [0] * len(p) + [1] * len(r)
                     for r, p in zip(rows, pads)])
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = enc.forward(ids, attention_mask=mask)
    worst = float(np.abs(got[mask == 1] - ref[mask == 1]).max())
    print(f"embeddinggemma fp32 hidden states ({side} padding): max |h - transformers| {worst:.2e}")
    assert worst <= 1e-4


def test_window_and_direction_matter(embedding_gemma, texts):
    """The comparisons above would pass for a model whose windows or direction did not matter: the same weights
    with the sliding layers global, or with causal attention, are far from transformers."""
    import torch

    from tinybert.loader import load
    from tinybert.models.decoder import DecoderModel

    _, files, _, model = embedding_gemma
    opened = load(files["fp32"])
    decoder = DecoderModel(opened.config, opened.tensors, lm_head=False)
    ids = np.array(tinybert.Encoder(files["fp32"]).tokenizer.encode(texts[-1]).ids[:40], dtype=np.int32)
    starts = np.array([0, ids.size], dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids[None].astype(np.int64))).last_hidden_state.numpy()[0]
    np.testing.assert_allclose(decoder.packed(ids, starts), ref, atol=1e-4)
    block = decoder.block_config
    for changed in (dataclasses.replace(block, layer_windows=(1000, 0, 1000)), dataclasses.replace(block, causal=True)):
        decoder.block_config = changed
        got = decoder.packed(ids, starts)
        assert np.abs(got[5:] - ref[5:]).max() > 1e-2
    decoder.block_config = block


def test_converter_and_loader_keep_it_an_embedder(embedding_gemma, tmp_path):
    """A bidirectional decoder converts only as an embedder (a plain folder: mean pooling, as transformers'
    hidden states); a file claiming text generation for one is refused; causal decoder files do not state
    ``causal`` and load as before."""
    from safetensors import safe_open
    from tinybert_convert import convert
    from tinybert_convert.writer import write_safetensors

    from tinybert import format as fmt

    _, files, folder, _ = embedding_gemma
    with pytest.raises(UnsupportedModelError, match="bidirectional"):
        convert(folder, tmp_path / "lm.safetensors", dtype="fp32", task="text-generation")
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, plain / name)
    enc = tinybert.Encoder(convert(plain, tmp_path / "plain.safetensors", dtype="fp32"))
    assert enc.pooling == {"mode": "mean", "normalize": False} and enc.dimension == 64 and not enc.config.causal
    with pytest.raises(ModelKindError, match="Encoder"):
        tinybert.Generator(files["fp32"])
    with safe_open(str(files["fp32"]), framework="numpy") as fh:
        tensors, metadata = {n: fh.get_tensor(n) for n in fh.keys()}, dict(fh.metadata())
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, tensors, {**metadata, fmt.KEY_TASK: json.dumps({"type": "text-generation"})})
    with pytest.raises(ModelFileError, match="bidirectional"):
        tinybert.Generator(bad)
    config = json.loads(metadata[fmt.KEY_CONFIG])
    assert DecoderConfig.from_dict(config).to_dict() == config
    with pytest.raises(ModelFileError, match="causal"):
        DecoderConfig.from_dict({**config, "causal": "no"})
    causal = DecoderConfig.from_dict({k: v for k, v in config.items() if k != "causal"})
    assert causal.causal and "causal" not in causal.to_dict()


def test_int8_agreement(embedding_gemma, texts):
    model, files, _, _ = embedding_gemma
    ref = model.encode(texts, prompt_name="query")
    got = tinybert.Encoder(files["int8"]).encode(texts, prompt_name="query")
    cos = (ref * got).sum(axis=1)          # both L2-normalised
    print(f"embeddinggemma int8: cosine to sentence-transformers fp32 min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() >= 0.99


def test_cli_describes_and_embeds_with_it(embedding_gemma, texts, capsys):
    from tinybert.cli import main

    model, files, _, _ = embedding_gemma
    assert main(["info", str(files["fp32"])]) == 0
    out = capsys.readouterr().out
    assert "gemma3_text decoder" in out and "bidirectional" in out
    assert "feature-extraction (mean pooling, Dense 64→256→48, normalized)" in out and "tinybert embed" in out
    assert main(["info", str(files["fp32"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dense"] == [{"in_features": 64, "out_features": 256, "activation": "identity"},
                             {"in_features": 256, "out_features": 48, "activation": "identity"}]
    assert info["config"]["causal"] is False and info["pooling"] == {"mode": "mean", "normalize": True}
    assert main(["embed", str(files["fp32"]), texts[0], texts[1]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["embedding"] for r in rows], model.encode(texts[:2]), atol=1e-4)
