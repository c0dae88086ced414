"""Qwen3, Phi-3 and Gemma 3 decoders against transformers on the same random weights (greedy generation and
every step's logits: tests/api/test_generator.py, which runs every name of conftest.DECODERS). Here: int8
agreement, padded scoring, what each family's switches change (a sliding window shorter than the text,
longrope's long factors past the original context) and what the converter refuses.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import hf_greedy

import tinybert
from tinybert.config import DecoderConfig
from tinybert.errors import InputError, ModelFileError, UnsupportedModelError
from tinybert.layers.attention import RotaryTables

FAMILIES = ["qwen3", "phi3", "gemma3"]
PROMPT_TEXTS = [
    "The option can also be used to compare files",
    "If no matching line exists",
    "Especially a keybox with some initial certificates is often desired when",
]


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("name", FAMILIES)
def test_int8_agreement(name, decoder_model):
    """As the GPT-2 / Llama int8 test: greedy agreement with transformers' fp32 printed, every position's int8
    logits within cosine 0.99 of transformers' over the fp32 greedy continuation (32 new tokens)."""
    model, files = decoder_model(name)
    int8 = tinybert.Generator(files["int8"])
    prompts = [int8.tokenizer.encode(t).ids for t in PROMPT_TEXTS]
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


@pytest.mark.parametrize("name", FAMILIES)
def test_padded_scoring_matches_transformers(name, decoder_model):
    import torch

    model, files = decoder_model(name)
    gen = tinybert.Generator(files["fp32"])
    rows = [gen.tokenizer.encode(t).ids for t in PROMPT_TEXTS]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    worst = float(np.abs(gen.logits(ids, attention_mask=mask)[mask == 1] - ref[mask == 1]).max())
    print(f"{name} fp32: max |logit - transformers| {worst:.2e}")
    assert worst <= 1e-4


def test_gemma3_window_is_shorter_than_the_text_and_matters(decoder_model):
    """The random Gemma 3 attends 8 positions back on its sliding layers: over a 40-token text, the same
    weights without the window (every layer global) are far from transformers, with it within 1e-4."""
    model, files = decoder_model("gemma3")
    assert model.config.sliding_window == 8
    gen = tinybert.Generator(files["fp32"])
    assert gen.config.layer_windows == (8, 0, 8) and gen.config.local_rope["theta"] == 10_000.0
    ids = gen.tokenizer.encode(" ".join(PROMPT_TEXTS)).ids[:40]
    assert len(ids) == 40
    ref = _hf_logits(model, ids)
    np.testing.assert_allclose(gen.logits(np.array([ids]))[0], ref, atol=1e-4)
    # windows longer than the text, the sliding layers' local rope kept: the window alone changes
    model_cfg = gen._model
    model_cfg.block_config = dataclasses.replace(model_cfg.block_config, layer_windows=(1000, 0, 1000))
    unwindowed = gen.logits(np.array([ids]))[0]
    assert np.abs(unwindowed[:8] - ref[:8]).max() <= 1e-4          # within the window nothing changes
    assert np.abs(unwindowed[8:] - ref[8:]).max() > 1e-2


