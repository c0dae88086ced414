"""Qwen3, Phi-3 and Gemma 3 decoders against transformers on the same random weights (greedy generation and
every step's logits: tests/api/test_generator.py, which runs every name of conftest.DECODERS). Here: int8
agreement, padded scoring, what each family's switches change (a sliding window shorter than the text,
longrope's capped context) and what the converter refuses.
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


def test_phi3_longrope_context_stops_at_the_original(decoder_model):
    """transformers switches Phi-3 to its long factors once a forward reaches past
    original_max_position_embeddings; tinybert keeps the short ones and stops there (160 of the stated 640)."""
    model, files = decoder_model("phi3")
    gen = tinybert.Generator(files["fp32"])
    assert gen.config.max_positions == 160 == model.config.rope_parameters["original_max_position_embeddings"]
    assert gen.config.rope["type"] == "longrope" and gen.config.rope["attention_scaling"] > 1
    long = (gen.tokenizer.encode(PROMPT_TEXTS[0]).ids * 20)[:161]
    with pytest.raises(InputError):
        gen.logits(np.array([long]))
    (out,) = gen.generate_ids([long[:157]], max_new_tokens=50)
    assert len(out["token_ids"]) == 3 and out["finish_reason"] == "length"
    np.testing.assert_allclose(gen.logits(np.array([long[:159]]))[0], _hf_logits(model, long[:159]), atol=1e-4)


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
        {**phi, "max_positions": 161},                                 # past the short factors' context
    ]
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
