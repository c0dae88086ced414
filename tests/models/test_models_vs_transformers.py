"""Every supported encoder family against transformers on the same random weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAMILIES, build_hf_model, hf_last_hidden, mpnet_tokenizer_dir
from tinybert_convert import convert

import tinybert


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, minilm_dir):
    """name → (transformers model, {dtype: tinybert Encoder}) built once per module."""
    models = {}
    for seed, name in enumerate(FAMILIES):
        folder = tmp_path_factory.mktemp(name)
        hf = build_hf_model(name, folder / "hf", minilm_dir, seed=seed)
        encoders = {dtype: tinybert.Encoder(convert(folder / "hf", folder / f"{dtype}.safetensors", dtype=dtype))
                    for dtype in ("fp32", "int8")}
        models[name] = (hf, encoders)
    return models


def _batch(hf_tokenizer, texts, with_types):
    enc = hf_tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if with_types:
        batch["token_type_ids"] = enc["token_type_ids"]
    return batch


def _tokenizer(name, hf_tokenizer, minilm_dir):
    """MPNet's tests pad with id 1, as MPNet does (conftest.mpnet_tokenizer_dir)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(mpnet_tokenizer_dir(minilm_dir))) if name == "mpnet" else hf_tokenizer


def _cases(sentences, hf_tokenizer, name):
    with_types = name.startswith("bert") or name == "electra"
    padded = _batch(hf_tokenizer, sentences[:24], with_types)  # lengths vary: a padded batch
    single = _batch(hf_tokenizer, sentences[100:101], with_types)
    cases = [padded, single]
    if with_types:  # sentence pairs exercise token type 1
        pair = hf_tokenizer(sentences[200:208], sentences[300:308], padding=True, return_tensors="np")
        cases.append({k: pair[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return cases


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_matches_transformers(name, family_models, sentences, hf_tokenizer, minilm_dir):
    hf, encoders = family_models[name]
    for batch in _cases(sentences, _tokenizer(name, hf_tokenizer, minilm_dir), name):
        expected = hf_last_hidden(hf, batch)
        got = encoders["fp32"].forward(**batch)
        assert got.shape == expected.shape
        # Padding rows are compared too, except under local attention (ModernBERT): a padding query with no
        # token within its window has no key to attend to, and no single right answer.
        rows = batch["attention_mask"].astype(bool) if encoders["fp32"].config.window else slice(None)
        diff = np.abs(got[rows] - expected[rows]).max()
        print(f"{name}: fp32 max abs diff {diff:.2e}")
        assert diff <= 1e-4, f"{name}: max abs diff {diff:.2e}"


def test_local_window_matters(family_models, sentences, hf_tokenizer):
    """The ModernBERT test model's sentences are longer than its window, so that the window is tested: without it
    (local layers seeing every token, as transformers computes with a window wider than the text) the hidden
    states are another model's."""
    import copy

    hf, encoders = family_models["modernbert"]
    batch = _cases(sentences, hf_tokenizer, "modernbert")[0]
    valid = batch["attention_mask"].astype(bool)
    assert valid.sum(1).max() > 2 * encoders["fp32"].config.window + 1
    unwindowed = copy.deepcopy(hf)
    unwindowed.config.local_attention = 4096     # transformers builds the sliding-window mask from it per call
    diff = np.abs(hf_last_hidden(unwindowed, batch) - encoders["fp32"].forward(**batch))[valid].max()
    assert diff > 1e-2, diff


@pytest.mark.parametrize("name", FAMILIES)
def test_int8_per_token_cosine(name, family_models, sentences, hf_tokenizer, minilm_dir):
    hf, encoders = family_models[name]
    for batch in _cases(sentences, _tokenizer(name, hf_tokenizer, minilm_dir), name):
        expected = hf_last_hidden(hf, batch)
        got = encoders["int8"].forward(**batch)
        valid = batch["attention_mask"].astype(bool)
        a, b = got[valid], expected[valid]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        print(f"{name}: int8 worst per-token cosine {cos.min():.5f}")
        assert cos.min() >= 0.99, f"{name}: worst per-token cosine {cos.min():.5f}"


@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "mpnet", "modernbert"])
def test_padding_invariance(name, family_models, sentences):
    """A text alone and inside a batch of longer texts gives the same embedding."""
    _, encoders = family_models[name]
    short = min(sentences[:50], key=len)
    longer = sorted(sentences[:50], key=len)[-5:]
    for encoder in encoders.values():
        alone = encoder.encode([short])[0]
        in_batch = encoder.encode(longer + [short])[-1]
        assert np.abs(alone - in_batch).max() <= 1e-5
