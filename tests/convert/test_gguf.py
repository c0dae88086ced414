"""GGUF files (llama.cpp's format) in: converted, and opened by Generator directly.

The GGUF files are written here, at test time, from small random transformers models with gguf-py's GGUFWriter,
the way llama.cpp's convert_hf_to_gguf.py writes them (its names, its metadata keys, the llama architecture's q/k
row permutation, Llama 3's rope_freqs tensor, 1-D tensors kept F32), in F32, F16, Q8_0 and Q4_0. The reference is
transformers on the weights the file really holds: each quantised tensor dequantised by gguf-py and loaded back
into the transformers model. (GGUF blocks run along rows, so dequantising the permuted rows and permuting back
equals quantising the model's own rows: the reference does not depend on the converter's un-permutation.)
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import EOT, build_hf_decoder, hf_greedy
from tinybert_convert import convert

import tinybert
from tinybert import format as fmt
from tinybert.errors import ConversionError, UnsupportedModelError
from tinybert.loader import load

Q = gguf.GGMLQuantizationType
PROMPT_TEXTS = ["The option can also be used to compare files", "If no matching line exists",
                "Especially a keybox with some initial certificates is often desired when"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ARCH = {"llama": "llama", "llama-mqa-tied": "llama", "llama-llama3": "llama", "llama-linear": "llama",
        "qwen2": "qwen2", "qwen3": "qwen3"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (rope halves → interleaved pairs)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_factors(cfg, head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: the rope_freqs of a llama3 rope."""
    p = cfg.rope_parameters
    base, factor, low, high, old = (p["rope_theta"], p["factor"], p["low_freq_factor"], p["high_freq_factor"],
                                    p["original_max_position_embeddings"])
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _gguf_name(hf_name: str, gemma: bool) -> str:
    """llama.cpp's name (gguf-py's tensor_mapping.py) of a Hugging Face tensor."""
    table = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.qkv_proj": "attn_qkv", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    if gemma:
        layer.update({"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                      "post_feedforward_layernorm": "post_ffw_norm"})
    stem, suffix = hf_name.rsplit(".", 1)
    if stem in table:
        return f"{table[stem]}.{suffix}"
    _, _, n, rest = stem.split(".", 3)
    return f"blk.{n}.{layer[rest]}.{suffix}"


def _gpt2_vocab(w: gguf.GGUFWriter, tokenizer_file: Path, add_bos: bool, pre: str = "gpt-2") -> None:
    """A tokenizer.json's byte-level BPE, as convert_hf_to_gguf.py's _set_vocab_gpt2 stores it."""
    tok = json.loads(tokenizer_file.read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(vocab[EOT])
    w.add_bos_token_id(vocab[EOT])
    w.add_add_bos_token(add_bos)


def _spm_vocab(w: gguf.GGUFWriter, model_proto: bytes, user_defined: tuple[str, ...] = ()) -> None:
    """A SentencePiece model, as convert_hf_to_gguf.py's _set_vocab_sentencepiece stores it (bos added, as Llama);
    ``user_defined``: pieces tokenizer_config.json lists as added, not special (USER_DEFINED there)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    types = []
    for i in range(sp.get_piece_size()):
        kind = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            kind = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            kind = gguf.TokenType.BYTE
        elif sp.id_to_piece(i) in user_defined:
            kind = gguf.TokenType.USER_DEFINED
        types.append(kind)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    w.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)


def write_gguf(model, tokenizer_file: Path, path: Path, qtype: Q, arch: str | None = None,
               chat_template: str | None = CHAT_TEMPLATE, add_bos: bool = False,
               spm_model: bytes | None = None, pre: str = "gpt-2", user_defined: tuple[str, ...] = ()) -> dict:
    """Write ``model`` (a transformers Llama / Qwen2 / Qwen3 / Gemma 3 / Phi-3) as llama.cpp would, with the
    byte-level BPE of ``tokenizer_file`` (or the SentencePiece ``spm_model``); returns the state dict of what the
    file holds, dequantised, under the model's own names (for the transformers reference)."""
    cfg = model.config
    arch = arch or {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3",
                    "phi3": "phi3"}[cfg.model_type]
    gemma = cfg.model_type == "gemma3_text"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = cfg.rope_parameters
    if gemma:       # Gemma3Model: the global layers' rope, the sliding layers' base, the window (pattern: 6)
        rope = rope["full_attention"]
        w.add_rope_freq_base_swa(cfg.rope_parameters["sliding_attention"]["rope_theta"])
        w.add_sliding_window(cfg.sliding_window)
    w.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if cfg.model_type == "phi3":    # Phi3MiniModel
        original = rope["original_max_position_embeddings"]
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_sliding_window(cfg.sliding_window or 0)
        scale = cfg.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(qtype))
    if spm_model is None:
        _gpt2_vocab(w, tokenizer_file, add_bos, pre)
    else:
        _spm_vocab(w, spm_model, user_defined)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    held = {}
    for name, param in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        value = param.detach().numpy().astype(np.float32)
        if cfg.model_type == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            stored = _permute(value, cfg.num_attention_heads)
        elif cfg.model_type == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            stored = _permute(value, cfg.num_key_value_heads)
        elif gemma and name.endswith("norm.weight"):
            stored = value + np.float32(1.0)        # Gemma3Model.norm_shift
            value = stored - np.float32(1.0)        # what the file says w is (exactly, in float32)
        else:
            stored = value
        kind = qtype if value.ndim == 2 else Q.F32      # llama.cpp keeps norms and biases in F32
        if kind == Q.F32:
            w.add_tensor(_gguf_name(name, gemma), stored)
            held[name] = value
        else:
            data = gguf.quants.quantize(stored, kind)
            w.add_tensor(_gguf_name(name, gemma), data, raw_dtype=kind)
            held[name] = gguf.quants.dequantize(gguf.quants.quantize(value, kind), kind)
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", _llama3_factors(cfg, head_dim))
    if cfg.model_type == "phi3":
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def _reference(model, held: dict):
    """The transformers model with the weights the GGUF file holds."""
    import torch

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if name in held:
                param.copy_(torch.from_numpy(np.asarray(held[name], dtype=np.float32)))
    if model.config.tie_word_embeddings:
        assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
    return ref.eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, bpe_tokenizer_file):
    cache = {}

    def get(name: str):
        if name not in cache:
            folder = tmp_path_factory.mktemp(f"gguf-{name}")
            cache[name] = build_hf_decoder(name, folder / "hf", bpe_tokenizer_file, **GGUF_OVERRIDES.get(name, {}))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def gguf_file(hf_models, tmp_path_factory, bpe_tokenizer_file):
    """(name, qtype) → (GGUF path, transformers reference on its weights)."""
    cache = {}

    def get(name: str, qtype: Q):
        if (name, qtype) not in cache:
            path = tmp_path_factory.mktemp("gguf") / f"{name}-{qtype.name}.gguf"
            held = write_gguf(hf_models(name), bpe_tokenizer_file, path, qtype)
            cache[name, qtype] = (path, _reference(hf_models(name), held))
        return cache[name, qtype]

    return get


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


# What a GGUF file cannot state, set to what llama.cpp assumes: Gemma 3's query scale 1/√head_dim and its sliding
# layers every 6th one global (conftest's gemma3 has query_pre_attn_scalar 24 and 3 layers of its own pattern)
GGUF_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": 16, "num_hidden_layers": 6,
                             "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}}
CASES = [("llama", Q.F32), ("llama", Q.F16), ("llama", Q.Q8_0), ("llama", Q.Q4_0), ("llama-mqa-tied", Q.Q8_0),
         ("llama-llama3", Q.F32), ("llama-linear", Q.F16), ("qwen2", Q.F32), ("qwen2", Q.Q4_0), ("qwen3", Q.F32),
         ("qwen3", Q.Q8_0), ("qwen3", Q.BF16), ("gemma3", Q.F32), ("gemma3", Q.Q8_0), ("phi3", Q.F32), ("phi3", Q.Q4_0)]


@pytest.mark.parametrize("name, qtype", CASES, ids=[f"{n}-{q.name}" for n, q in CASES])
def test_fp32_matches_transformers_on_the_dequantised_weights(name, qtype, gguf_file, tmp_path):
    path, ref = gguf_file(name, qtype)
    out = convert(path, tmp_path / "model.safetensors", dtype="fp32")
    gen = tinybert.Generator(out)
    prompts = [gen.tokenizer.encode(t).ids for t in PROMPT_TEXTS]
    worst = 0.0
    for prompt in prompts:
        ours = gen.logits(np.array([prompt]))[0]
        theirs = _hf_logits(ref, prompt)
        worst = max(worst, float(np.abs(ours - theirs).max()))
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    new = 24
    expected = hf_greedy(ref, prompts, new)
    got = gen.generate_ids(prompts, max_new_tokens=new)
    assert [g["token_ids"] for g in got] == expected
    if name == "phi3":      # the long factors are carried too (the prompts stay below the original context)
        rope = ref.config.rope_parameters
        np.testing.assert_allclose(gen.config.rope["long_factors"], rope["long_factor"], rtol=1e-7)
        assert gen.config.rope["original_max_position_embeddings"] == rope["original_max_position_embeddings"]
    print(f"GGUF {name} {qtype.name}: fp32 max |logit - transformers| {worst:.2e}; greedy {new} tokens identical")


def test_int8_agreement(gguf_file, tmp_path):
    """int8 from a Q8_0 file, gated as the folder conversions' int8 (tests/api/test_generator.py)."""
    path, ref = gguf_file("llama", Q.Q8_0)
    gen = tinybert.Generator(convert(path, tmp_path / "model.safetensors", dtype="int8"))
    prompts = [gen.tokenizer.encode(t).ids for t in PROMPT_TEXTS]
    expected = hf_greedy(ref, prompts, 32)
    got = gen.generate_ids(prompts, max_new_tokens=32)
    same = [next((i for i, (a, b) in enumerate(zip(r, g["token_ids"])) if a != b), 32) for r, g in zip(expected, got)]
    cos = [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
           for p, r in zip(prompts, expected)
           for a, b in zip(_hf_logits(ref, p + r), gen.logits(np.array([p + r]))[0])]
    print(f"GGUF llama Q8_0 → int8: greedy identical for the first {same} of 32; logits cosine min {min(cos):.5f}")
    assert min(cos) >= 0.99


def test_tokenizer_and_chat_template_carried(gguf_file, tmp_path, sentences, bpe_tokenizer_file):
    from tokenizers import Tokenizer

    path, _ = gguf_file("llama", Q.F32)
    out = convert(path, tmp_path / "model.safetensors", dtype="fp32")
    gen = tinybert.Generator(out)
    hf = Tokenizer.from_file(str(bpe_tokenizer_file))
    texts = sentences + ["naïve café — 東京 🙂", f"one{EOT}two", "  spaces\n\nand\ttabs  "]
    for text in texts:
        assert gen.tokenizer.encode(text).ids == hf.encode(text).ids, text
    ids = hf.encode(sentences[0]).ids
    assert gen.tokenizer.decode(ids) == hf.decode(ids)
    eot = hf.token_to_id(EOT)
    assert gen.config.eos_token_ids == (eot,)
    chat = json.loads(load(out).metadata["chat_template"])
    assert chat == {"template": CHAT_TEMPLATE, "special_tokens": {"bos_token": EOT, "eos_token": EOT}}
    rendered = gen.render_chat([{"role": "user", "content": "hi"}])
    assert rendered == f"<|user|>hi{EOT}<|assistant|>"


def test_add_bos_token(hf_models, bpe_tokenizer_file, tmp_path):
    path = tmp_path / "bos.gguf"
    write_gguf(hf_models("llama"), bpe_tokenizer_file, path, Q.F32, add_bos=True)
    gen = tinybert.Generator(convert(path, tmp_path / "model.safetensors", dtype="fp32"))
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(bpe_tokenizer_file))
    assert gen.tokenizer.encode("hello there").ids == [hf.token_to_id(EOT)] + hf.encode("hello there").ids


