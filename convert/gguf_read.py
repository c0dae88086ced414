"""A GGUF file (llama.cpp's format) → what the Hugging Face decoder conversion takes: a config.json dict and a
state dict of float32 tensors under Hugging Face names (convert/decoders.py does the rest, as for a folder).

So GGUF support is a translation of names and conventions, not a second converter. The conventions undone here
are those of llama.cpp's convert_hf_to_gguf.py (its ``conversion/`` package):

* tensor names: ``token_embd``, ``blk.N.attn_q`` / ``attn_k`` / ``attn_v`` / ``attn_output``, ``ffn_gate`` /
  ``ffn_up`` / ``ffn_down``, ``attn_norm``, ``ffn_norm``, ``output_norm``, ``output`` (absent when the head is
  tied to the embeddings); a tensor of ``ne = [in, out]`` is the numpy array ``[out, in]``, as Hugging Face stores
  it;
* the llama architecture's q and k rows are permuted (``LlamaModel.permute``: each head's two rotary halves
  interleaved, for llama.cpp's pairwise rope); the permutation is undone here, on weights and biases;
* Llama 3's rope scaling is not in the metadata but in a ``rope_freqs`` tensor (the divisor of each rotary
  frequency); that is the runtime's longrope with those factors at the original context (attention scaling 1);
* qwen2's q, k and v have biases; qwen3 has q and k RMSNorms (``attn_q_norm`` / ``attn_k_norm``);
* gemma3 stores its RMSNorm weights as 1 + w (undone here: the decoder conversion adds the 1, as for a folder),
  and leaves out what llama.cpp derives (the sliding layers' pattern, the query scale);
* phi3 stores q, k, v fused (``attn_qkv``) and gate and up fused (``ffn_up``), as Hugging Face does, and its
  longrope factors as ``rope_factors_short`` / ``rope_factors_long`` tensors.

Quantised tensors are dequantised to float32 with gguf-py's reference code (``gguf.quants.dequantize``): the
conversion then quantises as the user's dtype says, like any float checkpoint (int4 keeps the groups that lie on
a 4-bit grid already, so a Q4_0 file's weights come through bit for bit: convert/int4.py). Every size is checked before
anything is allocated: the metadata makes a config that tinybert/config.py validates, every tensor's shape must
be the one that config implies, and the sum of all elements is bounded; a file gguf-py cannot parse (truncated,
corrupt) is a ConversionError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinybert.errors import ConversionError, UnsupportedModelError

from .gguf_vocab import tokenizer_from_gguf

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
MAX_ELEMENTS = 1 << 36      # 64 G parameters (256 GB of float32): far past any model a CPU runs, short of a lie
_TESTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")     # what tests/convert/test_gguf.py checks end to end

@dataclass(frozen=True)
class Architecture:
    """How convert_hf_to_gguf.py stores one architecture (its conversion/ class for it)."""

    model_type: str             # the Hugging Face model_type it was made from
    permuted: bool = False      # q/k rows permuted for llama.cpp's pairwise rope (LlamaModel.permute)
    qkv_bias: bool = False      # q, k and v have biases (Qwen2)
    qk_norm: bool = False       # attn_q_norm / attn_k_norm (Qwen3, Gemma 3)
    post_norms: bool = False    # Gemma 3's four norms a layer (post_attention_norm, ffn_norm, post_ffw_norm)
    norm_plus_one: bool = False     # every *norm.weight stored as 1 + w (Gemma3Model.norm_shift)
    fused: bool = False         # attn_qkv (q | k | v) and ffn_up (gate | up) fused, as Phi-3 stores them


ARCHITECTURES = {
    "llama": Architecture("llama", permuted=True),
    "qwen2": Architecture("qwen2", qkv_bias=True),
    "qwen3": Architecture("qwen3", qk_norm=True),
    "gemma3": Architecture("gemma3_text", qk_norm=True, post_norms=True, norm_plus_one=True),
    "phi3": Architecture("phi3", fused=True),
}


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


@dataclass
class GgufModel:
    """What a GGUF file holds, in Hugging Face terms."""

    hf_config: dict                     # as config.json would state it
    tensors: dict[str, np.ndarray]      # Hugging Face names, float32
    tokenizer: str                      # tokenizer.json text
    chat_template: str | None           # tokenizer.chat_template
    special_tokens: dict[str, str]      # bos_token, eos_token, ... (their texts), for the chat template
    dequantised: list[str]              # the GGUF tensor types that were dequantised


class _Metadata:
    """Typed reads of a GGUF file's key-value metadata, each a ConversionError naming the key when wrong."""

    def __init__(self, reader, path: Path) -> None:
        self.reader, self.path = reader, path

    def raw(self, key: str) -> object:
        field = self.reader.get_field(key)
        if field is None:
            return None
        try:
            return field.contents()
        except Exception as exc:    # gguf-py's own decoding (UTF-8, array parts) of a corrupt field
            raise ConversionError(f"{self.path}: metadata {key} is unreadable: {type(exc).__name__}") from None

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int | None:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConversionError(f"{self.path}: GGUF metadata has no {key}")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2 ** 31:
            raise ConversionError(f"{self.path}: GGUF metadata {key} must be an integer in [{minimum}, 2**31), "
                                  f"got {str(value)[:60]}")
        return value

    def number(self, key: str, default: float | None = None) -> float | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConversionError(f"{self.path}: GGUF metadata {key} must be a positive number, got {str(value)[:60]}")
        return float(value)

    def string(self, key: str, default: str | None = None) -> str | None:
        return self._typed(key, default, str, "a string")

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, default, bool, "true or false")

    def _typed(self, key: str, default: object, kind: type, what: str):
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise ConversionError(f"{self.path}: GGUF metadata {key} must be {what}")
        return value

    def array(self, key: str, kind: type) -> list | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise ConversionError(f"{self.path}: GGUF metadata {key} must be a list of {kind.__name__}")
        return value


