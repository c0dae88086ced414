"""Hugging Face folder → one tinybert .safetensors file."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinybert import format as fmt
from tinybert.config import EncoderConfig, Seq2SeqConfig, TaskConfig
from tinybert.errors import ConversionError, ModelFileError, UnsupportedModelError

from .architectures import canonical_tensors, check_model_type, encoder_config, find_prefix, legacy_names
from .chat import chat_template_settings, template_settings
from .decoders import DECODER_FAMILIES, decoder_config, decoder_tensors
from .dense import dense_modules
from .files import check_output, read_json
from .gguf_read import is_gguf
from .heads import canonical_head
from .hfconfig import string
from .int4 import int4_tensors
from .languages import language_settings
from .m2m100 import is_m2m100_folder, m2m100_tokenizers
from .pooling import sentence_transformers_settings
from .quantize import quantize_tensors
from .readers import read_checkpoint
from .seq2seq import SEQ2SEQ_FAMILIES, resolve_tied_head, seq2seq_config, seq2seq_tensors
from .smooth import generation_activation_tensors, mixed_activation_tensors
from .tokenizer import tokenizer_json, tokenizer_options
from .writer import write_safetensors

_SOURCE_CHARS = 1024   # of each string in the source metadata: a path or hub id is far shorter


def _m2m100_tokenizers(src: Path, vocab_size: int, extra: dict[str, str]) -> tuple[str, dict, list[int]]:
    """(source tokenizer JSON, Seq2SeqConfig language fields, source id map) of an M2M-100 folder without a
    tokenizer.json; the target tokenizer and the unknown-text table go into ``extra``."""
    m2m = m2m100_tokenizers(src, vocab_size)
    extra[fmt.KEY_TARGET_TOKENIZER] = m2m.target
    extra[fmt.KEY_SOURCE_ID_MAP] = json.dumps(m2m.id_map)
    if m2m.unknown_pieces:
        extra[fmt.KEY_SOURCE_UNKNOWN_PIECES] = json.dumps(m2m.unknown_pieces, ensure_ascii=False, sort_keys=True)
    return m2m.source, m2m.language_settings, m2m.id_map


def _source(hf_config: dict) -> str:
    """The ``source`` metadata, where the file came from. It is informational only, so odd or over-long values are
    dropped or cut rather than refused (a 110 MB ``_name_or_path`` once made a file the loader refuses)."""
    def cut(value: object) -> str | None:
        return value[:_SOURCE_CHARS] if isinstance(value, str) else None

    archs = hf_config.get("architectures")
    archs = [cut(a) for a in archs[:16] if isinstance(a, str)] if isinstance(archs, list) else None
    return json.dumps({"model_type": cut(hf_config.get("model_type")), "architectures": archs,
                       "name_or_path": cut(hf_config.get("_name_or_path"))}, sort_keys=True)


class _Progress:
    """What ``show_progress`` shows on stderr: each step as it starts, with the seconds since the start, and a
    count of the calibration trials (each runs the model over the calibration text)."""

    def __init__(self, show: bool) -> None:
        self.show, self.start, self.trials = show, time.monotonic(), None

    def step(self, text: str) -> None:
        if self.show:
            self.close()
            print(f"[{time.monotonic() - self.start:5.1f}s] {text}", file=sys.stderr, flush=True)

    def trial(self, label: str) -> None:
        if not self.show:
            return
        if self.trials is None:
            from tqdm import tqdm

            self.trials = tqdm(desc="calibrating", unit="trial", file=sys.stderr)
        self.trials.set_postfix_str(label, refresh=False)
        self.trials.update(1)

    def close(self) -> None:
        if self.trials is not None:
            self.trials.close()
            self.trials = None


def convert(src: str | Path, out: str | Path, dtype: str = "int8", show_progress: bool = False,
            task: str | None = None, mixed_activations: bool = True, force: bool = False,
            int4_budget: float | None = None) -> Path:
    """Convert the Hugging Face checkpoint folder ``src`` into the tinybert file ``out``.

    ``dtype`` is "int8" (linear weights and the token/position embedding tables int8 with per-row
    scales, everything else float32) or "fp32". ``task`` defaults to what config.json's
    ``architectures`` names (``BertForSequenceClassification`` → "sequence-classification", a base
    model → "feature-extraction"); pass "feature-extraction" to keep only the encoder. Decoder-only
    checkpoints (GPT-2, Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3) convert for "text-generation" (or, from a
    sentence-transformers folder or with task="feature-extraction", as an embedder; a bidirectional one,
    EmbeddingGemma, only as an embedder), encoder-decoders (T5,
    BART, Marian) for "text2text-generation". ``mixed_activations`` (int8): give the layers that
    keep the model's accuracy with it 8-bit inputs, calibrated and smoothed (convert/smooth.py; about
    twice as fast on AVX-512 VNNI); False keeps 12-bit inputs everywhere. "int4" (encoders and decoders):
    the blocks' linears and an untied LM head 4-bit in groups of 32 (format.py), except those whose error on
    the calibration text is too large (convert/int4.py), which stay int8 like the tables and heads;
    ``int4_budget`` (int4, e.g. 0.005) also keeps int8 the layers the model's output is most sensitive to until
    the rest's estimated error (mean 1 − cosine on the calibration text) is within it (one calibration run per
    layer); encoders default to 0.005, decoders to none, and 1 keeps no layer int8 for its sensitivity. Returns
    the output path.

    ``out`` must not lie inside ``src`` (nor be a file it links to, such as a Hugging Face cache blob): a
    conversion never replaces its input. An existing ``out`` is replaced only with ``force=True``. Both are
    checked, with the output folder being writable, before the checkpoint is read.

    Raises ConversionError or UnsupportedModelError on a folder it cannot convert or an output it must not
    write; never leaves a partial file at ``out``. Only files inside ``src`` are read (symlinks may lead
    into the Hugging Face cache folder of the same model, nowhere else).
    """
    src, out = Path(src), Path(out)
    if dtype not in fmt.QUANTIZATIONS:
        raise ConversionError(f"dtype must be one of {fmt.QUANTIZATIONS}, got {dtype!r}")
    if int4_budget is not None and not (dtype == "int4" and 0 < int4_budget <= 1):
        raise ConversionError(f"int4_budget must be a number in (0, 1] with dtype int4, got {int4_budget!r}")
    if src.is_file() and is_gguf(src):
        return _convert_gguf(src, out, dtype, show_progress, task, mixed_activations, force, int4_budget)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder (nor a GGUF file)")
    check_output(src, out, force)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: config.json is missing")
    hf_config = read_json(src, "config.json", dict)
    model_type = string(hf_config, "model_type")
    check_model_type(model_type)
    progress = _Progress(show_progress)
    progress.step(f"reading {src} ({model_type})")
    extra: dict[str, str] = {}
    id_map: list[int] | None = None
    m2m100 = model_type == "m2m_100" and is_m2m100_folder(src)
    if m2m100:
        tokenizer = ""  # built with the model below: its target tokenizer covers the model's vocabulary
    elif model_type == "marian" and not (src / "tokenizer.json").is_file():
        # Marian ships SentencePiece models, not a tokenizer.json: rebuild them for `tokenizers`.
        from .spm import marian_tokenizers, marian_unknown_pieces

        tokenizer, target, marian_ids = marian_tokenizers(src)
        id_map = marian_ids
        extra[fmt.KEY_TARGET_TOKENIZER] = target
        extra[fmt.KEY_SOURCE_ID_MAP] = json.dumps(id_map)
        extra[fmt.KEY_SOURCE_UNKNOWN_PIECES] = json.dumps(
            {"unk_id": json.loads(tokenizer)["model"]["unk_id"], "pieces": marian_unknown_pieces(src)},
            ensure_ascii=False, sort_keys=True)
    else:
        tokenizer = tokenizer_json(src)
    dense_layers: list[dict] = []                   # sentence-transformers' Dense modules (encoders, embedders)
    dense_tensors: dict[str, np.ndarray] = {}
    if model_type in SEQ2SEQ_FAMILIES:
        if task not in (None, "text2text-generation"):
            raise ConversionError(f"a {model_type} checkpoint converts for text2text-generation, not {task!r}")
        raw = read_checkpoint(src)
        cfg = resolve_tied_head(seq2seq_config(hf_config, src), raw)
        tensors = seq2seq_tensors(cfg, raw)     # checks the token table against vocab_size
        del raw
        if m2m100:
            tokenizer, languages, id_map = _m2m100_tokenizers(src, cfg.vocab_size, extra)
        else:
            languages = language_settings(src, tokenizer)
        cfg = dataclasses.replace(cfg, **languages)
        try:
            cfg.validate()
        except ModelFileError as exc:
            raise ConversionError(f"{src}: language codes: {exc}") from None
        task_config = TaskConfig(type="text2text-generation")
    elif model_type in DECODER_FAMILIES:
        if task not in (None, "text-generation", "feature-extraction"):
            raise ConversionError(f"a {model_type} checkpoint converts for text-generation or feature-extraction "
                                  f"(an embedder), not {task!r}")
        cfg = decoder_config(hf_config, src)
        # a sentence-transformers folder (Qwen3-Embedding) is an embedder: pooled hidden states, no LM head; so is
        # a bidirectional decoder (EmbeddingGemma), which cannot generate
        embedder = task == "feature-extraction" or (task is None and ((src / "modules.json").is_file()
                                                                      or not cfg.causal))
        if not embedder and not cfg.causal:
            raise UnsupportedModelError(f"{src}: a decoder with bidirectional attention embeds, it does not "
                                        "generate: convert it for feature-extraction")
        if embedder:
            pooling, max_seq_length, st_settings, dense_paths = sentence_transformers_settings(src, hf_config)
            if max_seq_length is not None and max_seq_length < cfg.max_positions:     # texts are cut there
                cfg = dataclasses.replace(cfg, max_positions=max_seq_length)
            extra[fmt.KEY_POOLING] = json.dumps(pooling, sort_keys=True)
            extra[fmt.KEY_SENTENCE_TRANSFORMERS] = json.dumps(st_settings, sort_keys=True, ensure_ascii=False)
            dense_layers, dense_tensors = dense_modules(src, dense_paths, cfg.hidden_size)
        tensors = decoder_tensors(cfg, read_checkpoint(src), lm_head=not embedder)
        task_config = TaskConfig(type="feature-extraction" if embedder else "text-generation")
        chat = None if embedder else chat_template_settings(src)
        if chat is not None:
            extra[fmt.KEY_CHAT_TEMPLATE] = json.dumps(chat, sort_keys=True, ensure_ascii=False)
    else:
        pooling, max_seq_length, st_settings, dense_paths = sentence_transformers_settings(src, hf_config)
        cfg = encoder_config(hf_config, max_seq_length)
        dense_layers, dense_tensors = dense_modules(src, dense_paths, cfg.hidden_size)
        raw = legacy_names(read_checkpoint(src))
        tensors = canonical_tensors(hf_config, cfg, raw)
        task_config, head = canonical_head(hf_config, cfg, raw, find_prefix(raw), task)
        tensors.update(head)
        del raw
        extra[fmt.KEY_POOLING] = json.dumps(pooling, sort_keys=True)
        extra[fmt.KEY_SENTENCE_TRANSFORMERS] = json.dumps(st_settings, sort_keys=True, ensure_ascii=False)
    if dense_layers:
        extra[fmt.KEY_DENSE] = json.dumps(dense_layers, sort_keys=True)
    return _write(out, cfg, tensors, task_config, tokenizer, extra, tokenizer_options(src, tokenizer),
                  _source(hf_config), dtype, mixed_activations, progress, show_progress, id_map, dense_tensors,
                  int4_budget)


def _write(out: Path, cfg, tensors: dict[str, np.ndarray], task_config: TaskConfig, tokenizer: str,
           extra: dict[str, str], options: dict, source: str, dtype: str, mixed_activations: bool,
           progress: _Progress, show_progress: bool, id_map: list[int] | None = None,
           dense_tensors: dict[str, np.ndarray] | None = None, int4_budget: float | None = None) -> Path:
    """The common end of every conversion: check, quantise (int8) and write the canonical tensors and metadata."""
    dense_tensors = dense_tensors or {}
    for name, value in {**tensors, **dense_tensors}.items():
        if not np.isfinite(value).all():
            raise ConversionError(f"tensor {name} holds NaN or infinite values")
    if dtype == "int4":
        if isinstance(cfg, Seq2SeqConfig):
            raise UnsupportedModelError("int4 weights are not supported for encoder-decoders yet; "
                                        "convert with dtype int8")
        progress.step("quantising to int4 (layers too inaccurate at 4 bits stay int8; on a first run this also "
                      "compiles the kernels)")
        mapped = {} if id_map is None else {"id_map": id_map}
        tensors = int4_tensors(cfg, tensors, tokenizer, progress=progress.trial, budget=int4_budget, **mapped)
    elif dtype == "int8":
        # a decoder embedder has no logits for the calibration to measure: 12-bit inputs everywhere
        decoder_embedder = task_config.type == "feature-extraction" and not isinstance(cfg, EncoderConfig)
        if mixed_activations and not decoder_embedder:
            progress.step("quantising to int8 and calibrating 8-bit activations (on a first run this also compiles "
                          "the kernels)")
            calibrate: Callable = mixed_activation_tensors if isinstance(cfg, EncoderConfig) else \
                generation_activation_tensors
            # calibration texts must reach the model as its ids (Marian's, M2M-100's source ids are not)
            mapped = {} if id_map is None else {"id_map": id_map}
            tensors = calibrate(cfg, tensors, tokenizer, progress=progress.trial, **mapped)
        else:
            progress.step("quantising to int8")
            tensors = quantize_tensors(tensors)
    tensors.update(dense_tensors)       # float32 in every file (format.KEY_DENSE)
    progress.close()
    metadata = {
        fmt.KEY_FORMAT: fmt.FORMAT_NAME,
        fmt.KEY_VERSION: str(fmt.FORMAT_VERSION),
        fmt.KEY_CONFIG: json.dumps(cfg.to_dict(), sort_keys=True),
        fmt.KEY_TOKENIZER: fmt.pack_tokenizer(tokenizer),
        **extra,
        fmt.KEY_QUANTIZATION: dtype,
        fmt.KEY_TASK: json.dumps(task_config.to_dict(), sort_keys=True),
        fmt.KEY_TOKENIZER_OPTIONS: json.dumps(options, sort_keys=True),
        fmt.KEY_SOURCE: source,
    }
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(v.nbytes for v in tensors.values()), unit="B", unit_scale=True,
                   desc=f"writing {out.name}")
    try:
        write_safetensors(out, tensors, metadata, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    return out


def _convert_gguf(src: Path, out: Path, dtype: str, show_progress: bool, task: str | None, mixed_activations: bool,
                  force: bool, int4_budget: float | None = None) -> Path:
    """A GGUF file (llama.cpp) → a tinybert file: its metadata and tensors translated to a Hugging Face config and
    state dict (convert/gguf_read.py), then converted as a decoder folder's."""
    from .gguf_read import read_gguf

    check_output(src, out, force)
    if task not in (None, "text-generation"):
        raise ConversionError(f"a GGUF file converts for text-generation, not {task!r}")
    progress = _Progress(show_progress)
    progress.step(f"reading {src} (GGUF)")
    model = read_gguf(src)
    cfg = decoder_config(model.hf_config, None)
    tensors = decoder_tensors(cfg, model.tensors)
    del model.tensors
    extra: dict[str, str] = {}
    if model.chat_template is not None:
        chat = template_settings(model.chat_template, model.special_tokens, f"{src}: tokenizer.chat_template")
        extra[fmt.KEY_CHAT_TEMPLATE] = json.dumps(chat, sort_keys=True, ensure_ascii=False)
    source = json.loads(_source(model.hf_config))
    source["gguf_tensor_types"] = model.dequantised
    exact = {"F32", "F16", "BF16", "F64"} | ({"Q4_0"} if dtype == "int4" else set())
    requantised = sorted(set(model.dequantised) - exact)
    if requantised and dtype != "fp32":
        logging.getLogger(__name__).warning(
            "%s: %s tensors do not map exactly onto tinybert's %s layout: dequantised and quantised again (int4 keeps "
            "the 32-weight groups whose 4-bit grid float16 holds)", src, ", ".join(requantised), dtype)
    options = {"mask_token": None, "clean_up_tokenization_spaces": False}
    return _write(out, cfg, tensors, TaskConfig(type="text-generation"), model.tokenizer, extra, options,
                  json.dumps(source, sort_keys=True), dtype, mixed_activations, progress, show_progress,
                  int4_budget=int4_budget)