# The pre-tokenizers of Meta-Llama-3's and Qwen2's tokenizer.json (Split, then ByteLevel without its own regex;
# Qwen2 NFC-normalises first, Llama 3 ignores merges for words in the vocabulary)
HF_PRE_TOKENIZERS = {
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+", False, True),
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+", True, False),
}


@pytest.mark.parametrize("pre", list(HF_PRE_TOKENIZERS))
def test_llama3_and_qwen2_pre_tokenizers(pre, hf_models, tmp_path, sentences):
    """A byte-level BPE with Llama 3's or Qwen2's pre-tokenizer, stored with its tokenizer.ggml.pre name: the
    tokenizer.json it was made from gives the same ids (digits, contractions, newlines, NFC included)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    regex, nfc, ignore_merges = HF_PRE_TOKENIZERS[pre]
    model = hf_models("llama")
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=model.config.vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer=trainer)
    assert tok.get_vocab_size() == model.config.vocab_size
    tok.save(str(tmp_path / "tokenizer.json"))
    path = tmp_path / f"{pre}.gguf"
    write_gguf(model, tmp_path / "tokenizer.json", path, Q.F32, pre=pre)
    gen = tinybert.Generator(convert(path, tmp_path / "model.safetensors", dtype="fp32"))
    texts = sentences + ["I'VE 1234567 apples, DON'T\n\n  they're\r\n", "e\u0301 cafe\u0301 Å", "x  \n y", "a1b22c333"]
    for text in texts:
        assert gen.tokenizer.encode(text).ids == tok.encode(text).ids, text


def test_sentencepiece_tokenizer(hf_models, bpe_tokenizer_file, tmp_path, sentences):
    """A "llama" (SentencePiece) tokenizer, trained as Llama's (BPE, byte fallback, no normalisation, whitespace
    kept), with control and user-defined pieces: llama.cpp's ids (its tokenizer_st_partition, then SPM): the
    special pieces matched whole in the text, every other fragment segmented as sentencepiece segments it (with
    the space prefix), after the BOS the file asks for."""
    import io
    import re

    import sentencepiece as spm

    model = hf_models("llama")
    specials = ("<start_of_turn>", "<end_of_turn>", "<ctrl>")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=out, minloglevel=2, num_threads=1,
                                   model_type="bpe", vocab_size=model.config.vocab_size, byte_fallback=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   control_symbols=list(specials), user_defined_symbols=["@@sep@@"])
    path = tmp_path / "spm.gguf"
    write_gguf(model, bpe_tokenizer_file, path, Q.F32, spm_model=out.getvalue(), user_defined=("@@sep@@",))
    gen = tinybert.Generator(convert(path, tmp_path / "model.safetensors", dtype="fp32"))
    sp = spm.SentencePieceProcessor(model_proto=out.getvalue())
    split = re.compile("(" + "|".join(re.escape(t) for t in (*specials, "@@sep@@", "<s>", "</s>")) + ")")

    def llama_cpp(text: str) -> list[int]:
        ids = [sp.bos_id()]
        for part in split.split(text):
            if part:
                ids += [sp.piece_to_id(part)] if split.fullmatch(part) else sp.encode(part)
        return ids

    texts = sentences + ["naïve café — 東京 🙂 ☃", "  two  spaces\tand tab", "<s> and </s> as text", "x", "",
                         "<start_of_turn>user\nhi there<end_of_turn>\n<start_of_turn>model\n", "a@@sep@@b <ctrl>c",
                         "<start_of_turn><end_of_turn>", "no <start_of_turn match"]
    for text in texts:
        assert gen.tokenizer.encode(text).ids == llama_cpp(text), text
    assert gen.config.bos_token_id == sp.bos_id() and gen.config.eos_token_ids == (sp.eos_id(),)
    ids = sp.encode(texts[0])
    assert gen.tokenizer.decode(ids) == sp.decode(ids)


def test_generator_opens_the_gguf_file(gguf_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYBERT_CACHE", str(tmp_path / "cache"))
    path, ref = gguf_file("qwen2", Q.Q8_0)
    gen = tinybert.Generator(path, dtype="fp32")
    assert "converting" in capsys.readouterr().err
    prompt = gen.tokenizer.encode(PROMPT_TEXTS[0]).ids
    np.testing.assert_allclose(gen.logits(np.array([prompt]))[0], _hf_logits(ref, prompt), atol=1e-4)
    entries = list((tmp_path / "cache" / "models").glob("*.safetensors"))
    assert len(entries) == 1 and gen.path == entries[0]
    again = tinybert.Generator(str(path), dtype="fp32")       # converted once: the cache entry is used
    assert again.path == entries[0] and "converting" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_q4_0_to_int4_keeps_the_weights_bit_for_bit(name, gguf_file, tmp_path, caplog):
    """int4 from a Q4_0 file holds the GGUF's weights exactly: every int4 tensor, dequantised by the format's
    definition, equals the fp32 conversion's weight (itself checked against transformers above), through llama's
    row permutation and Phi-3's fused projections; and no re-quantisation warning is given."""
    from tinybert.kernels.gemm_int4 import dequantize

    path, _ = gguf_file(name, Q.Q4_0)
    with caplog.at_level(logging.WARNING):
        int4 = load(convert(path, tmp_path / "int4.safetensors", dtype="int4")).tensors
    assert "quantised again" not in caplog.text
    fp32 = load(convert(path, tmp_path / "fp32.safetensors", dtype="fp32")).tensors
    names = [n[:-len(fmt.GROUP_SCALE_SUFFIX)] for n in int4 if n.endswith(fmt.GROUP_SCALE_SUFFIX)]
    assert len(names) >= 4 * load(tmp_path / "int4.safetensors").config.num_layers
    for name4 in names:
        w = fp32[name4]
        got = dequantize(int4[name4], int4[name4 + fmt.GROUP_SCALE_SUFFIX], int4[name4 + fmt.GROUP_MIN_SUFFIX],
                         w.shape[1])
        np.testing.assert_array_equal(got, w, err_msg=name4)