def _hf_generate(model, prompt: list[int], new: int) -> tuple[list[int], np.ndarray]:
    """transformers' greedy continuation of one prompt (batch 1) and the logits of each of its steps."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits).numpy()


def _long_text(gen, n: int) -> list[int]:
    ids = gen.tokenizer.encode(" ".join(PROMPT_TEXTS * 4)).ids[:n]
    assert len(ids) == n
    return ids


def test_phi3_longrope_generation_crosses_the_original_context(decoder_model):
    """Past original_max_position_embeddings (24 here, of 96) Phi-3 takes its long factors. A short prompt whose
    generation crosses it: transformers' generate drops its cache when the text reaches 25 tokens and feeds it
    all again with the long factors; tinybert replays the sequence in that step. Every step's logits within 1e-4
    of transformers' (before the switch: the short factors; after: the long ones over the whole text), the
    tokens identical; the same weights read with the short factors only are far off past the switch."""
    model, files = decoder_model("phi3-long")
    gen = tinybert.Generator(files["fp32"])
    original = model.config.rope_parameters["original_max_position_embeddings"]
    assert (gen.config.max_positions, gen.config.rope["original_max_position_embeddings"]) == (96, original) == (96, 24)
    assert gen.config.rope["long_factors"] != gen.config.rope["factors"]
    prompt = gen.tokenizer.encode(PROMPT_TEXTS[1]).ids
    new = 48
    assert len(prompt) < original < len(prompt) + new
    ref, ref_logits = _hf_generate(model, prompt, new)
    (got,) = gen.generate_ids([prompt], max_new_tokens=new, output_logits=True)
    worst = float(np.abs(got["logits"] - ref_logits).max())
    print(f"phi3 longrope fp32, generation crossing the original: max |logit - transformers| {worst:.2e}")
    assert got["token_ids"] == ref
    assert worst <= 1e-4
    # the steps after the switch are far (10x the tolerance) from keeping the short factors: the check can fail
    short = {k: v for k, v in gen.config.rope.items() if k != "long_factors"}
    gen._model.positions._rope = RotaryTables(gen.config.head_dim, 96, short)
    gen._model.positions.switches = []
    (kept,) = gen.generate_ids([prompt], max_new_tokens=new, output_logits=True)
    before = original - len(prompt)        # steps whose logits come from positions below the switch
    assert np.abs(kept["logits"][:before] - ref_logits[:before]).max() <= 1e-4
    assert np.abs(kept["logits"][before:] - ref_logits[before:]).max() > 1e-3


def test_phi3_longrope_prompt_longer_than_the_original(decoder_model):
    """A 40-token prompt (original 24): every position rotated with the long factors, as transformers' one
    forward; logits within 1e-4, greedy generation identical to transformers' generate."""
    model, files = decoder_model("phi3-long")
    gen = tinybert.Generator(files["fp32"])
    prompt = _long_text(gen, 40)
    worst = float(np.abs(gen.logits(np.array([prompt]))[0] - _hf_logits(model, prompt)).max())
    print(f"phi3 longrope fp32, 40-token prompt: max |logit - transformers| {worst:.2e}")
    assert worst <= 1e-4
    ref, ref_logits = _hf_generate(model, prompt, 32)
    (got,) = gen.generate_ids([prompt], max_new_tokens=32, output_logits=True)
    assert got["token_ids"] == ref
    np.testing.assert_allclose(got["logits"], ref_logits, atol=1e-4)


def test_phi3_longrope_switches_per_sequence(decoder_model):
    """A batch mixing a sequence past the original context with one below it, and one that crosses it while the
    other decodes: each takes its own factors, so each result is the same as alone (bit for bit) and as
    transformers' batch-1 generate. Scoring rows of different lengths in one call likewise."""
    model, files = decoder_model("phi3-long")
    gen = tinybert.Generator(files["fp32"])
    prompts = [gen.tokenizer.encode(PROMPT_TEXTS[1]).ids, _long_text(gen, 30), _long_text(gen, 20)]
    new = 30
    together = gen.generate_ids(prompts, max_new_tokens=new, output_logits=True)
    for prompt, got in zip(prompts, together):
        (alone,) = gen.generate_ids([prompt], max_new_tokens=new, output_logits=True)
        ref, ref_logits = _hf_generate(model, prompt, new)
        assert got["token_ids"] == alone["token_ids"] == ref
        np.testing.assert_array_equal(got["logits"], alone["logits"])
        np.testing.assert_allclose(got["logits"], ref_logits, atol=1e-4)
    rows = [prompts[0], prompts[1]]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    scored = gen.logits(ids, attention_mask=mask)
    for b, row in enumerate(rows):
        np.testing.assert_allclose(scored[b, :len(row)], _hf_logits(model, row), atol=1e-4)


