"""Decoder-only checkpoints (GPT-2, Llama family) → canonical config and tensors.

Like architectures.py for encoders: the only place that knows these families' Hugging Face names.
GPT-2 keeps its projections in ``Conv1D`` modules whose weights are stored [in, out]; they are
transposed here so every linear in the file is [out, in]. Q, K and V are fused into one tensor, and
a gated MLP's gate and up projections into one [2I, H] tensor (gate rows first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinybert.config import DecoderConfig
from tinybert.errors import ConversionError, ModelFileError, UnsupportedModelError
from tinybert.format import decoder_tensor_shapes

from .files import read_json
from .hfconfig import integer, number, string
from .rope import rope_from_hf_config

DECODER_FAMILIES = ("gpt2", "llama", "mistral", "qwen2")

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                     "gelu": "gelu", "relu": "relu"}


def _eos_ids(hf: dict, folder: Path) -> tuple[int, ...]:
    """EOS ids from generation_config.json (what transformers' generate uses), else config.json."""
    value = None
    if (folder / "generation_config.json").is_file():
        value = read_json(folder, "generation_config.json", dict).get("eos_token_id")
    if value is None:
        value = hf.get("eos_token_id")
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConversionError(f"eos_token_id {value!r} is not an integer or a list of integers")
    return tuple(ids)


def _optional_id(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _context(hf: dict, model_type: str) -> int:
    """The context length; a sliding attention window caps it, so tinybert never runs where its full
    attention and the model's windowed attention would differ."""
    context = integer(hf, "max_position_embeddings", minimum=1)
    window = integer(hf, "sliding_window", default=0)
    sliding = hf.get("use_sliding_window", model_type == "mistral")
    if sliding and window > 0:
        context = min(context, window)
    return context


def decoder_config(hf: dict, folder: Path) -> DecoderConfig:
    """Canonical config of a decoder-only checkpoint's ``config.json``."""
    model_type = string(hf, "model_type")
    if model_type not in DECODER_FAMILIES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not a supported decoder")
    if model_type == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise UnsupportedModelError("GPT-2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not "
                                        "supported")
        if hf.get("scale_attn_weights") is False:
            raise UnsupportedModelError("GPT-2 without scale_attn_weights is not supported")
        act = string(hf, "activation_function", default="gelu_new")
        if act not in _GPT2_ACTIVATIONS:
            raise UnsupportedModelError(f"GPT-2 activation {act!r} is not supported")
        hidden, heads = integer(hf, "n_embd", minimum=1), integer(hf, "n_head", minimum=1)
        fields = dict(
            architecture="gpt2", vocab_size=integer(hf, "vocab_size"), hidden_size=hidden,
            num_layers=integer(hf, "n_layer"), num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
            intermediate_size=integer(hf, "n_inner", default=4 * hidden), max_positions=integer(hf, "n_positions"),
            norm="layernorm", norm_eps=number(hf, "layer_norm_epsilon", default=1e-5),
            activation=_GPT2_ACTIVATIONS[act], gated_mlp=False, positions="learned", rope=None,
            attn_bias=True, attn_out_bias=True, mlp_bias=True,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)))
    else:
        if string(hf, "hidden_act", default="silu") != "silu":
            raise UnsupportedModelError(f"{model_type} activation {hf.get('hidden_act')!r} is not supported")
        try:
            rope = rope_from_hf_config(hf)
        except ValueError as exc:
            raise UnsupportedModelError(str(exc)) from None
        hidden, heads = integer(hf, "hidden_size", minimum=1), integer(hf, "num_attention_heads", minimum=1)
        qkv_bias = bool(hf.get("attention_bias", False)) or model_type == "qwen2"
        fields = dict(
            architecture=model_type, vocab_size=integer(hf, "vocab_size"), hidden_size=hidden,
            num_layers=integer(hf, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=integer(hf, "num_key_value_heads", default=heads, minimum=1),
            head_dim=integer(hf, "head_dim", default=hidden // heads, minimum=1),
            intermediate_size=integer(hf, "intermediate_size"), max_positions=_context(hf, model_type),
            norm="rmsnorm", norm_eps=number(hf, "rms_norm_eps", default=1e-6), activation="silu", gated_mlp=True,
            positions="rope", rope=rope, attn_bias=qkv_bias,
            attn_out_bias=bool(hf.get("attention_bias", False)) and model_type == "llama",
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
    cfg = DecoderConfig(**fields, bos_token_id=_optional_id(hf.get("bos_token_id")),
                        eos_token_ids=_eos_ids(hf, folder), pad_token_id=_optional_id(hf.get("pad_token_id")))
    try:
        cfg.validate()
    except ModelFileError as exc:
        raise ConversionError(f"config.json: {exc}") from None
    return cfg


def decoder_tensors(cfg: DecoderConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename, transpose (GPT-2 Conv1D) and fuse a decoder checkpoint's tensors into canonical float32."""
    def take(*names: str) -> np.ndarray:
        for name in names:
            if name in tensors:
                return np.ascontiguousarray(tensors[name], dtype=np.float32)
        raise ConversionError(f"checkpoint has no tensor {names[0]}")

    out: dict[str, np.ndarray] = {}
    if cfg.architecture == "gpt2":
        root = "transformer." if "transformer.wte.weight" in tensors else ""
        out["embed.tokens"] = take(root + "wte.weight")
        out["embed.positions"] = take(root + "wpe.weight")
        for i in range(cfg.num_layers):
            src, dst = f"{root}h.{i}.", f"layers.{i}."
            for canon, hf_name in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[dst + canon + ".weight"] = take(src + hf_name + ".weight")
                out[dst + canon + ".bias"] = take(src + hf_name + ".bias")
            for canon, hf_name in (("attn.qkv", "attn.c_attn"), ("attn.out", "attn.c_proj"),
                                   ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[dst + canon + ".weight"] = np.ascontiguousarray(take(src + hf_name + ".weight").T)
                out[dst + canon + ".bias"] = take(src + hf_name + ".bias")
        out["final_norm.weight"] = take(root + "ln_f.weight")
        out["final_norm.bias"] = take(root + "ln_f.bias")
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = take("lm_head.weight")
    else:
        root = "model." if "model.embed_tokens.weight" in tensors else ""
        out["embed.tokens"] = take(root + "embed_tokens.weight")
        for i in range(cfg.num_layers):
            src, dst = f"{root}layers.{i}.", f"layers.{i}."
            out[dst + "attn_norm.weight"] = take(src + "input_layernorm.weight")
            out[dst + "mlp_norm.weight"] = take(src + "post_attention_layernorm.weight")
            attn = src + "self_attn."
            out[dst + "attn.qkv.weight"] = np.concatenate(
                [take(attn + p + ".weight") for p in ("q_proj", "k_proj", "v_proj")], axis=0)
            if cfg.attn_bias:
                out[dst + "attn.qkv.bias"] = np.concatenate(
                    [take(attn + p + ".bias") for p in ("q_proj", "k_proj", "v_proj")], axis=0)
            out[dst + "attn.out.weight"] = take(attn + "o_proj.weight")
            if cfg.attn_out_bias:
                out[dst + "attn.out.bias"] = take(attn + "o_proj.bias")
            mlp = src + "mlp."
            out[dst + "mlp.up.weight"] = np.concatenate(
                [take(mlp + "gate_proj.weight"), take(mlp + "up_proj.weight")], axis=0)
            out[dst + "mlp.down.weight"] = take(mlp + "down_proj.weight")
            if cfg.mlp_bias:
                out[dst + "mlp.up.bias"] = np.concatenate([take(mlp + "gate_proj.bias"), take(mlp + "up_proj.bias")])
                out[dst + "mlp.down.bias"] = take(mlp + "down_proj.bias")
        out["final_norm.weight"] = take(root + "norm.weight")
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = take("lm_head.weight")
    expected = decoder_tensor_shapes(cfg.to_dict())
    for name, shape in expected.items():
        if out[name].shape != shape:
            raise ConversionError(f"tensor {name} has shape {out[name].shape}, config.json implies {shape}")
    return out