def test_requantised_types_warn(gguf_file, tmp_path, caplog):
    """Q8_0 into int4 (or int8's per-row scales) does not map exactly: the conversion says so."""
    path, _ = gguf_file("llama", Q.Q8_0)
    with caplog.at_level(logging.WARNING):
        convert(path, tmp_path / "int4.safetensors", dtype="int4")
    assert "Q8_0 tensors do not map exactly onto tinybert's int4 layout" in caplog.text


def test_cli_convert(gguf_file, tmp_path):
    from tinybert.cli import main

    path, ref = gguf_file("llama", Q.Q4_0)
    out = tmp_path / "cli.safetensors"
    assert main(["convert", str(path), str(out), "--dtype", "fp32", "--quiet"]) == 0
    gen = tinybert.Generator(out)
    prompt = gen.tokenizer.encode(PROMPT_TEXTS[1]).ids
    np.testing.assert_allclose(gen.logits(np.array([prompt]))[0], _hf_logits(ref, prompt), atol=1e-4)


def test_other_quant_types_warn(hf_models, bpe_tokenizer_file, tmp_path, caplog):
    """A type the tests above do not cover (Q5_0) converts, with a warning naming it."""
    path = tmp_path / "q5.gguf"
    held = write_gguf(hf_models("llama"), bpe_tokenizer_file, path, Q.Q5_0)
    with caplog.at_level(logging.WARNING):
        out = convert(path, tmp_path / "model.safetensors", dtype="fp32")
    assert "Q5_0" in caplog.text
    gen = tinybert.Generator(out)
    prompt = gen.tokenizer.encode(PROMPT_TEXTS[2]).ids
    ref = _reference(hf_models("llama"), held)
    np.testing.assert_allclose(gen.logits(np.array([prompt]))[0], _hf_logits(ref, prompt), atol=1e-4)


