"""Decoder-only generation (GPT-2, Llama family) against transformers on the same random weights.

References: transformers' model logits and ``generate(do_sample=False)`` (greedy and beam search). Never
tinybert's own numbers. (The logits processors alone: tests/generation/test_processors.py; the `generate`
command: tests/frontends/test_cli_generation.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DECODERS, EOT, hf_greedy

import tinybert
from tinybert import format as fmt
from tinybert.errors import InputError, ModelKindError

PROMPT_TEXTS = [
    "The option can also be used to compare files",
    "If no matching line exists",
    "Especially a keybox with some initial certificates is often desired when",
]


def _ids(gen: tinybert.Generator, text: str) -> list[int]:
    return gen.tokenizer.encode(text).ids


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_matches_transformers(name, decoder_model):
    model, files = decoder_model(name)
    gen = tinybert.Generator(files["fp32"])
    prompts = [_ids(gen, t) for t in PROMPT_TEXTS]
    new = 64
    # one prompt alone, then the batch of three different lengths (transformers left-pads it)
    for batch in ([prompts[0]], prompts):
        ref = hf_greedy(model, batch, new)
        got = gen.generate_ids(batch, max_new_tokens=new, output_logits=True)
        for prompt, r, g in zip(batch, ref, got):
            assert g["token_ids"] == r, f"{name}: first difference at {np.argmin(np.equal(g['token_ids'], r))}"
            assert g["finish_reason"] == "length"
            # every step's logits (from the KV cache) equal a full recompute by transformers
            full = _hf_logits(model, prompt + r)
            np.testing.assert_allclose(g["logits"], full[len(prompt) - 1:len(prompt) - 1 + new], atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_float16_kv_cache_of_int8_models(name, decoder_model):
    """int8 models keep keys and values in float16 (half the cache's bytes, which a decode step reads besides the
    weights), float32 models in float32. On the float32 weights, a float16 cache's logits after a 64-token
    greedy run stay within 10x the float32 tolerance of transformers' full recompute."""
    model, files = decoder_model(name)
    fp32, int8 = tinybert.Generator(files["fp32"]), tinybert.Generator(files["int8"])
    assert (fp32._model.kv_dtype, int8._model.kv_dtype) == ("float32", "float16")
    assert 2 * int8.kv_cache_bytes(4, 100) == fp32.kv_cache_bytes(4, 100)
    prompt = _ids(fp32, PROMPT_TEXTS[0])
    (ref,) = hf_greedy(model, [prompt], 64)
    fp32._model.kv_dtype = "float16"
    (got,) = fp32.generate_ids([prompt], max_new_tokens=64, output_logits=True)
    full = _hf_logits(model, prompt + got["token_ids"])[len(prompt) - 1:len(prompt) - 1 + 64]
    worst = float(np.abs(got["logits"] - full).max())
    assert 0 < worst <= 1e-3, worst
    same = next((i for i, (a, b) in enumerate(zip(ref, got["token_ids"])) if a != b), 64)
    print(f"{name} fp32 weights, float16 cache: max |logit - transformers| {worst:.2e}; greedy tokens identical "
          f"to transformers for the first {same} of 64")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_logits_for_scoring(name, decoder_model):
    import torch

    model, files = decoder_model(name)
    gen = tinybert.Generator(files["fp32"])
    rows = [_ids(gen, t) for t in PROMPT_TEXTS]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    ours = gen.logits(ids, attention_mask=mask)
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], atol=1e-4)


def test_eos_stops_each_sequence(decoder_model, bpe_tokenizer_file):
    # Make a token the model generates for the first prompt (first seen at step >= 3) the EOS id: it
    # must stop there, while the other prompts run on (and agree with transformers, which stops the same way).
    model, files = decoder_model("gpt2")
    gen = tinybert.Generator(files["fp32"])
    prompts = [_ids(gen, t) for t in PROMPT_TEXTS]
    greedy = hf_greedy(model, prompts[:1], 20)[0]
    stop_at = next(i for i in range(3, 20) if greedy[i] not in greedy[:i])
    eos = greedy[stop_at]
    model_eos, files_eos = decoder_model("gpt2", eos_token_id=eos)
    gen = tinybert.Generator(files_eos["fp32"])
    assert gen.config.eos_token_ids == (eos,)
    got = gen.generate_ids(prompts, max_new_tokens=20)
    import torch

    for prompt, g in zip(prompts, got):
        with torch.no_grad():
            ref = model_eos.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                     eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
        if eos in ref:
            assert g["finish_reason"] == "eos"
            ref = ref[:ref.index(eos)]
        assert g["token_ids"] == ref
    assert got[0]["finish_reason"] == "eos" and got[0]["token_ids"] == greedy[:stop_at]


