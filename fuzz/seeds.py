"""Tiny, valid tinybert files to seed the fuzzers and the hostile-input tests: an encoder (int8 and fp32), a
decoder (GPT-2 style), a Llama-style decoder with rotary positions and an encoder-decoder, a few kilobytes each,
with a 24-word WordLevel tokenizer; random weights. Built with the format's own shape tables and the converter's
writer, without torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tinybert_convert.writer import write_safetensors
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from tinybert import format as fmt
from tinybert.config import DecoderConfig, EncoderConfig, Seq2SeqConfig, TaskConfig

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "cat", "dog", "sat", "on", "mat", "ran", "and", "is",
         "big", "small", "red", "blue", "hello", "world", "café", "你好", "🙂", "</s>"]


def tokenizer_json() -> str:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok.to_str()


def _tensors(shapes: dict[str, tuple[int, ...]], quantization: str, seed: int,
             smooth: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        value = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        if name.endswith(".weight") and ("norm" in name):
            value += 1.0
        if quantization == "int8" and fmt.is_quantized_name(name):
            scale = np.abs(value).max(axis=1) / 127 + 1e-8
            out[name] = np.clip(np.rint(value / scale[:, None]), -127, 127).astype(np.int8)
            out[name + fmt.SCALE_SUFFIX] = scale.astype(np.float32)
            if smooth and name.endswith(("attn.qkv.weight", "mlp.up.weight", "attn.out.weight")):
                # 8-bit-input layers, as the converter writes int8 encoders (convert/smooth.py)
                out[name + fmt.SMOOTH_SUFFIX] = (rng.random(shape[1]) * 1.5 + 0.5).astype(np.float32)
        else:
            out[name] = value
    return out


def _write(path: Path, cfg, shapes: dict, task: TaskConfig, quantization: str, extra: dict | None = None) -> Path:
    metadata = {fmt.KEY_FORMAT: fmt.FORMAT_NAME, fmt.KEY_VERSION: str(fmt.FORMAT_VERSION),
                fmt.KEY_CONFIG: json.dumps(cfg.to_dict(), sort_keys=True),
                fmt.KEY_TOKENIZER: fmt.pack_tokenizer(tokenizer_json()),
                fmt.KEY_QUANTIZATION: quantization, fmt.KEY_TASK: json.dumps(task.to_dict(), sort_keys=True),
                fmt.KEY_TOKENIZER_OPTIONS: json.dumps({"mask_token": None, "clean_up_tokenization_spaces": False}),
                fmt.KEY_SOURCE: json.dumps({"model_type": "fuzz-seed"}), **(extra or {})}
    write_safetensors(path, _tensors(shapes, quantization, seed=len(path.name),
                                     smooth=isinstance(cfg, EncoderConfig)), metadata)
    return path


def encoder_config() -> EncoderConfig:
    return EncoderConfig(architecture="bert", vocab_size=len(WORDS), hidden_size=8, embedding_size=8, num_layers=1,
                         num_heads=2, intermediate_size=16, max_positions=16, type_vocab_size=2, activation="gelu",
                         norm_eps=1e-12, position_scheme="absolute", pad_token_id=0, max_length=16)


def mpnet_config() -> EncoderConfig:
    """MPNet-style: learned positions with RoBERTa's padding offset and a relative bias shared by the layers."""
    return EncoderConfig(architecture="mpnet", vocab_size=len(WORDS), hidden_size=8, embedding_size=8, num_layers=2,
                         num_heads=2, intermediate_size=16, max_positions=18, type_vocab_size=0, activation="gelu",
                         norm_eps=1e-12, position_scheme="padding_offset", pad_token_id=1, max_length=16,
                         relative_buckets=8, relative_max_distance=16)


def modernbert_config() -> EncoderConfig:
    """ModernBERT-style: pre-norm, GeGLU, rotary positions with two thetas, a local window on layer 1, no
    attention norm in layer 0."""
    return EncoderConfig(architecture="modernbert", vocab_size=len(WORDS), hidden_size=8, embedding_size=8,
                         num_layers=2, num_heads=2, intermediate_size=16, max_positions=16, type_vocab_size=0,
                         activation="gelu", norm_eps=1e-5, position_scheme="absolute", pad_token_id=0, max_length=16,
                         positions="rope", rope={"type": "default", "theta": 160000.0, "attention_scaling": 1.0},
                         pre_norm=True, first_attn_norm=False, gated_mlp=True, window=2, window_layers=(1,),
                         window_rope={"type": "default", "theta": 10000.0, "attention_scaling": 1.0})


def decoder_config() -> DecoderConfig:
    return DecoderConfig(architecture="gpt2", vocab_size=len(WORDS), hidden_size=8, num_layers=1, num_heads=2,
                         num_kv_heads=2, head_dim=4, intermediate_size=16, max_positions=24, norm="layernorm",
                         norm_eps=1e-5, activation="gelu_tanh", gated_mlp=False, positions="learned", rope=None,
                         attn_bias=True, attn_out_bias=True, mlp_bias=True, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_ids=(len(WORDS) - 1,), pad_token_id=None)


