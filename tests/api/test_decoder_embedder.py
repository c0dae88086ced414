"""A Qwen3-Embedding-style decoder embedder against sentence-transformers on the same random weights: a random
Qwen3 saved as a sentence-transformers folder (Transformer, Pooling with pooling_mode_lasttoken, Normalize;
an instruction prompt in config_sentence_transformers.json; the tokenizer pads on the left, as
Qwen3-Embedding's), converted and opened with ``tinybert.Encoder``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EOT, build_hf_decoder

import tinybert
from tinybert.errors import InputError, ModelKindError

QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
TEXTS = ["The option can also be used to compare files", "If no matching line exists",
         "Especially a keybox with some initial certificates is often desired when", "a",
         " ".join(["The option can also be used to compare files"] * 20)]     # cut at max_seq_length 100


@pytest.fixture(scope="module")
def embedder(tmp_path_factory, bpe_tokenizer_file):
    """(SentenceTransformer, {"fp32": path, "int8": path}, the folder)."""
    from sentence_transformers import SentenceTransformer
    from tinybert_convert import convert

    folder = tmp_path_factory.mktemp("qwen3-embedding") / "st"
    causal_lm = build_hf_decoder("qwen3", folder, bpe_tokenizer_file)
    # as Qwen3-Embedding ships: the base model's weights (no "model." prefix, no LM head)
    (folder / "model.safetensors").unlink()
    causal_lm.model.save_pretrained(folder)
    files = {
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": EOT, "eos_token": EOT,
                                  "padding_side": "left", "model_max_length": 100},
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
        "1_Pooling/config.json": {"word_embedding_dimension": 64, "pooling_mode_lasttoken": True,
                                  "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": False,
                                  "include_prompt": True},
        "sentence_bert_config.json": {"max_seq_length": 100, "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": {"query": QUERY_PROMPT, "document": ""},
                                              "default_prompt_name": None, "similarity_fn_name": "cosine"},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    (folder / "2_Normalize").mkdir()
    out = folder.parent
    converted = {dtype: convert(folder, out / f"embedder-{dtype}.safetensors", dtype=dtype)
                 for dtype in ("fp32", "int8")}
    return SentenceTransformer(str(folder), device="cpu"), converted, folder


@pytest.mark.parametrize("prompt_name", [None, "query"])
def test_fp32_matches_sentence_transformers(embedder, prompt_name):
    model, files, _ = embedder
    assert model.tokenizer.padding_side == "left"
    ref = model.encode(TEXTS, prompt_name=prompt_name, batch_size=5)
    enc = tinybert.Encoder(files["fp32"])
    assert enc.pooling == {"mode": "lasttoken", "normalize": True} and enc.prompts["query"] == QUERY_PROMPT
    assert enc.max_seq_length == model.max_seq_length == 100 < len(enc.tokenizer.encode(TEXTS[-1] * 2).ids) + 1
    got = enc.encode(TEXTS, prompt_name=prompt_name, batch_size=5)
    worst = float(np.abs(got - ref).max())
    print(f"qwen3 embedder fp32 (prompt {prompt_name}): max |embedding - sentence-transformers| {worst:.2e}")
    assert worst <= 1e-5
    np.testing.assert_allclose(enc.encode_query(TEXTS), model.encode_query(TEXTS), atol=1e-5)
    # batches of one and of all give the same vectors (no padding, each text's own last token)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=1), enc.encode(TEXTS, batch_size=5), atol=1e-6)


def test_forward_matches_transformers(embedder):
    """Last hidden states of right-padded ids equal transformers' Qwen3Model (the decoder's final norm applied);
    left padding is refused (the causal decoder would see it)."""
    import torch
    from transformers import AutoModel

    model, files, folder = embedder
    enc = tinybert.Encoder(files["fp32"])
    rows = [enc.tokenizer.encode(t).ids for t in TEXTS]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    hf = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = enc.forward(ids, attention_mask=mask)
    np.testing.assert_allclose(got[mask == 1], ref[mask == 1], atol=1e-4)
    with pytest.raises(InputError, match="right padding"):
        enc.forward(ids, attention_mask=mask[:, ::-1].copy())


def test_int8_agreement(embedder):
    model, files, _ = embedder
    ref = model.encode(TEXTS, prompt_name="query")
    got = tinybert.Encoder(files["int8"]).encode(TEXTS, prompt_name="query")
    cos = (ref * got).sum(axis=1)          # both L2-normalised
    print(f"qwen3 embedder int8: cosine to sentence-transformers fp32 min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() >= 0.99


def test_embedder_and_language_model_open_with_their_classes(embedder, decoder_model):
    _, files, _ = embedder
    with pytest.raises(ModelKindError, match="Encoder"):
        tinybert.Generator(files["fp32"])
    _, lm_files = decoder_model("qwen3")
    with pytest.raises(ModelKindError, match="Generator"):
        tinybert.Encoder(lm_files["fp32"])
    assert tinybert.Generator(lm_files["fp32"]).config.qk_norm


def test_cli_describes_and_embeds_with_it(embedder, capsys):
    from tinybert.cli import main

    model, files, _ = embedder
    assert main(["info", str(files["fp32"])]) == 0
    out = capsys.readouterr().out
    assert "qwen3 decoder" in out and "feature-extraction (lasttoken pooling, normalized)" in out
    assert "tinybert embed" in out and "text-generation" not in out
    assert main(["embed", str(files["fp32"]), TEXTS[0], TEXTS[1]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["embedding"] for r in rows], model.encode(TEXTS[:2]), atol=1e-5)