def test_truncated_and_corrupt_files(gguf_file, tmp_path):
    path, _ = gguf_file("llama", Q.Q8_0)
    data = path.read_bytes()
    for cut in (20, 200, len(data) // 2, len(data) - 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ConversionError):
            convert(bad, tmp_path / "out.safetensors", dtype="fp32")
    # eight bytes of the metadata or tensor table overwritten (lengths, counts, types, shapes, offsets, text):
    # a clear error, or a file that still converts; never another exception
    rng = np.random.default_rng(0)
    header = gguf.GGUFReader(path).data_offset
    for i in range(40):
        corrupt = bytearray(data)
        at = int(rng.integers(8, header - 8))
        corrupt[at:at + 8] = b"\xff" * 8 if i % 2 else rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        bad = tmp_path / f"corrupt{i}.gguf"
        bad.write_bytes(bytes(corrupt))
        try:
            convert(bad, tmp_path / "out.safetensors", dtype="fp32", force=True)
        except (ConversionError, UnsupportedModelError):
            pass


def test_unsupported_architecture_and_bad_shapes(hf_models, bpe_tokenizer_file, tmp_path):
    path = tmp_path / "falcon.gguf"
    write_gguf(hf_models("llama"), bpe_tokenizer_file, path, Q.F32, arch="falcon")
    with pytest.raises(UnsupportedModelError, match="falcon"):
        convert(path, tmp_path / "out.safetensors", dtype="fp32")
    # metadata that does not match the tensors: a head count the weights are not
    model = copy.deepcopy(hf_models("qwen2"))
    model.config.intermediate_size = 96
    path = tmp_path / "shape.gguf"
    write_gguf(model, bpe_tokenizer_file, path, Q.F32)
    with pytest.raises(ConversionError, match="shape"):
        convert(path, tmp_path / "out.safetensors", dtype="fp32")
    # a layer count no file of this size holds is refused before anything is sized by it
    model.config.intermediate_size, model.config.num_hidden_layers = 128, 2 ** 30
    write_gguf(model, bpe_tokenizer_file, path, Q.F32)
    with pytest.raises(ConversionError, match="block_count"):
        convert(path, tmp_path / "out.safetensors", dtype="fp32")