def _open(path: Path):
    try:
        import gguf
    except ImportError:
        raise ConversionError("reading GGUF files needs the gguf package (llama.cpp's gguf-py): "
                              "pip install 'tinybert[gguf]'") from None
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:    # gguf-py raises ValueError, KeyError, IndexError, ... for a file it cannot parse
        raise ConversionError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {str(exc)[:200]})") from None


def _hf_config(meta: _Metadata, arch: str, kind: Architecture, names: set[str], vocab: int) -> dict:
    """config.json of the model, from ``{arch}.*`` metadata."""
    hidden = meta.integer(f"{arch}.embedding_length", minimum=1)
    heads = meta.integer(f"{arch}.attention.head_count", minimum=1)
    head_dim = meta.integer(f"{arch}.attention.key_length", default=hidden // heads, minimum=1)
    if meta.integer(f"{arch}.attention.value_length", default=head_dim) != head_dim:
        raise UnsupportedModelError(f"{meta.path}: key and value heads of different widths are not supported")
    if meta.integer(f"{arch}.rope.dimension_count", default=head_dim) != head_dim:
        raise UnsupportedModelError(f"{meta.path}: rope over part of each head (rope.dimension_count) is not "
                                    "supported")
    layers = meta.integer(f"{arch}.block_count", minimum=1)
    if layers > len(names):     # each layer has tensors of its own: bounds the name table built from the count
        raise ConversionError(f"{meta.path}: {arch}.block_count {layers} is more than the file's {len(names)} tensors")
    hf = {
        "model_type": kind.model_type, "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.integer(f"{arch}.attention.head_count_kv", default=heads, minimum=1),
        "head_dim": head_dim,
        "intermediate_size": meta.integer(f"{arch}.feed_forward_length", minimum=1),
        "max_position_embeddings": meta.integer(f"{arch}.context_length", minimum=1),
        "rms_norm_eps": meta.number(f"{arch}.attention.layer_norm_rms_epsilon", default=1e-6),
        "rope_theta": meta.number(f"{arch}.rope.freq_base", default=1_000_000.0 if arch == "gemma3" else 10000.0),
        "tie_word_embeddings": "output.weight" not in names,
        "_name_or_path": meta.string("general.name", default=meta.path.name)[:1024],
    }
    scaling = meta.string(f"{arch}.rope.scaling.type", default="none")
    if scaling == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": meta.number(f"{arch}.rope.scaling.factor")}
    elif scaling not in ("none", "longrope"):      # longrope: its factors are tensors (_with_rope_factors)
        raise UnsupportedModelError(f"{meta.path}: rope scaling {scaling!r} is not supported")
    window = meta.integer(f"{arch}.attention.sliding_window", default=0)
    if arch == "gemma3":
        hf.update(_gemma3(meta, layers, window, head_dim, hidden // heads))
    if arch == "phi3":
        hf["sliding_window"] = window or None        # 0: no window (Phi-4), as convert_hf_to_gguf.py writes it
        hf["original_max_position_embeddings"] = meta.integer(f"{arch}.rope.scaling.original_context_length",
                                                              default=hf["max_position_embeddings"], minimum=1)
        hf["rope_attention_factor"] = meta.number(f"{arch}.rope.scaling.attn_factor", default=1.0)
    return hf


def _gemma3(meta: _Metadata, layers: int, window: int, head_dim: int, width: int) -> dict:
    """Gemma 3's settings as llama.cpp reads them (src/models/gemma3.cpp): sliding layers by the
    sliding_window_pattern (a flag per layer, or every n-th layer global, n = 6 by default), their rope base
    rope.freq_base_swa (10000 by default), and the query scale 1/√head_dim but for the 27B model (62 layers),
    1/√(hidden / heads): query_pre_attn_scalar is not in the file."""
    if meta.raw("gemma3.final_logit_softcapping"):
        raise UnsupportedModelError(f"{meta.path}: Gemma 3 final_logit_softcapping is not supported")
    pattern = meta.raw("gemma3.attention.sliding_window_pattern")
    if window == 0:
        sliding = [False] * layers
    elif isinstance(pattern, list):
        if len(pattern) != layers or not all(isinstance(flag, bool) for flag in pattern):
            raise ConversionError(f"{meta.path}: gemma3.attention.sliding_window_pattern must flag every layer")
        sliding = pattern
    else:
        every = meta.integer("gemma3.attention.sliding_window_pattern", default=6, minimum=1)
        sliding = [i % every < every - 1 for i in range(layers)]
    return {"hidden_activation": "gelu_pytorch_tanh", "sliding_window": window or None,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            "rope_local_base_freq": meta.number("gemma3.rope.freq_base_swa", default=10000.0),
            "query_pre_attn_scalar": width if layers == 62 else head_dim}


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's LlamaModel.permute: per head, rows (pairs, 2) back to (2, pairs)."""
    return np.ascontiguousarray(w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:])
                                .swapaxes(1, 2).reshape(w.shape))


def _expected(hf: dict, kind: Architecture) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name → (Hugging Face name, numpy shape) of every tensor the architecture may hold."""
    h, d, i_dim, v = hf["hidden_size"], hf["head_dim"], hf["intermediate_size"], hf["vocab_size"]
    q, kv = hf["num_attention_heads"] * d, hf["num_key_value_heads"] * d
    names = {"token_embd.weight": ("model.embed_tokens.weight", (v, h)),
             "output_norm.weight": ("model.norm.weight", (h,)),
             "output.weight": ("lm_head.weight", (v, h)),
             "rope_freqs.weight": ("rope_freqs", (d // 2,))}
    if kind.fused:
        names.update({"rope_factors_long.weight": ("rope_factors_long", (d // 2,)),
                      "rope_factors_short.weight": ("rope_factors_short", (d // 2,))})
    for n in range(hf["num_hidden_layers"]):
        g, t = f"blk.{n}.", f"model.layers.{n}."
        names.update({
            g + "attn_norm.weight": (t + "input_layernorm.weight", (h,)),
            g + "attn_output.weight": (t + "self_attn.o_proj.weight", (h, q)),
            g + "ffn_down.weight": (t + "mlp.down_proj.weight", (h, i_dim)),
        })
        if kind.fused:
            names.update({g + "attn_qkv.weight": (t + "self_attn.qkv_proj.weight", (q + 2 * kv, h)),
                          g + "ffn_up.weight": (t + "mlp.gate_up_proj.weight", (2 * i_dim, h))})
        else:
            names.update({g + "attn_q.weight": (t + "self_attn.q_proj.weight", (q, h)),
                          g + "attn_k.weight": (t + "self_attn.k_proj.weight", (kv, h)),
                          g + "attn_v.weight": (t + "self_attn.v_proj.weight", (kv, h)),
                          g + "ffn_gate.weight": (t + "mlp.gate_proj.weight", (i_dim, h)),
                          g + "ffn_up.weight": (t + "mlp.up_proj.weight", (i_dim, h))})
        if kind.post_norms:
            names.update({g + "post_attention_norm.weight": (t + "post_attention_layernorm.weight", (h,)),
                          g + "ffn_norm.weight": (t + "pre_feedforward_layernorm.weight", (h,)),
                          g + "post_ffw_norm.weight": (t + "post_feedforward_layernorm.weight", (h,))})
        else:
            names[g + "ffn_norm.weight"] = (t + "post_attention_layernorm.weight", (h,))
        if kind.qkv_bias:
            names.update({g + "attn_q.bias": (t + "self_attn.q_proj.bias", (q,)),
                          g + "attn_k.bias": (t + "self_attn.k_proj.bias", (kv,)),
                          g + "attn_v.bias": (t + "self_attn.v_proj.bias", (kv,))})
        if kind.qk_norm:
            names.update({g + "attn_q_norm.weight": (t + "self_attn.q_norm.weight", (d,)),
                          g + "attn_k_norm.weight": (t + "self_attn.k_norm.weight", (d,))})
    return names


def _dequantise(path: Path, tensor, shape: tuple[int, ...]) -> np.ndarray:
    import gguf

    kind = tensor.tensor_type
    try:
        if kind == gguf.GGMLQuantizationType.F64:
            values = np.asarray(tensor.data, dtype=np.float32)
        else:
            values = gguf.quants.dequantize(tensor.data, kind)
    except NotImplementedError:
        raise UnsupportedModelError(f"{path}: tensor {tensor.name} is of type {kind.name}, which gguf-py cannot "
                                    "dequantise") from None
    except Exception as exc:    # a block whose bytes do not fit the type
        raise ConversionError(f"{path}: tensor {tensor.name} ({kind.name}) does not dequantise: {exc}") from None
    if values.size != int(np.prod(shape)):
        raise ConversionError(f"{path}: tensor {tensor.name} holds {values.size} values, its shape says {shape}")
    return np.ascontiguousarray(values.reshape(shape), dtype=np.float32)


def read_gguf(path: Path) -> GgufModel:
    """The model in the GGUF file ``path`` in Hugging Face terms (see the module docstring).

    Raises UnsupportedModelError for an architecture, tensor type or feature tinybert does not convert (naming
    it), ConversionError for a file that is not a valid GGUF model."""
    import gguf

    reader = _open(path)
    meta = _Metadata(reader, path)
    arch = meta.string("general.architecture")
    if arch is None:
        raise ConversionError(f"{path}: GGUF metadata has no general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"{path}: GGUF architecture {arch[:60]!r} is not supported (supported: "
                                    f"{', '.join(ARCHITECTURES)})")
    kind = ARCHITECTURES[arch]
    tensors = {t.name: t for t in reader.tensors}
    vocab = tokenizer_from_gguf(meta, path)
    hf = _hf_config(meta, arch, kind, set(tensors), len(vocab.tokens))
    hf.update(vocab.config_ids)
    expected = _expected(hf, kind)
    total = 0
    for name, tensor in tensors.items():
        if name not in expected:
            raise UnsupportedModelError(f"{path}: tensor {name[:80]} is not part of a {arch} model tinybert converts")
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if shape != expected[name][1]:
            raise ConversionError(f"{path}: tensor {name} has shape {shape}, the metadata implies "
                                  f"{expected[name][1]}")
        total += int(np.prod(shape))
    if total > MAX_ELEMENTS:
        raise ConversionError(f"{path}: {total} parameters is above the converter's limit {MAX_ELEMENTS}")
    state: dict[str, np.ndarray] = {}
    types: set[str] = set()
    for name, tensor in tensors.items():
        hf_name, shape = expected[name]
        types.add(gguf.GGMLQuantizationType(tensor.tensor_type).name)
        values = _dequantise(path, tensor, shape)
        if kind.permuted and name.endswith(("attn_q.weight", "attn_q.bias")):
            values = _unpermute(values, hf["num_attention_heads"])
        elif kind.permuted and name.endswith(("attn_k.weight", "attn_k.bias")):
            values = _unpermute(values, hf["num_key_value_heads"])
        elif kind.norm_plus_one and name.endswith("norm.weight"):
            values = values - np.float32(1.0)       # exact: the stored 1 + w lies in [0.5, 2] for trained norms
        state[hf_name] = values
    hf = _with_rope_factors(hf, state.pop("rope_freqs", None), state.pop("rope_factors_short", None),
                            state.pop("rope_factors_long", None))
    untested = sorted(types - set(_TESTED_TYPES))
    if untested:
        log.warning("%s: tensors of type %s were dequantised with gguf-py's reference code, which tinybert's tests "
                    "do not cover", path, ", ".join(untested))
    return GgufModel(hf, state, vocab.tokenizer_json, vocab.chat_template, vocab.special_tokens, sorted(types))


def _with_rope_factors(hf: dict, freqs: np.ndarray | None, short: np.ndarray | None,
                       long: np.ndarray | None) -> dict:
    """The rope settings llama.cpp keeps in tensors, as config.json states them.

    Llama 3's ``rope_freqs`` divide each rotary frequency by a factor: that is longrope with those factors, no
    attention scaling and the context as the original one (so never switched). Phi-3's ``rope_factors_short`` /
    ``rope_factors_long`` are its longrope factors, with the original context and attention factor from the
    metadata."""
    hf = dict(hf)
    scaling = {"rope_type": "longrope", "original_max_position_embeddings": hf["max_position_embeddings"]}
    attention = hf.pop("rope_attention_factor", 1.0)
    for name, factors in (("rope_freqs", freqs), ("rope_factors_short", short), ("rope_factors_long", long)):
        if factors is not None and (not np.isfinite(factors).all() or (factors <= 0).any()):
            raise ConversionError(f"{name} must hold positive finite factors")
    if freqs is not None:
        if "rope_scaling" in hf or short is not None or long is not None:
            raise UnsupportedModelError("a GGUF file with rope_freqs and other rope scaling is not supported")
        hf["rope_scaling"] = {**scaling, "short_factor": freqs.tolist(), "attention_factor": 1.0}
    elif short is not None or long is not None:
        if short is None or long is None or "rope_scaling" in hf:
            raise ConversionError("rope_factors_short and rope_factors_long come together, without other scaling")
        original = hf.pop("original_max_position_embeddings", hf["max_position_embeddings"])
        hf["rope_scaling"] = {**scaling, "original_max_position_embeddings": original,
                              "short_factor": short.tolist(), "long_factor": long.tolist(),
                              "attention_factor": attention}
    hf.pop("original_max_position_embeddings", None)
    return hf