def test_phi3_longrope_beam_search_crosses_the_original_context(decoder_model):
    """Beam search from a short prompt past the original context: each beam's sequence is replayed with the long
    factors when it reaches it (beams that copied others' cache slots carry their tokens along), as
    transformers' beam search drops its cache then."""
    import torch

    model, files = decoder_model("phi3-long", head_scale=20.0)
    gen = tinybert.Generator(files["fp32"])
    options = dict(num_beams=3, length_penalty=0.6, no_repeat_ngram_size=3, num_return_sequences=3)
    for text in PROMPT_TEXTS:
        prompt = gen.tokenizer.encode(text).ids
        assert len(prompt) <= 24        # the last one ends just below the switch: the first step replays
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, pad_token_id=0,
                                 **options)[:, len(prompt):].tolist()
        got = gen.generate_ids([prompt], max_new_tokens=40, **options)[0]
        assert [g["token_ids"] for g in got] == ref


def test_phi3_longrope_int8_agreement(decoder_model):
    """As test_int8_agreement, for a generation crossing the original context and one after a prompt past it
    (32 new tokens), against transformers' batch-1 generate: greedy agreement printed; logits within cosine 0.99
    of transformers' fp32 ones at every position of the prompt and continuation (one forward) and at every step
    of the int8 generation while its text is transformers' (up to the first differing token, included)."""
    model, files = decoder_model("phi3-long")
    int8 = tinybert.Generator(files["int8"])
    cos, steps, same = [], [], []
    for prompt in (int8.tokenizer.encode(PROMPT_TEXTS[1]).ids, _long_text(int8, 30)):
        ref, ref_logits = _hf_generate(model, prompt, 32)
        (got,) = int8.generate_ids([prompt], max_new_tokens=32, output_logits=True)
        same.append(next((i for i, (a, b) in enumerate(zip(ref, got["token_ids"])) if a != b), 32))
        pairs = zip(_hf_logits(model, prompt + ref), int8.logits(np.array([prompt + ref]))[0])
        cos += [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in pairs]
        steps += [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
                  for a, b in zip(ref_logits[:same[-1] + 1], got["logits"])]
    print(f"phi3 longrope int8: greedy tokens identical to transformers fp32 for the first {same} of 32; "
          f"logits cosine min {min(cos):.5f} mean {np.mean(cos):.5f}, generation steps min {min(steps):.5f}")
    assert min(cos) >= 0.99 and min(steps) >= 0.99


def test_phi3_without_long_factors_stops_at_the_original(decoder_model, tmp_path):
    """A longrope config without long factors (like a file converted before tinybert kept them): the context ends
    at the original 24 positions, within which the short factors are transformers'."""
    from tinybert_convert import convert

    model, files = decoder_model("phi3-long")
    src = tmp_path / "src"
    shutil.copytree(files["fp32"].parent / "hf", src)
    config = json.loads((src / "config.json").read_text())
    config["rope_parameters"].pop("long_factor")
    (src / "config.json").write_text(json.dumps(config))
    gen = tinybert.Generator(convert(src, tmp_path / "short.safetensors", dtype="fp32"))
    assert gen.config.max_positions == 24 and "long_factors" not in gen.config.rope
    ids = _long_text(gen, 23)           # (its tokenizer truncates at the context, 24)
    np.testing.assert_allclose(gen.logits(np.array([ids]))[0], _hf_logits(model, ids), atol=1e-4)
    with pytest.raises(InputError):
        gen.logits(np.array([ids + ids[:2]]))           # 25 positions
    (out,) = gen.generate_ids([ids[:20]], max_new_tokens=50)
    assert len(out["token_ids"]) == 4 and out["finish_reason"] == "length"


def _refused(folder, tmp_path, **changes) -> None:
    from tinybert_convert import convert

    src = tmp_path / "src"
    shutil.copytree(folder, src)
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError):
        convert(src, tmp_path / "out.safetensors", dtype="fp32")


