"""Encoder-decoder checkpoints (T5ForConditionalGeneration v1.0 / v1.1, MT5ForConditionalGeneration,
BartForConditionalGeneration, MBartForConditionalGeneration, MarianMTModel, M2M100ForConditionalGeneration for
M2M-100 and NLLB-200) → canonical config and float32 tensors (names: see tinybert/models/seq2seq.py).

The only place that knows these families' Hugging Face names. Q, K and V of self-attention are fused into
one tensor, K and V of cross-attention into another, a gated FFN's wi_0 (gate) and wi_1 (linear) into one
[2I, H] tensor (gate rows first). BART's learned position tables lose their two offset rows; Marian's
and M2M-100's sinusoidal tables are not stored (the runtime computes them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tinybert.config import Seq2SeqConfig
from tinybert.errors import ConversionError, ModelFileError, UnsupportedModelError
from tinybert.format import seq2seq_tensor_shapes

from .files import read_json
from .hfconfig import integer, number, string, strings

SEQ2SEQ_FAMILIES = ("t5", "mt5", "bart", "mbart", "marian", "m2m_100")
SEQ2SEQ_ARCHITECTURES = {"T5ForConditionalGeneration": "t5", "MT5ForConditionalGeneration": "mt5",
                         "BartForConditionalGeneration": "bart", "MBartForConditionalGeneration": "mbart",
                         "MarianMTModel": "marian", "M2M100ForConditionalGeneration": "m2m_100"}
# fairseq-style families (BART layout): pre-norm with final norms, and how positions enter.
_PRE_NORM = ("mbart", "m2m_100")

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "swish": "silu", "silu": "silu"}


def _activation(name: object, family: str) -> str:
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"{family} activation {name!r:.60} is not supported")
    return _ACTIVATIONS[name]


def _eos_ids(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConversionError(f"eos_token_id {value!r} is not an integer or a list of integers")
    return tuple(ids)


def _generation_settings(hf: dict, folder: Path | None) -> dict:
    """forced BOS / EOS and single-token bad words, from generation_config.json (what generate() uses) over
    config.json. Multi-token bad words are not supported: they would silently change outputs."""
    gen: dict = {}
    if folder is not None and (folder / "generation_config.json").is_file():
        gen = read_json(folder, "generation_config.json", dict)

    def get(name: str) -> object:
        return gen[name] if gen.get(name) is not None else hf.get(name)

    bad = get("bad_words_ids") or []
    if not isinstance(bad, list) or not all(isinstance(w, list) for w in bad):
        raise ConversionError(f"bad_words_ids {bad!r:.60} is not a list of lists")
    if any(len(w) != 1 for w in bad):
        raise UnsupportedModelError("bad_words_ids with multi-token words are not supported")
    if not all(isinstance(w[0], int) and not isinstance(w[0], bool) for w in bad):
        raise ConversionError(f"bad_words_ids {bad!r:.60} holds something other than token ids")
    forced_eos = get("forced_eos_token_id")
    if isinstance(forced_eos, list):
        if len(forced_eos) != 1:
            raise UnsupportedModelError("several forced_eos_token_id values are not supported")
        forced_eos = forced_eos[0]
    return {"forced_bos_token_id": get("forced_bos_token_id"), "forced_eos_token_id": forced_eos,
            "bad_token_ids": tuple(sorted({w[0] for w in bad}))}


def seq2seq_config(hf: dict, folder: Path | None = None) -> Seq2SeqConfig:
    """Canonical config of an encoder-decoder checkpoint's ``config.json`` (and, in ``folder``, its
    generation_config.json)."""
    model_type = string(hf, "model_type")
    for arch in strings(hf, "architectures"):
        if arch not in SEQ2SEQ_ARCHITECTURES:
            raise UnsupportedModelError(f"architecture {arch!r} is not a supported encoder-decoder "
                                        f"(supported: {', '.join(SEQ2SEQ_ARCHITECTURES)})")
    if model_type not in SEQ2SEQ_FAMILIES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not a supported encoder-decoder")
    if model_type in ("t5", "mt5"):
        # mT5 is T5 v1.1 (gated GELU, own head) with a multilingual vocabulary; it never rescales the output.
        proj = hf.get("feed_forward_proj", "gated-gelu" if model_type == "mt5" else "relu")
        parts = proj.split("-") if isinstance(proj, str) else []
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise UnsupportedModelError(f"T5 feed_forward_proj {proj!r:.60} is not supported")
        gated = len(parts) == 2
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        tied = hf.get("tie_word_embeddings", True) is not False
        # transformers 5 keeps v1.0's rescale of the decoder output as scale_decoder_outputs; older configs
        # imply it by a tied head.
        rescale = model_type == "t5" and bool(hf.get("scale_decoder_outputs", tied))
        vocab, hidden = integer(hf, "vocab_size"), integer(hf, "d_model", minimum=1)
        fields = dict(
            family="t5", vocab_size=vocab, decoder_vocab_size=vocab, hidden_size=hidden,
            num_encoder_layers=integer(hf, "num_layers"),
            num_decoder_layers=integer(hf, "num_decoder_layers", "num_layers"),
            num_heads=integer(hf, "num_heads"), head_dim=integer(hf, "d_kv"), intermediate_size=integer(hf, "d_ff"),
            norm="rmsnorm", norm_eps=number(hf, "layer_norm_epsilon", default=1e-6), pre_norm=True,
            activation=_activation(act, "T5"), gated_mlp=gated, positions="relative",
            max_positions=integer(hf, "n_positions", default=512),
            relative_buckets=integer(hf, "relative_attention_num_buckets", default=32),
            relative_max_distance=integer(hf, "relative_attention_max_distance", default=128),
            attn_scale=False, scale_embedding=False, layernorm_embedding=False, final_logits_bias=False,
            tie_word_embeddings=tied, lm_head_scale=hidden ** -0.5 if rescale else 1.0, share_embeddings=True,
            decoder_start_token_id=integer(hf, "decoder_start_token_id", "pad_token_id", default=0),
            eos_token_ids=_eos_ids(hf.get("eos_token_id", 1)), pad_token_id=hf.get("pad_token_id", 0))
    else:
        pre_norm = model_type in _PRE_NORM
        if not pre_norm and (hf.get("normalize_before") or hf.get("add_final_layer_norm")
                             or hf.get("normalize_embedding") is False):
            raise UnsupportedModelError(f"{model_type} with normalize_before / add_final_layer_norm is not supported "
                                        "(convert it as mbart)")
        hidden = integer(hf, "d_model")
        heads = integer(hf, "encoder_attention_heads", minimum=1)
        if integer(hf, "decoder_attention_heads", default=heads) != heads:
            raise UnsupportedModelError("different encoder and decoder head counts are not supported")
        ffn = integer(hf, "encoder_ffn_dim")
        if integer(hf, "decoder_ffn_dim", default=ffn) != ffn:
            raise UnsupportedModelError("different encoder and decoder FFN widths are not supported")
        if hidden % heads:
            raise ConversionError("d_model is not a multiple of the number of attention heads")
        vocab = integer(hf, "vocab_size")
        marian, m2m = model_type == "marian", model_type == "m2m_100"
        share = bool(hf.get("share_encoder_decoder_embeddings", True)) if marian else True
        dec_vocab = vocab if share else integer(hf, "decoder_vocab_size", default=vocab)
        default_act = {"marian": "swish", "m2m_100": "relu"}.get(model_type, "gelu")
        sinusoidal = marian or m2m
        pad = hf.get("pad_token_id", 1 if m2m else None)
        fields = dict(
            family=model_type, vocab_size=vocab, decoder_vocab_size=dec_vocab, hidden_size=hidden,
            num_encoder_layers=integer(hf, "encoder_layers"), num_decoder_layers=integer(hf, "decoder_layers"),
            num_heads=heads, head_dim=hidden // heads, intermediate_size=ffn, norm="layernorm", norm_eps=1e-5,
            pre_norm=pre_norm,
            activation=_activation(string(hf, "activation_function", default=default_act), model_type),
            gated_mlp=False, positions="sinusoidal" if sinusoidal else "learned",
            max_positions=integer(hf, "max_position_embeddings"), relative_buckets=0, relative_max_distance=0,
            attn_scale=True, scale_embedding=bool(hf.get("scale_embedding", sinusoidal)),
            layernorm_embedding=not sinusoidal, final_logits_bias=not m2m,
            position_padding_idx=pad if m2m else None,
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False, lm_head_scale=1.0,
            share_embeddings=share,
            # generate() starts from bos_token_id when there is no decoder_start_token_id (mBART-cc25)
            decoder_start_token_id=integer(hf, "decoder_start_token_id", "bos_token_id"),
            eos_token_ids=_eos_ids(hf.get("eos_token_id")), pad_token_id=pad)
    if fields["family"] == "m2m_100" and not isinstance(fields["pad_token_id"], int):
        raise ConversionError("m2m_100 config.json needs an integer pad_token_id (its positions' padding index)")
    cfg = Seq2SeqConfig(**fields, **_generation_settings(hf, folder))
    try:
        cfg.validate()
    except ModelFileError as exc:
        raise ConversionError(f"config.json: {exc}") from None
    return cfg


def resolve_tied_head(cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray]) -> Seq2SeqConfig:
    """The config with ``tie_word_embeddings`` as the checkpoint really has it: a stored LM head that differs
    from the decoder's token table is the head, whatever config.json says (transformers 5 writes
    tie_word_embeddings=true for every T5, including v1.1 / FLAN-T5 whose heads are their own)."""
    head = tensors.get("lm_head.weight")
    if not cfg.tie_word_embeddings or head is None:
        return cfg
    names = ("model.shared.weight", "shared.weight", "model.decoder.embed_tokens.weight",
             "decoder.embed_tokens.weight", "model.encoder.embed_tokens.weight", "encoder.embed_tokens.weight")
    table = next((tensors[n] for n in names if n in tensors), None)
    if table is not None and not cfg.share_embeddings and "model.decoder.embed_tokens.weight" in tensors:
        table = tensors["model.decoder.embed_tokens.weight"]
    if table is None or np.shape(head) != np.shape(table) or not np.array_equal(head, table):
        return dataclasses.replace(cfg, tie_word_embeddings=False)
    return cfg


def seq2seq_tensors(cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename and fuse an encoder-decoder checkpoint's tensors into canonical float32 ones."""
    def take(*names: str) -> np.ndarray:
        for name in names:
            if name in tensors:
                return np.ascontiguousarray(tensors[name], dtype=np.float32)
        raise ConversionError(f"checkpoint has no tensor {names[0]}")

    def cat(*arrays: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(arrays, axis=0))

    out: dict[str, np.ndarray] = {}
    if cfg.positions == "relative":     # T5 and mT5
        out["embed.tokens"] = take("shared.weight", "encoder.embed_tokens.weight")
        dec_tokens = out["embed.tokens"]
        for side, n_layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
            out[f"{side}.rel_bias"] = take(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
            out[f"{side}.final_norm.weight"] = take(f"{side}.final_layer_norm.weight")
            for i in range(n_layers):
                src, dst = f"{side}.block.{i}.layer.", f"{side}.layers.{i}."
                att = src + "0.SelfAttention."
                out[dst + "attn_norm.weight"] = take(src + "0.layer_norm.weight")
                out[dst + "attn.qkv.weight"] = cat(*(take(att + p + ".weight") for p in "qkv"))
                out[dst + "attn.out.weight"] = take(att + "o.weight")
                ff = 1
                if side == "decoder":
                    ff = 2
                    cross = src + "1.EncDecAttention."
                    out[dst + "cross_norm.weight"] = take(src + "1.layer_norm.weight")
                    out[dst + "cross.q.weight"] = take(cross + "q.weight")
                    out[dst + "cross.kv.weight"] = cat(take(cross + "k.weight"), take(cross + "v.weight"))
                    out[dst + "cross.out.weight"] = take(cross + "o.weight")
                dense = f"{src}{ff}.DenseReluDense."
                out[dst + "mlp_norm.weight"] = take(f"{src}{ff}.layer_norm.weight")
                if cfg.gated_mlp:
                    out[dst + "mlp.up.weight"] = cat(take(dense + "wi_0.weight"), take(dense + "wi_1.weight"))
                else:
                    out[dst + "mlp.up.weight"] = take(dense + "wi.weight")
                out[dst + "mlp.down.weight"] = take(dense + "wo.weight")
    else:
        root = "model." if "model.shared.weight" in tensors or "model.encoder.embed_tokens.weight" in tensors else ""
        out["embed.tokens"] = take(root + "shared.weight", root + "encoder.embed_tokens.weight")
        dec_tokens = out["embed.tokens"]
        if not cfg.share_embeddings:
            dec_tokens = out["decoder.embed.tokens"] = take(root + "decoder.embed_tokens.weight")
        else:
            for side in ("encoder", "decoder"):     # transformers unties them from shared with tie_word_embeddings
                table = tensors.get(f"{root}{side}.embed_tokens.weight")
                if table is not None and not np.array_equal(np.asarray(table, dtype=np.float32), dec_tokens):
                    raise UnsupportedModelError(f"{root}{side}.embed_tokens.weight differs from the shared token "
                                                "table; separate token tables are not supported")
        for side, n_layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
            base = f"{root}{side}."
            if cfg.positions == "learned":
                table = take(base + "embed_positions.weight")
                if table.shape[0] != cfg.max_positions + 2:
                    raise ConversionError(f"{base}embed_positions.weight has {table.shape[0]} rows, expected "
                                          f"max_position_embeddings + 2 = {cfg.max_positions + 2}")
                out[f"{side}.embed.positions"] = np.ascontiguousarray(table[2:])
            if cfg.layernorm_embedding:
                out[f"{side}.embed.norm.weight"] = take(base + "layernorm_embedding.weight")
                out[f"{side}.embed.norm.bias"] = take(base + "layernorm_embedding.bias")
            if cfg.pre_norm:
                out[f"{side}.final_norm.weight"] = take(base + "layer_norm.weight")
                out[f"{side}.final_norm.bias"] = take(base + "layer_norm.bias")
            for i in range(n_layers):
                src, dst = f"{base}layers.{i}.", f"{side}.layers.{i}."
                names = [("attn_norm", "self_attn_layer_norm"), ("mlp_norm", "final_layer_norm")]
                if side == "decoder":
                    names.append(("cross_norm", "encoder_attn_layer_norm"))
                for canon, hf_name in names:
                    for suffix in (".weight", ".bias"):
                        out[dst + canon + suffix] = take(src + hf_name + suffix)
                for suffix in (".weight", ".bias"):
                    att = src + "self_attn."
                    out[dst + "attn.qkv" + suffix] = cat(*(take(f"{att}{p}_proj{suffix}") for p in "qkv"))
                    out[dst + "attn.out" + suffix] = take(att + "out_proj" + suffix)
                    if side == "decoder":
                        cross = src + "encoder_attn."
                        out[dst + "cross.q" + suffix] = take(cross + "q_proj" + suffix)
                        out[dst + "cross.kv" + suffix] = cat(take(cross + "k_proj" + suffix),
                                                             take(cross + "v_proj" + suffix))
                        out[dst + "cross.out" + suffix] = take(cross + "out_proj" + suffix)
                    out[dst + "mlp.up" + suffix] = take(src + "fc1" + suffix)
                    out[dst + "mlp.down" + suffix] = take(src + "fc2" + suffix)
        if cfg.final_logits_bias:
            bias = take("final_logits_bias") if "final_logits_bias" in tensors else \
                np.zeros(cfg.decoder_vocab_size, dtype=np.float32)
            out["lm_head.bias"] = np.ascontiguousarray(bias.reshape(-1))
    head = tensors.get("lm_head.weight")
    if not cfg.tie_word_embeddings:
        if head is None:
            raise ConversionError("checkpoint has no tensor lm_head.weight and config.json does not tie it")
        out["lm_head.weight"] = np.ascontiguousarray(head, dtype=np.float32)
    elif head is not None and not np.array_equal(np.asarray(head, dtype=np.float32), dec_tokens):
        raise ConversionError("lm_head.weight differs from the decoder token embeddings, but config.json ties "
                              "them (tie_word_embeddings)")
    expected = seq2seq_tensor_shapes(cfg.to_dict())
    for name in sorted(set(expected) | set(out)):
        if name not in out or name not in expected or out[name].shape != expected[name]:
            got = out[name].shape if name in out else "nothing"
            raise ConversionError(f"tensor {name}: checkpoint gives {got}, config.json implies "
                                  f"{expected.get(name, 'no such tensor')}")
    return out