def test_int8_agreement_reported(decoder_model):
    for name in ("gpt2", "llama"):
        model, files = decoder_model(name)
        fp32, int8 = tinybert.Generator(files["fp32"]), tinybert.Generator(files["int8"])
        prompts = [_ids(fp32, t) for t in PROMPT_TEXTS]
        ref = hf_greedy(model, prompts, 32)
        got = int8.generate_ids(prompts, max_new_tokens=32)
        same = [next((i for i, (a, b) in enumerate(zip(r, g["token_ids"])) if a != b), 32) for r, g in zip(ref, got)]
        full = [_hf_logits(model, p + r) for p, r in zip(prompts, ref)]
        ours = [int8.logits(np.array([p + r]))[0] for p, r in zip(prompts, ref)]
        cos = [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) for f, o in zip(full, ours)
               for a, b in zip(f, o)]
        print(f"{name} int8: greedy tokens identical to transformers fp32 for the first {same} of 32; "
              f"logits cosine min {min(cos):.5f} mean {np.mean(cos):.5f}")
        assert min(cos) >= 0.99


# ---------------------------------------------------------------- sampling


def test_sampling_seed_and_top_k_one(decoder_model):
    _, files = decoder_model("llama")
    gen = tinybert.Generator(files["fp32"])
    a = gen.generate(PROMPT_TEXTS, max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7)
    b = gen.generate(PROMPT_TEXTS, max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7)
    c = gen.generate(PROMPT_TEXTS, max_new_tokens=24, temperature=0.9, top_p=0.95, seed=8)
    assert a == b and a != c
    greedy = gen.generate(PROMPT_TEXTS, max_new_tokens=24)
    assert gen.generate(PROMPT_TEXTS, max_new_tokens=24, temperature=1.3, top_k=1, seed=3) == greedy


# ---------------------------------------------------------------- text: stop strings, streaming


def test_stop_strings_cut_exactly(decoder_model):
    _, files = decoder_model("gpt2")
    gen = tinybert.Generator(files["fp32"])
    full = gen.generate(PROMPT_TEXTS[0], max_new_tokens=48)
    assert len(full) > 20
    stop = full[10:14]
    first = full.find(stop)
    out = gen.generate(PROMPT_TEXTS[0], max_new_tokens=48, stop=[stop, "never-appears"], return_ids=True)
    assert out["text"] == full[:first] and out["finish_reason"] == "stop"
    assert "".join(gen.stream(PROMPT_TEXTS[0], max_new_tokens=48, stop=[stop])) == full[:first]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_stream_joins_to_generate_and_keeps_characters_whole(name, decoder_model):
    _, files = decoder_model(name)
    gen = tinybert.Generator(files["fp32"])
    for prompt in PROMPT_TEXTS + ["Zoë flew to 東京 😀 and"]:
        pieces = list(gen.stream(prompt, max_new_tokens=40, temperature=1.0, seed=5))
        # A random model emits byte tokens that are not valid UTF-8 at all (U+FFFD in the text, as
        # transformers decodes them too); what streaming must guarantee is that the pieces are the text.
        assert "".join(pieces) == gen.generate(prompt, max_new_tokens=40, temperature=1.0, seed=5)
        assert all(pieces) and len(pieces) > 5


def test_multibyte_split_is_held_until_complete(decoder_model):
    from tinybert.generation import IncrementalDecoder

    _, files = decoder_model("gpt2")
    gen = tinybert.Generator(files["fp32"])
    ids = _ids(gen, "😀 東京")
    assert len(ids) > 3, "the small BPE must split these characters into byte tokens"
    decoder = IncrementalDecoder(lambda t: gen.tokenizer.decode(t))
    pieces = [decoder.push(t) for t in ids]
    assert "".join(pieces) == "😀 東京"
    assert all("\ufffd" not in p for p in pieces)