@pytest.mark.parametrize("name, changes", [
    ("gemma3", {"final_logit_softcapping": 30.0}),
    ("gemma3", {"attn_logit_softcapping": 50.0}),
    ("gemma3", {"hidden_activation": "relu"}),
    ("gemma3", {"sliding_window": None}),       # sliding layers with their local rope but no window
    ("phi3", {"partial_rotary_factor": 0.5}),
    ("qwen3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}),
])
def test_converter_refuses_what_is_not_implemented(name, changes, decoder_model, tmp_path):
    _, files = decoder_model(name)
    _refused(files["fp32"].parent / "hf", tmp_path, **changes)


def test_config_switches_are_validated_and_optional(decoder_model):
    from tinybert.loader import load

    for name in FAMILIES:
        data = load(decoder_model(name)[1]["fp32"]).config.to_dict()
        assert DecoderConfig.from_dict(data).to_dict() == data
    gemma = load(decoder_model("gemma3")[1]["fp32"]).config.to_dict()
    phi = load(decoder_model("phi3")[1]["fp32"]).config.to_dict()
    bad = [
        {**gemma, "layer_windows": [8, 0]},                            # not one per layer
        {**gemma, "score_scale": 0.0},
        {**gemma, "local_rope": {"type": "default"}},                  # no theta
        {**phi, "rope": {**phi["rope"], "factors": [1.0] * 7}},        # not head_dim / 2
        {**phi, "rope": {**phi["rope"], "factors": [1.0] * 7 + [-1.0]}},
        {**phi, "rope": {**phi["rope"], "long_factors": [1.0] * 7}},   # not head_dim / 2
        {**phi, "rope": {**phi["rope"], "long_factors": "long"}},
    ]
    # a file of an earlier converter: short factors only, its context within the original one
    old_phi = {**phi, "rope": {k: v for k, v in phi["rope"].items() if k != "long_factors"}}
    assert phi["max_positions"] == 640 and DecoderConfig.from_dict({**old_phi, "max_positions": 160})
    bad.append({**old_phi, "max_positions": 161})
    for data in bad:
        with pytest.raises(ModelFileError):
            DecoderConfig.from_dict(data)
    # a file of an earlier converter (no new keys) means the defaults: the blocks as before
    llama = load(decoder_model("llama")[1]["fp32"]).config.to_dict()
    for key in ("scale_embedding", "qk_norm", "post_norms", "score_scale", "layer_windows", "local_rope"):
        llama.pop(key)
    old = DecoderConfig.from_dict(llama)
    assert not (old.qk_norm or old.post_norms or old.scale_embedding or old.layer_windows)


@pytest.mark.parametrize("name, overrides", [
    ("qwen3", {"attention_bias": True}),        # biases on q, k, v and o
    ("phi3", {"sliding_window": 8}),            # every Phi-3 layer windowed
])
def test_variants_generate_as_transformers(name, overrides, decoder_model):
    model, files = decoder_model(name, **overrides)
    gen = tinybert.Generator(files["fp32"])
    if name == "phi3":
        assert gen.config.layer_windows == (8, 8)
    else:
        assert gen.config.attn_bias and gen.config.attn_out_bias
    prompts = [gen.tokenizer.encode(t).ids for t in PROMPT_TEXTS]
    ref = hf_greedy(model, prompts, 40)
    got = gen.generate_ids(prompts, max_new_tokens=40, output_logits=True)
    for prompt, r, g in zip(prompts, ref, got):
        assert g["token_ids"] == r
        full = _hf_logits(model, prompt + r)
        np.testing.assert_allclose(g["logits"], full[len(prompt) - 1:len(prompt) - 1 + 40], atol=1e-4)


def test_gemma3_hub_config_of_transformers_4(decoder_model, tmp_path):
    """Gemma 3 configs on the Hub written by transformers 4 state rope_theta, rope_local_base_freq, rope_scaling
    and sliding_window_pattern instead of per-layer-type rope parameters and layer_types: the same model."""
    from tinybert_convert import convert

    from tinybert.loader import load

    _, files = decoder_model("gemma3")
    src = tmp_path / "src"
    shutil.copytree(files["fp32"].parent / "hf", src)
    config = json.loads((src / "config.json").read_text())
    for key in ("layer_types", "rope_parameters"):
        config.pop(key)
    config.update(sliding_window_pattern=2, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                  rope_scaling={"rope_type": "linear", "factor": 4.0})
    (src / "config.json").write_text(json.dumps(config))
    old = convert(src, tmp_path / "old.safetensors", dtype="fp32")
    assert load(old).config == load(files["fp32"]).config
