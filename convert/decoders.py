"""Decoder-only checkpoints (GPT-2, Llama family, Qwen3, Phi-3, Gemma 3) → canonical config and tensors.

Like architectures.py for encoders: the only place that knows these families' Hugging Face names.
GPT-2 keeps its projections in ``Conv1D`` modules whose weights are stored [in, out]; they are
transposed here so every linear in the file is [out, in]. Q, K and V are fused into one tensor, and
a gated MLP's gate and up projections into one [2I, H] tensor (gate rows first); Phi-3 stores both fused
already, in that order. Gemma's RMSNorms multiply by (1 + w): the 1 is added to w here.
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

DECODER_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text")
_GATED_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                     "gelu": "gelu", "relu": "relu"}


def _eos_ids(hf: dict, folder: Path | None) -> tuple[int, ...]:
    """EOS ids from generation_config.json (what transformers' generate uses), else config.json."""
    value = None
    if folder is not None and (folder / "generation_config.json").is_file():
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


def _rope(hf: dict) -> dict:
    try:
        return rope_from_hf_config(hf)
    except ValueError as exc:
        raise UnsupportedModelError(str(exc)) from None


def _gemma3(hf: dict) -> dict:
    """Gemma 3's extra fields: scaled embeddings, q/k and post norms, the score scale, sliding layers with their
    own (local) rotary base. Rope settings come per layer type (transformers 5's rope_parameters) or as
    rope_theta + rope_scaling for global layers and rope_local_base_freq for sliding ones.

    With use_bidirectional_attention (EmbeddingGemma) every layer attends both ways, and a sliding layer's keys
    are those less than sliding_window // 2 + 1 positions away on either side: transformers' Gemma3TextConfig
    turns config.json's window into that exclusive bound, and its mask is |i − j| < bound."""
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if hf.get(name) is not None:
            raise UnsupportedModelError(f"Gemma 3 {name} is not supported")
    bidirectional = hf.get("use_bidirectional_attention") or False
    if not isinstance(bidirectional, bool):
        raise ConversionError("config.json: use_bidirectional_attention must be true or false")
    layers = integer(hf, "num_hidden_layers", minimum=1)
    types = hf.get("layer_types")
    if types is None:
        pattern = integer(hf, "sliding_window_pattern", default=6, minimum=1)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers or \
            not set(types) <= {"sliding_attention", "full_attention"}:
        raise ConversionError("config.json: layer_types must list sliding_attention / full_attention per layer")
    if "sliding_window" in hf and hf["sliding_window"] is None and "sliding_attention" in types:
        # sliding layers without a window, but with the local rope: not expressible as layer_windows
        raise UnsupportedModelError("Gemma 3 sliding_attention layers without a sliding_window are not supported")
    window = integer(hf, "sliding_window", default=4096, minimum=1)
    if bidirectional:
        window = window // 2 + 1
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        full, sliding = params["full_attention"], params.get("sliding_attention") or {}
        if not isinstance(full, dict) or not isinstance(sliding, dict):
            raise ConversionError("config.json: rope_parameters of a layer type must be a JSON object")
        rope = {"rope_theta": 1_000_000.0, **full}
        local = {"rope_theta": 10_000.0, **sliding}
        shared = {k: hf[k] for k in ("max_position_embeddings", "original_max_position_embeddings") if k in hf}
        global_rope = _rope({**shared, "rope_parameters": rope})
        local_rope = _rope({**shared, "rope_parameters": local})
    else:
        global_rope = _rope({**hf, "rope_theta": number(hf, "rope_theta", default=1_000_000.0)})
        local_rope = _rope({"rope_theta": number(hf, "rope_local_base_freq", default=10_000.0)})
    return dict(scale_embedding=True, qk_norm=True, post_norms=True, rope=global_rope, local_rope=local_rope,
                score_scale=number(hf, "query_pre_attn_scalar", default=256) ** -0.5,     # number() is positive
                layer_windows=tuple(window if t == "sliding_attention" else 0 for t in types),
                causal=not bidirectional)


def decoder_config(hf: dict, folder: Path | None) -> DecoderConfig:
    """Canonical config of a decoder-only checkpoint's ``config.json`` (its generation_config.json in ``folder``
    states the EOS ids when present; None: config.json states them, as for a GGUF file's translated metadata)."""
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
        gemma = model_type == "gemma3_text"
        act = string(hf, "hidden_activation" if gemma else "hidden_act",
                     default="gelu_pytorch_tanh" if gemma else "silu")
        if act not in _GATED_ACTIVATIONS:
            raise UnsupportedModelError(f"{model_type} activation {act!r} is not supported")
        hidden, heads = integer(hf, "hidden_size", minimum=1), integer(hf, "num_attention_heads", minimum=1)
        attention_bias = bool(hf.get("attention_bias", False))
        fields = dict(
            architecture=model_type, vocab_size=integer(hf, "vocab_size"), hidden_size=hidden,
            num_layers=integer(hf, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=integer(hf, "num_key_value_heads", default=heads, minimum=1),
            head_dim=integer(hf, "head_dim", default=hidden // heads, minimum=1),
            intermediate_size=integer(hf, "intermediate_size"), max_positions=_context(hf, model_type),
            norm="rmsnorm", norm_eps=number(hf, "rms_norm_eps", default=1e-6), activation=_GATED_ACTIVATIONS[act],
            gated_mlp=True, positions="rope", attn_bias=attention_bias or model_type == "qwen2",
            attn_out_bias=attention_bias and model_type in ("llama", "qwen3", "gemma3_text"),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)))
        if gemma:
            fields.update(_gemma3(hf))
        else:
            fields["rope"] = _rope(hf)
            fields["qk_norm"] = model_type == "qwen3"
        rope = fields["rope"]
        if rope["type"] == "longrope" and "long_factors" not in rope:
            # past the original context transformers needs the long factors: without them tinybert stops there
            fields["max_positions"] = min(fields["max_positions"], rope["original_max_position_embeddings"])
        params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        partial = hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
        if model_type == "phi3" and partial != 1.0:     # Phi-3 rotates only part of each head then
            raise UnsupportedModelError(f"Phi-3 partial_rotary_factor {partial!r} is not supported")
        if model_type == "phi3" and hf.get("sliding_window") is not None:     # every Phi-3 layer is windowed
            fields["layer_windows"] = (integer(hf, "sliding_window", minimum=1),) * fields["num_layers"]
    cfg = DecoderConfig(**fields, bos_token_id=_optional_id(hf.get("bos_token_id")),
                        eos_token_ids=_eos_ids(hf, folder), pad_token_id=_optional_id(hf.get("pad_token_id")))
    try:
        cfg.validate()
    except ModelFileError as exc:
        raise ConversionError(f"config.json: {exc}") from None
    return cfg


def decoder_tensors(cfg: DecoderConfig, tensors: dict[str, np.ndarray], lm_head: bool = True) -> dict[str, np.ndarray]:
    """Rename, transpose (GPT-2 Conv1D) and fuse a decoder checkpoint's tensors into canonical float32; without
    ``lm_head`` (an embedder) the LM head is left out."""
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
        if lm_head and not cfg.tie_word_embeddings:
            out["lm_head.weight"] = take("lm_head.weight")
    else:
        root = "model." if "model.embed_tokens.weight" in tensors else ""
        gemma = cfg.architecture == "gemma3_text"

        def norm(name: str) -> np.ndarray:      # Gemma's RMSNorm: x̂ · (1 + w), in float32 as transformers
            w = take(name)
            return w + np.float32(1.0) if gemma else w

        def fused(prefix: str, fused_name: str, names: tuple[str, ...], suffix: str) -> np.ndarray:
            if prefix + fused_name + suffix in tensors:     # Phi-3: qkv_proj (q | k | v), gate_up_proj (gate | up)
                return take(prefix + fused_name + suffix)
            return np.concatenate([take(prefix + p + suffix) for p in names], axis=0)

        out["embed.tokens"] = take(root + "embed_tokens.weight")
        for i in range(cfg.num_layers):
            src, dst = f"{root}layers.{i}.", f"layers.{i}."
            out[dst + "attn_norm.weight"] = norm(src + "input_layernorm.weight")
            if cfg.post_norms:      # Gemma 3: post_attention_layernorm norms the attention output
                out[dst + "attn_post_norm.weight"] = norm(src + "post_attention_layernorm.weight")
                out[dst + "mlp_norm.weight"] = norm(src + "pre_feedforward_layernorm.weight")
                out[dst + "mlp_post_norm.weight"] = norm(src + "post_feedforward_layernorm.weight")
            else:
                out[dst + "mlp_norm.weight"] = norm(src + "post_attention_layernorm.weight")
            attn = src + "self_attn."
            out[dst + "attn.qkv.weight"] = fused(attn, "qkv_proj", ("q_proj", "k_proj", "v_proj"), ".weight")
            if cfg.attn_bias:
                out[dst + "attn.qkv.bias"] = fused(attn, "qkv_proj", ("q_proj", "k_proj", "v_proj"), ".bias")
            if cfg.qk_norm:
                out[dst + "attn.q_norm.weight"] = norm(attn + "q_norm.weight")
                out[dst + "attn.k_norm.weight"] = norm(attn + "k_norm.weight")
            out[dst + "attn.out.weight"] = take(attn + "o_proj.weight")
            if cfg.attn_out_bias:
                out[dst + "attn.out.bias"] = take(attn + "o_proj.bias")
            mlp = src + "mlp."
            out[dst + "mlp.up.weight"] = fused(mlp, "gate_up_proj", ("gate_proj", "up_proj"), ".weight")
            out[dst + "mlp.down.weight"] = take(mlp + "down_proj.weight")
            if cfg.mlp_bias:
                out[dst + "mlp.up.bias"] = fused(mlp, "gate_up_proj", ("gate_proj", "up_proj"), ".bias")
                out[dst + "mlp.down.bias"] = take(mlp + "down_proj.bias")
        out["final_norm.weight"] = norm(root + "norm.weight")
        if lm_head and not cfg.tie_word_embeddings:
            out["lm_head.weight"] = take("lm_head.weight")
    expected = decoder_tensor_shapes(cfg.to_dict(), lm_head)
    for name, shape in expected.items():
        if out[name].shape != shape:
            raise ConversionError(f"tensor {name} has shape {out[name].shape}, config.json implies {shape}")
    return out