# ---------------------------------------------------------------- limits and errors


def test_context_and_cache_bounds(decoder_model):
    _, files = decoder_model("gpt2")
    gen = tinybert.Generator(files["fp32"])
    context = gen.config.max_positions
    long_prompt = " ".join(["word"] * (2 * context))
    with pytest.raises(InputError, match="context"):
        gen.generate(long_prompt)
    # generation stops at the end of the context instead of reading past the position table
    ids = list(range(5, 5 + context - 3))
    (out,) = gen.generate_ids([ids], max_new_tokens=50)
    assert len(out["token_ids"]) == 3 and out["finish_reason"] == "length"
    per_token = 2 * 4 * gen.config.num_layers * gen.config.num_kv_heads * gen.config.head_dim
    assert gen.kv_cache_bytes(8, 100) == 8 * 100 * per_token


def test_generator_errors(decoder_model, minilm_files):
    _, files = decoder_model("llama")
    gen = tinybert.Generator(files["int8"])
    for kwargs, needle in (({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
                           ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"),
                           ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"stop": [""]}, "stop")):
        with pytest.raises(InputError, match=needle):
            gen.generate("A prompt", **kwargs)
    with pytest.raises(InputError):
        gen.generate("")
    with pytest.raises(InputError):
        gen.generate([])
    with pytest.raises(InputError, match="token ids"):
        gen.generate_ids([[gen.config.vocab_size]])
    with pytest.raises(ModelKindError, match="decoder"):
        tinybert.Generator(minilm_files["int8"])
    with pytest.raises(ModelKindError, match="Generator"):
        tinybert.Encoder(files["int8"])


def test_converted_file_records_the_family(decoder_model):
    from tinybert.loader import load

    _, files = decoder_model("llama-llama3")
    cfg = load(files["int8"]).config
    assert (cfg.architecture, cfg.norm, cfg.positions, cfg.gated_mlp, cfg.num_kv_heads) == \
        ("llama", "rmsnorm", "rope", True, 2)
    assert cfg.rope["type"] == "llama3"
    _, files = decoder_model("gpt2")
    cfg = load(files["fp32"]).config
    assert (cfg.architecture, cfg.norm, cfg.positions, cfg.activation, cfg.tie_word_embeddings) == \
        ("gpt2", "layernorm", "learned", "gelu_tanh", True)
    assert EOT in str(load(files["fp32"]).tokenizer_json)


def test_opened_model_keeps_the_metadata_compressed(decoder_model):
    """A model holds its file's metadata as a read-only mapping with the long tokenizer JSON compressed (a 151k
    vocabulary's is 81 MB as a str): every key and value reads back as the file stores it."""
    from safetensors import safe_open

    from tinybert.loader import FileMetadata
    from tinybert.tokenizer import CompactText

    _, files = decoder_model("llama")
    gen = tinybert.Generator(files["int8"])
    with safe_open(str(files["int8"]), framework="numpy") as fh:
        stored = fh.metadata()
    assert isinstance(gen.metadata, FileMetadata) and dict(gen.metadata) == stored
    packed = stored[fmt.KEY_TOKENIZER]              # the file holds the tokenizer packed (format.pack_tokenizer)
    assert json.loads(fmt.unpack_tokenizer(packed))["model"]
    assert isinstance(gen.metadata._values[fmt.KEY_TOKENIZER], CompactText) == (len(packed) > FileMetadata.LONG)
    text = "x\u0120\U0001F600\ud800y" * 1000            # a lone surrogate survives too
    assert str(CompactText(text)) == text


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("options", [
    dict(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=3),
    dict(num_beams=3, length_penalty=2.0, early_stopping=True, num_return_sequences=2),
])
def test_beam_search_matches_transformers(name, options, decoder_model):
    import torch

    model, files = decoder_model(name, head_scale=20.0)
    gen = tinybert.Generator(files["fp32"])
    for text in PROMPT_TEXTS[:2]:
        prompt = _ids(gen, text)
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=0,
                                 **options)[:, len(prompt):].tolist()
        got = gen.generate(text, max_new_tokens=32, return_ids=True, **options)
        got = got if isinstance(got, list) else [got]
        assert [g["token_ids"] for g in got] == ref