def rope_decoder_config() -> DecoderConfig:
    """Llama-style: RMS norms, SwiGLU, grouped-query attention, llama3 rotary positions, an untied head."""
    rope = {"type": "llama3", "theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8, "attention_scaling": 1.0}
    return DecoderConfig(architecture="llama", vocab_size=len(WORDS), hidden_size=8, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=4, intermediate_size=16, max_positions=24, norm="rmsnorm",
                         norm_eps=1e-6, activation="silu", gated_mlp=True, positions="rope", rope=rope,
                         attn_bias=False, attn_out_bias=False, mlp_bias=False, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_ids=(len(WORDS) - 1,), pad_token_id=None)


def seq2seq_config() -> Seq2SeqConfig:
    return Seq2SeqConfig(family="t5", vocab_size=len(WORDS), decoder_vocab_size=len(WORDS), hidden_size=8,
                         num_encoder_layers=1, num_decoder_layers=1, num_heads=2, head_dim=4, intermediate_size=16,
                         norm="rmsnorm", norm_eps=1e-6, pre_norm=True, activation="relu", gated_mlp=False,
                         positions="relative", max_positions=24, relative_buckets=8, relative_max_distance=16,
                         attn_scale=False, scale_embedding=False, layernorm_embedding=False, final_logits_bias=False,
                         tie_word_embeddings=True, lm_head_scale=1.0, share_embeddings=True,
                         decoder_start_token_id=0, eos_token_ids=(len(WORDS) - 1,), pad_token_id=0)


def write_seeds(folder: str | Path) -> dict[str, Path]:
    """The seed files, by name: encoder-int8, encoder-fp32, classifier-int8, tokens-int8 (NER), mlm-int8
    (fill-mask, tied decoder), qa-int8, mpnet-int8, modernbert-int8 (a mean-pooling classifier with ModernBERT's
    prediction head), decoder-int8, rope-int8 (Llama-style decoder), seq2seq-int8."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc = encoder_config()
    enc_shapes = fmt.encoder_tensor_shapes(enc.to_dict())
    pooling = {fmt.KEY_POOLING: json.dumps({"mode": "mean", "normalize": True})}
    prompted = {fmt.KEY_SENTENCE_TRANSFORMERS: json.dumps({      # the settings of a sentence-transformers model
        "prompts": {"query": "the ", "document": ""}, "default_prompt_name": "query", "similarity_fn_name": "dot",
        "truncate_dim": 8, "include_prompt": True, "activation_fn": None})}
    clf_task = TaskConfig(type="sequence-classification", labels=("neg", "pos"), pooler_activation="tanh")
    dec = decoder_config()
    rope = rope_decoder_config()
    s2s = seq2seq_config()

    def head(name: str, task: TaskConfig, extra: dict | None = None) -> Path:
        shapes = {**enc_shapes, **fmt.head_tensor_shapes(task.to_dict(), enc.to_dict())}
        return _write(folder / f"{name}.safetensors", enc, shapes, task, "int8", {**pooling, **(extra or {})})

    # The tiny vocabulary has no [MASK]: one of its words stands in.
    mask = {fmt.KEY_TOKENIZER_OPTIONS: json.dumps({"mask_token": "mat", "clean_up_tokenization_spaces": True})}
    mpnet, modern = mpnet_config(), modernbert_config()
    modern_task = TaskConfig(type="sequence-classification", labels=("neg", "pos"), pooler_activation="gelu",
                             pooling="mean", pooler_norm_eps=1e-5)
    return {
        "mpnet-int8": _write(folder / "mpnet-int8.safetensors", mpnet, fmt.encoder_tensor_shapes(mpnet.to_dict()),
                             TaskConfig(), "int8", pooling),
        "modernbert-int8": _write(folder / "modernbert-int8.safetensors", modern,
                                  {**fmt.encoder_tensor_shapes(modern.to_dict()),
                                   **fmt.head_tensor_shapes(modern_task.to_dict(), modern.to_dict())},
                                  modern_task, "int8", pooling),
        "tokens-int8": head("tokens-int8", TaskConfig(type="token-classification", labels=("O", "B-X", "I-X"))),
        "mlm-int8": head("mlm-int8", TaskConfig(type="masked-lm", mlm_size=8, mlm_activation="gelu"), mask),
        "qa-int8": head("qa-int8", TaskConfig(type="question-answering")),
        "encoder-int8": _write(folder / "encoder-int8.safetensors", enc, enc_shapes, TaskConfig(), "int8",
                               {**pooling, **prompted}),
        "encoder-fp32": _write(folder / "encoder-fp32.safetensors", enc, enc_shapes, TaskConfig(), "fp32", pooling),
        "classifier-int8": _write(folder / "classifier-int8.safetensors", enc,
                                  {**enc_shapes, **fmt.head_tensor_shapes(clf_task.to_dict(), enc.to_dict())},
                                  clf_task, "int8", pooling),
        "decoder-int8": _write(folder / "decoder-int8.safetensors", dec, fmt.decoder_tensor_shapes(dec.to_dict()),
                               TaskConfig(type="text-generation"), "int8"),
        "rope-int8": _write(folder / "rope-int8.safetensors", rope, fmt.decoder_tensor_shapes(rope.to_dict()),
                            TaskConfig(type="text-generation"), "int8"),
        "seq2seq-int8": _write(folder / "seq2seq-int8.safetensors", s2s, fmt.seq2seq_tensor_shapes(s2s.to_dict()),
                               TaskConfig(type="text2text-generation"), "int8"),
    }


if __name__ == "__main__":
    import sys

    for name, path in write_seeds(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus").items():
        print(name, path, path.stat().st_size)
