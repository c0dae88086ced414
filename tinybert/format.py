"""The tinybert file format: one safetensors file whose metadata carries everything but the weights.

Shared by the converter (writes) and the loader (reads); the only place where names are defined.

Metadata keys (all values are strings, as safetensors requires):
    format           "tinybert"
    format_version   FORMAT_VERSION as a decimal string
    config           canonical model config, JSON (see ``EncoderConfig``)
    tokenizer        the Hugging Face ``tokenizer.json`` text
    pooling          {"mode": "mean"|"cls"|"max"|"mean_sqrt_len", "normalize": bool}, JSON
    quantization     "int8" or "fp32"
    source           free-form description of the converted checkpoint, JSON

Canonical tensor names (``L`` is the layer index). A quantised 2-D tensor ``T`` is stored as int8
``T`` plus float32 ``T.scale`` with one scale per row (per output channel for linear weights, per
token for embedding tables): ``T_fp32[r, :] = T[r, :] * T.scale[r]``.

    embed.tokens [vocab, E]            embed.positions [max_positions, E]
    embed.token_types [types, E]       (only when the model has token types)
    embed.norm.weight / .bias [E]
    embed.proj.weight [H, E] / .bias   (only when E != H, ELECTRA)
    layers.L.attn.qkv.weight [3H, H] / .bias [3H]     (q, k, v stacked: one GEMM)
    layers.L.attn.out.weight [H, H] / .bias [H]
    layers.L.attn_norm.weight / .bias [H]
    layers.L.mlp.up.weight [I, H] / .bias [I]
    layers.L.mlp.down.weight [H, I] / .bias [H]
    layers.L.mlp_norm.weight / .bias [H]
"""

from __future__ import annotations

FORMAT_NAME = "tinybert"
FORMAT_VERSION = 1

KEY_FORMAT = "format"
KEY_VERSION = "format_version"
KEY_CONFIG = "config"
KEY_TOKENIZER = "tokenizer"
KEY_POOLING = "pooling"
KEY_QUANTIZATION = "quantization"
KEY_SOURCE = "source"

SCALE_SUFFIX = ".scale"
QUANTIZATIONS = ("int8", "fp32")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
POSITION_SCHEMES = ("absolute", "padding_offset")

# Tensors quantised to int8 (+ .scale) in an int8 file; everything else stays float32.
QUANTIZED_LINEARS = ("attn.qkv", "attn.out", "mlp.up", "mlp.down")
QUANTIZED_EMBEDDINGS = ("embed.tokens",)


def layer_prefix(i: int) -> str:
    return f"layers.{i}."


def encoder_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor an encoder file must hold (without .scale companions), with its shape."""
    e, h, i_dim = cfg["embedding_size"], cfg["hidden_size"], cfg["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embed.tokens": (cfg["vocab_size"], e),
        "embed.positions": (cfg["max_positions"], e),
        "embed.norm.weight": (e,),
        "embed.norm.bias": (e,),
    }
    if cfg["type_vocab_size"] > 0:
        shapes["embed.token_types"] = (cfg["type_vocab_size"], e)
    if e != h:
        shapes["embed.proj.weight"] = (h, e)
        shapes["embed.proj.bias"] = (h,)
    for layer in range(cfg["num_layers"]):
        p = layer_prefix(layer)
        shapes.update({
            p + "attn.qkv.weight": (3 * h, h),
            p + "attn.qkv.bias": (3 * h,),
            p + "attn.out.weight": (h, h),
            p + "attn.out.bias": (h,),
            p + "attn_norm.weight": (h,),
            p + "attn_norm.bias": (h,),
            p + "mlp.up.weight": (i_dim, h),
            p + "mlp.up.bias": (i_dim,),
            p + "mlp.down.weight": (h, i_dim),
            p + "mlp.down.bias": (h,),
            p + "mlp_norm.weight": (h,),
            p + "mlp_norm.bias": (h,),
        })
    return shapes


def is_quantized_name(name: str) -> bool:
    """Whether an int8 file stores ``name`` as int8 + ``name.scale``."""
    if name in QUANTIZED_EMBEDDINGS:
        return True
    return name.endswith(".weight") and any(f".{q}.weight" in "." + name for q in QUANTIZED_LINEARS)
