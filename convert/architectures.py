"""The only place that knows Hugging Face weight names and config keys.

Each supported family maps its checkpoint onto tinybert's canonical names (tinybert/format.py) and
its config onto ``EncoderConfig``. Families differ only in these tables, never in runtime code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinybert.config import EncoderConfig
from tinybert.errors import ConversionError, ModelFileError, UnsupportedModelError
from tinybert.format import REL_EMBEDDINGS, REL_NORM, encoder_tensor_shapes

from .decoders import DECODER_FAMILIES
from .hfconfig import integer, number, string, strings
from .rope import rope_from_hf_config
from .seq2seq import SEQ2SEQ_FAMILIES

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "relu": "relu"}


@dataclass(frozen=True)
class LayerNames:
    """HF names (relative to ``{prefix}{layer_root}.{i}.``) of the parts of one encoder layer; ``qkv`` names a
    fused q | k | v projection (ModernBERT) in place of ``query``, ``key``, ``value``."""

    query: str
    key: str
    value: str
    attn_out: str
    attn_norm: str
    up: str
    down: str
    mlp_norm: str
    qkv: str | None = None


BERT_LAYER = LayerNames(
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    attn_out="attention.output.dense", attn_norm="attention.output.LayerNorm",
    up="intermediate.dense", down="output.dense", mlp_norm="output.LayerNorm")

DISTILBERT_LAYER = LayerNames(
    query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
    attn_out="attention.out_lin", attn_norm="sa_layer_norm",
    up="ffn.lin1", down="ffn.lin2", mlp_norm="output_layer_norm")

MPNET_LAYER = LayerNames(
    query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
    attn_out="attention.attn.o", attn_norm="attention.LayerNorm",
    up="intermediate.dense", down="output.dense", mlp_norm="output.LayerNorm")

# ModernBERT's Wi is [2I, H] with the activated half first (ModernBertMLP: input, gate = chunk(2);
# act(input) * gate): tinybert's gated MLP, gate rows first, as it is.
MODERNBERT_LAYER = LayerNames(
    query="", key="", value="", qkv="attn.Wqkv", attn_out="attn.Wo", attn_norm="attn_norm",
    up="mlp.Wi", down="mlp.Wo", mlp_norm="mlp_norm")


@dataclass(frozen=True)
class EmbeddingNames:
    """HF names (relative to the base-model prefix) of the embedding tables and norm; None: not in the family."""

    tokens: str = "embeddings.word_embeddings"
    positions: str | None = "embeddings.position_embeddings"
    token_types: str | None = "embeddings.token_type_embeddings"
    norm: str = "embeddings.LayerNorm"


def _mpnet(hf: dict) -> dict:
    """MPNet's relative bias: MPNetEncoder.compute_position_bias buckets with its defaults, 32 buckets and a
    distance of 128, whatever relative_attention_num_buckets says (the table only has to hold 32 rows), and
    its embeddings hard-code padding_idx 1 for the position ids."""
    if integer(hf, "relative_attention_num_buckets", default=32, minimum=1) < 32:
        raise UnsupportedModelError("relative_attention_num_buckets below 32: MPNet buckets into 32")
    return {"relative_buckets": 32, "relative_max_distance": 128, "pad_token_id": 1}


def _modernbert_rope(hf: dict, layer_type: str, theta_key: str, default_theta: float) -> dict:
    params = hf.get("rope_parameters")
    params = params.get(layer_type) if isinstance(params, dict) else None
    if not isinstance(params, dict):
        params = {"rope_type": "default", "rope_theta": number(hf, theta_key, default=default_theta)}
    try:
        return rope_from_hf_config({"rope_parameters": params,
                                    "max_position_embeddings": hf.get("max_position_embeddings")})
    except ValueError as exc:
        raise UnsupportedModelError(f"config.json {layer_type} rope: {exc}") from None


def _modernbert(hf: dict) -> dict:
    """Pre-norm blocks with GeGLU MLPs, rotary positions (two thetas) and local attention (±local_attention / 2)
    on all layers but every global_attn_every_n_layers-th (or as layer_types says)."""
    layers = integer(hf, "num_hidden_layers", minimum=1)
    types = strings(hf, "layer_types") or [
        "full_attention" if i % integer(hf, "global_attn_every_n_layers", default=3, minimum=1) == 0
        else "sliding_attention" for i in range(layers)]
    if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
        raise UnsupportedModelError(f"config.json layer_types must be {layers} of full_attention, sliding_attention")
    if hf.get("classifier_pooling", "cls") not in ("cls", "mean"):
        raise UnsupportedModelError(f"classifier_pooling {hf['classifier_pooling']!r} is not one of cls, mean")
    windowed = tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")
    return {"positions": "rope", "pre_norm": True, "first_attn_norm": False, "gated_mlp": True,
            "rope": _modernbert_rope(hf, "full_attention", "global_rope_theta", 160_000.0),
            "window": integer(hf, "local_attention", default=128, minimum=2) // 2 if windowed else 0,
            "window_layers": windowed,
            "window_rope": _modernbert_rope(hf, "sliding_attention", "local_rope_theta", 10_000.0) if windowed
            else None}


DEBERTA_LAYER = LayerNames(
    query="attention.self.query_proj", key="attention.self.key_proj", value="attention.self.value_proj",
    attn_out="attention.output.dense", attn_norm="attention.output.LayerNorm",
    up="intermediate.dense", down="output.dense", mlp_norm="output.LayerNorm")


@dataclass(frozen=True)
class Family:
    """One encoder family: where its layers and embeddings live, how it numbers positions, what else it has
    (the relative bias table, the final norm), the EncoderConfig fields only it sets (``config``), and whether
    projections and norms may lack a bias (stored as zeros then)."""

    layer_root: str
    layer: LayerNames
    position_scheme: str
    embeddings: EmbeddingNames = field(default_factory=EmbeddingNames)
    relative_bias: str | None = None
    final_norm: str | None = None
    config: Callable[[dict], dict] | None = None
    optional_biases: bool = False


FAMILIES = {
    "bert": Family("encoder.layer", BERT_LAYER, "absolute"),
    "electra": Family("encoder.layer", BERT_LAYER, "absolute"),
    "roberta": Family("encoder.layer", BERT_LAYER, "padding_offset"),
    "xlm-roberta": Family("encoder.layer", BERT_LAYER, "padding_offset"),
    "camembert": Family("encoder.layer", BERT_LAYER, "padding_offset"),
    "distilbert": Family("transformer.layer", DISTILBERT_LAYER, "absolute"),
    "mpnet": Family("encoder.layer", MPNET_LAYER, "padding_offset", EmbeddingNames(token_types=None),
                    relative_bias="encoder.relative_attention_bias", config=_mpnet),
    "modernbert": Family("layers", MODERNBERT_LAYER, "absolute",
                         EmbeddingNames("embeddings.tok_embeddings", None, None, "embeddings.norm"),
                         final_norm="final_norm", config=_modernbert, optional_biases=True),
    # "none" without position_biased_input (deberta_fields says)
    "deberta-v2": Family("encoder.layer", DEBERTA_LAYER, "absolute", config=lambda hf: deberta_fields(hf)),
}


def deberta_fields(hf: dict) -> dict:
    """EncoderConfig fields of a DeBERTa-v2/v3 config.json (DebertaV2Config's keys and defaults); what the
    runtime does not implement is refused."""
    if integer(hf, "conv_kernel_size", default=0) > 0:
        raise UnsupportedModelError("DeBERTa conv_kernel_size > 0 (the encoder's convolution layer) is not supported")
    hidden, heads = integer(hf, "hidden_size", minimum=1), integer(hf, "num_attention_heads", minimum=1)
    if integer(hf, "embedding_size", default=hidden) != hidden:
        raise UnsupportedModelError("DeBERTa embedding_size != hidden_size (an embedding projection before the "
                                    "LayerNorm) is not supported")
    if heads and integer(hf, "attention_head_size", default=hidden // heads) * heads != hidden:
        raise UnsupportedModelError("DeBERTa attention_head_size · heads != hidden_size is not supported")
    terms = hf.get("pos_att_type") or []
    if isinstance(terms, str):
        terms = [x.strip() for x in terms.lower().split("|")]
    if not isinstance(terms, list) or not all(isinstance(x, str) for x in terms):
        raise ConversionError("config.json pos_att_type must be a list of strings or a '|'-separated string")
    unknown = sorted(set(terms) - {"c2p", "p2c"})
    if unknown:
        raise UnsupportedModelError(f"DeBERTa pos_att_type {unknown} is not supported (only c2p, p2c)")
    relative = bool(hf.get("relative_attention", False))
    if not relative:
        if terms:     # transformers still scales the scores by them, with no term to scale
            raise UnsupportedModelError("DeBERTa pos_att_type without relative_attention is not supported")
        return {"position_scheme": "absolute" if hf.get("position_biased_input", True) else "none"}
    if terms and not hf.get("share_att_key", False):
        raise UnsupportedModelError("DeBERTa without share_att_key (separate position projections) is not supported")
    norm_rel = [x.strip() for x in string(hf, "norm_rel_ebd", default="none").lower().split("|")]
    if set(norm_rel) - {"none", "layer_norm"}:
        raise UnsupportedModelError(f"DeBERTa norm_rel_ebd {hf.get('norm_rel_ebd')!r} is not supported")
    max_relative = hf.get("max_relative_positions", -1)
    if isinstance(max_relative, int) and not isinstance(max_relative, bool) and max_relative < 1:
        max_relative = integer(hf, "max_position_embeddings", minimum=1)   # transformers' fallback
    else:
        max_relative = integer(hf, "max_relative_positions", minimum=1)
    buckets = hf.get("position_buckets", -1)
    buckets = 0 if isinstance(buckets, int) and not isinstance(buckets, bool) and buckets <= 0 else \
        integer(hf, "position_buckets", minimum=1)
    return {"position_scheme": "absolute" if hf.get("position_biased_input", True) else "none",
            "disentangled": tuple(dict.fromkeys(terms)), "relative_buckets": buckets,
            "relative_max_distance": max_relative, "rel_norm": "layer_norm" in norm_rel}


def hf_activation(hf: dict) -> str:
    """The canonical name of the encoder's hidden activation (BERT hidden_act, DistilBERT activation)."""
    act_name = string(hf, "hidden_act", "activation", "hidden_activation")
    if act_name is None:
        raise UnsupportedModelError("config.json has none of hidden_act, activation, hidden_activation")
    if act_name not in HF_ACTIVATIONS:
        raise UnsupportedModelError(f"activation {act_name!r} is not supported; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[act_name]


def supported_model_types() -> str:
    """The model_type values the converter takes, for messages; read from the tables that drive it."""
    return (f"encoders {', '.join(sorted(FAMILIES))}; decoders {', '.join(sorted(DECODER_FAMILIES))}; "
            f"encoder-decoders {', '.join(sorted(SEQ2SEQ_FAMILIES))}")


def check_model_type(model_type: str | None) -> None:
    """UnsupportedModelError unless some part of the converter handles ``model_type``."""
    if model_type not in (*FAMILIES, *DECODER_FAMILIES, *SEQ2SEQ_FAMILIES):
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported (supported: "
                                    f"{supported_model_types()}); convert a checkpoint of one of those types")


def encoder_config(hf: dict, max_seq_length: int | None = None) -> EncoderConfig:
    """Canonical config from a Hugging Face ``config.json`` dict."""
    model_type = string(hf, "model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported; supported: {supported_model_types()}")
    family = FAMILIES[model_type]
    if hf.get("position_embedding_type", "absolute") not in ("absolute", None):
        raise UnsupportedModelError(
            f"position_embedding_type {hf['position_embedding_type']!r} is not supported (only absolute)")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise UnsupportedModelError("decoder-configured encoders (is_decoder/add_cross_attention) are not supported")
    activation = hf_activation(hf)
    extra = family.config(hf) if family.config else {}
    scheme = extra.pop("position_scheme", family.position_scheme)
    hidden = integer(hf, "hidden_size", "dim", minimum=1)
    pad = extra.pop("pad_token_id", None)
    pad = integer(hf, "pad_token_id", default=0) if pad is None else pad
    max_positions = integer(hf, "max_position_embeddings", minimum=1)
    offset = pad + 1 if scheme == "padding_offset" else 0
    max_length = max_positions - offset
    if max_seq_length:
        max_length = min(max_length, max_seq_length)
    if max_length <= 0:
        raise UnsupportedModelError("max_position_embeddings leaves no room for tokens after the padding offset")
    heads = integer(hf, "num_attention_heads", "n_heads", minimum=1)
    if hidden % heads:
        raise UnsupportedModelError("hidden_size is not a multiple of num_attention_heads")
    cfg = EncoderConfig(
        architecture=model_type,
        vocab_size=integer(hf, "vocab_size", minimum=1),
        hidden_size=hidden,
        embedding_size=integer(hf, "embedding_size", default=hidden, minimum=1),
        num_layers=integer(hf, "num_hidden_layers", "n_layers", minimum=1),
        num_heads=heads,
        intermediate_size=integer(hf, "intermediate_size", "hidden_dim", minimum=1),
        max_positions=max_positions,
        type_vocab_size=integer(hf, "type_vocab_size", default=0) if family.embeddings.token_types else 0,
        activation=activation,
        norm_eps=number(hf, "layer_norm_eps", "norm_eps", default=1e-12),
        position_scheme=scheme,
        pad_token_id=pad,
        max_length=max_length,
        **extra,
    )
    try:    # the runtime's own check of the numbers (ranges, consistency), as the loader will do
        cfg.validate()
    except ModelFileError as exc:
        raise ConversionError(f"config.json: {exc}") from None
    return cfg


def find_prefix(tensors: dict[str, np.ndarray]) -> str:
    """The name prefix of the base model ('', 'bert.', 'roberta.', 'model.', ...) inside a task checkpoint."""
    suffixes = sorted({family.embeddings.tokens + ".weight" for family in FAMILIES.values()})
    candidates = sorted((k[: -len(suffix)] for k in tensors for suffix in suffixes if k.endswith(suffix)), key=len)
    if not candidates:
        raise UnsupportedModelError(f"no tensor named '*{suffixes[0]}' in the checkpoint")
    return candidates[0]


def legacy_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Old TF-ported checkpoints name LayerNorm parameters gamma/beta.
    out = {}
    for name, value in tensors.items():
        if name.endswith(".gamma"):
            name = name[:-6] + ".weight"
        elif name.endswith(".beta"):
            name = name[:-5] + ".bias"
        out[name] = value
    return out


def canonical_tensors(hf: dict, cfg: EncoderConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename (and fuse q/k/v of) a checkpoint's tensors into canonical float32 tensors."""
    family = FAMILIES[cfg.architecture]
    tensors = legacy_names(tensors)
    prefix = find_prefix(tensors)

    def take(name: str, like: np.ndarray | None = None) -> np.ndarray:
        """The tensor ``name``; with ``like``, a missing bias of a family without biases is zeros."""
        full = prefix + name
        if full not in tensors:
            if like is not None and family.optional_biases:
                return np.zeros(like.shape[0], dtype=np.float32)
            raise ConversionError(f"checkpoint has no tensor {full}")
        return np.ascontiguousarray(tensors[full], dtype=np.float32)

    def linear(dst: str, src: str) -> None:     # also a norm: weight and bias
        out[dst + ".weight"] = take(src + ".weight")
        out[dst + ".bias"] = take(src + ".bias", like=out[dst + ".weight"])

    emb = family.embeddings
    out = {"embed.tokens": take(emb.tokens + ".weight")}
    linear("embed.norm", emb.norm)
    if cfg.positions == "learned" and cfg.position_scheme != "none":   # "none": DeBERTa-v3, positions in attention
        out["embed.positions"] = take(emb.positions + ".weight")
    if cfg.relative_buckets and not cfg.disentangled:
        # MPNet buckets into the first relative_buckets rows of its table (see _mpnet).
        out["rel_bias"] = take(family.relative_bias + ".weight")[:cfg.relative_buckets]
    if cfg.disentangled:     # DeBERTa's relative embeddings, shared by every layer
        out[REL_EMBEDDINGS] = take("encoder.rel_embeddings.weight")
        if cfg.rel_norm:
            out[REL_NORM + ".weight"] = take("encoder.LayerNorm.weight")
            out[REL_NORM + ".bias"] = take("encoder.LayerNorm.bias")
    if cfg.type_vocab_size > 0:
        out["embed.token_types"] = take(emb.token_types + ".weight")
    if cfg.embedding_size != cfg.hidden_size:
        linear("embed.proj", "embeddings_project")
    if family.final_norm:
        linear("final_norm", family.final_norm)
    names = family.layer
    for i in range(cfg.num_layers):
        src = f"{family.layer_root}.{i}."
        dst = f"layers.{i}."
        if names.qkv:
            linear(dst + "attn.qkv", src + names.qkv)
        else:
            parts = (names.query, names.key, names.value)
            out[dst + "attn.qkv.weight"] = np.concatenate([take(src + n + ".weight") for n in parts], axis=0)
            out[dst + "attn.qkv.bias"] = np.concatenate([take(src + n + ".bias") for n in parts], axis=0)
        for canon, hf_name in (("attn.out", names.attn_out), ("attn_norm", names.attn_norm),
                               ("mlp.up", names.up), ("mlp.down", names.down), ("mlp_norm", names.mlp_norm)):
            if canon == "attn_norm" and i == 0 and not cfg.first_attn_norm:
                continue    # ModernBERT's first layer: an Identity, no tensors
            linear(dst + canon, src + hf_name)
    for layer_name in tensors:
        if layer_name.startswith(prefix + f"{family.layer_root}.{cfg.num_layers}."):
            raise ConversionError(f"checkpoint has more layers than num_hidden_layers={cfg.num_layers}")
    expected = encoder_tensor_shapes(cfg.to_dict())
    for name, shape in expected.items():
        if out[name].shape != shape:
            raise ConversionError(
                f"tensor {name} has shape {out[name].shape}, config.json implies {shape}")
    return out
