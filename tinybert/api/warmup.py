"""Ahead-of-time kernel compilation.

Numba compiles each kernel on first use and caches the machine code on disk (``cache=True``), so
only the very first run on a machine pays the compile (tens of seconds). ``warmup()`` pays it up
front by running a tiny random model through every code path (``tinybert warmup`` on the command
line); ``kernels_ready()`` tells whether that has happened, so front ends can say why a first call
is slow instead of looking hung.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import llvmlite.binding as llvm
import numba
import numpy as np

from .. import __version__
from .. import format as fmt
from ..config import DecoderConfig, EncoderConfig, Seq2SeqConfig
from ..generation.beam import log_softmax, top_k
from ..kernels import (
    attention,
    cpu,
    decoder,
    gemm,
    gemm_int4,
    jitcache,
    pooling,
    prebuilt,
)
from ..layers import KVCache
from ..models.decoder import DecoderModel
from ..models.encoder import EncoderModel
from ..models.seq2seq import Seq2SeqModel


def _marker() -> Path:
    """A file that exists once warmup() has run for this tinybert, Numba, CPU and kernel source.

    It lives beside Numba's own cache files, whose index Numba keys on the same things."""
    index = Path(attention.attention_with_bias._cache._cache_file._index_path)
    stamp = [__version__, numba.__version__, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(),
             gemm.best_layout(), str(cpu.POLICY), jitcache.KERNELS_STAMP]   # the policy, not the AMX grant
    digest = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    return index.parent / f"tinybert-warm-{digest}"


def kernels_ready() -> bool:
    """True when every kernel is compiled for this machine (fast first calls): the package carries them for
    this CPU's tier (kernels/prebuilt.py), or warmup() has run."""
    shipped = prebuilt.prebuilt_for_host(jitcache.KERNELS_STAMP)
    if shipped is not None and shipped.policy == tuple(cpu.POLICY):   # a capped policy runs other kernels
        return True
    try:
        return _marker().exists()
    except (AttributeError, OSError):
        return False


_told = False
COMPILE_NOTICE = ("tinybert: this machine's kernels are not all compiled yet: the first calls compile what they use "
                  "(up to a minute, once; cached on disk after). tinybert.warmup() or `tinybert warmup` compiles "
                  "them all ahead, with a progress bar.")


def _compiled_before(kind: str) -> bool:
    """True when the attention kernel that models of ``kind`` run has machine code in Numba's disk cache: this
    machine has run such a model before, so the kernels it needs are (most likely) compiled."""
    kernel = attention.attention_with_bias if kind == "encoder" else decoder.cached_attention_with_bias
    if prebuilt.prebuilt_for_host(jitcache.KERNELS_STAMP) is not None:
        return True
    try:
        return Path(kernel._cache._cache_file._index_path).exists()
    except (AttributeError, OSError):
        return False


def notice_compile(kind: str) -> None:
    """Say once per process, on the "tinybert" logger (stderr unless logging is configured otherwise), that the
    first calls will compile, when neither warmup() nor an earlier model of ``kind`` ("encoder", "decoder",
    "encoder-decoder") compiled them: a silent first call of tens of seconds looks hung."""
    global _told
    if not _told and not kernels_ready() and not _compiled_before(kind):
        _told = True
        import logging

        logging.getLogger("tinybert").warning(COMPILE_NOTICE)


def _random_tensors(shapes: dict[str, tuple[int, ...]], quantization: str) -> dict[str, np.ndarray]:
    """Random weights in a file's layout (int8 + scales where an int8 file has them)."""
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in shapes.items():
        value = rng.standard_normal(shape).astype(np.float32)
        if quantization == "int8" and fmt.is_quantized_name(name):
            tensors[name] = np.clip(np.rint(value * 50), -127, 127).astype(np.int8)
            tensors[name + fmt.SCALE_SUFFIX] = np.full(shape[0], 0.02, dtype=np.float32)
        else:
            tensors[name] = value
    return tensors


def _tiny_model(quantization: str, activation: str) -> EncoderModel:
    cfg = EncoderConfig(architecture="bert", vocab_size=16, hidden_size=8, embedding_size=8, num_layers=1,
                        num_heads=2, intermediate_size=16, max_positions=8, type_vocab_size=2,
                        activation=activation, norm_eps=1e-12, position_scheme="absolute",
                        pad_token_id=0, max_length=8)
    return EncoderModel(cfg, _random_tensors(fmt.encoder_tensor_shapes(cfg.to_dict()), quantization))


def _tiny_decoder(quantization: str, family: str) -> DecoderModel:
    llama = family == "llama"
    cfg = DecoderConfig(architecture=family, vocab_size=16, hidden_size=8, num_layers=1, num_heads=2,
                        num_kv_heads=1 if llama else 2, head_dim=4, intermediate_size=16, max_positions=16,
                        norm="rmsnorm" if llama else "layernorm", norm_eps=1e-5,
                        activation="silu" if llama else "gelu_tanh", gated_mlp=llama,
                        positions="rope" if llama else "learned",
                        rope={"type": "default", "theta": 10000.0} if llama else None,
                        attn_bias=not llama, attn_out_bias=not llama, mlp_bias=not llama,
                        tie_word_embeddings=not llama, bos_token_id=None, eos_token_ids=(), pad_token_id=None)
    return DecoderModel(cfg, _random_tensors(fmt.decoder_tensor_shapes(cfg.to_dict()), quantization))


def _run_decoder(model: DecoderModel) -> None:
    """A prefill of two sequences, then one decode step each: every decoder kernel path."""
    cache = KVCache(model.config, 2, 8, dtype=model.kv_dtype)
    ids = np.array([1, 2, 3, 4, 5], dtype=np.int32)
    slots = np.array([0, 0, 1, 1, 1], dtype=np.int32)
    positions = np.array([0, 1, 0, 1, 2], dtype=np.int32)
    model(ids, slots, positions, cache, logit_rows=np.array([1, 4]))
    model(np.array([6, 7], dtype=np.int32), np.array([0, 1], dtype=np.int32), np.array([2, 3], dtype=np.int32),
          cache)


def _tiny_seq2seq(quantization: str, family: str) -> Seq2SeqModel:
    t5 = family == "t5"
    cfg = Seq2SeqConfig(family=family, vocab_size=16, decoder_vocab_size=16, hidden_size=8, num_encoder_layers=1,
                        num_decoder_layers=1, num_heads=2, head_dim=4, intermediate_size=16,
                        norm="rmsnorm" if t5 else "layernorm", norm_eps=1e-6, pre_norm=t5,
                        activation="relu" if t5 else "silu", gated_mlp=False,
                        positions="relative" if t5 else "sinusoidal", max_positions=16,
                        relative_buckets=8 if t5 else 0, relative_max_distance=16 if t5 else 0, attn_scale=not t5,
                        scale_embedding=not t5, layernorm_embedding=False, final_logits_bias=not t5,
                        tie_word_embeddings=True, lm_head_scale=1.0, share_embeddings=True,
                        decoder_start_token_id=0, eos_token_ids=(1,), pad_token_id=0)
    return Seq2SeqModel(cfg, _random_tensors(fmt.seq2seq_tensor_shapes(cfg.to_dict()), quantization))


def _run_seq2seq(model: Seq2SeqModel) -> None:
    """Encode two sources, then two decoder steps for three rows reading them: every encoder-decoder path."""
    ids = np.array([2, 3, 4, 5, 6], dtype=np.int32)
    starts = np.array([0, 2, 5], dtype=np.int64)
    state = model.start(model.encode(ids, starts), starts, length=4, slots=3)
    rows = np.array([0, 1, 2], dtype=np.int32)
    sources = np.array([0, 1, 1], dtype=np.int32)
    for t in range(2):
        logits = model.step(state, np.array([0, 7, 8], dtype=np.int32), rows, np.full(3, t, dtype=np.int32), sources)
        state.copy_slots(np.array([2]), np.array([1]), t + 1)     # beam search: a beam takes over another's cache
        top_k(log_softmax(logits), 4, add=np.zeros(3, dtype=np.float32))


def warmup(show_progress: bool = True) -> None:
    """Compile (or load from the cache) every kernel tinybert uses, int8 and fp32 paths, encoders
    decoders and encoder-decoders."""
    # an int4 file's other layers are int8 ones: the int4 kernels are run once below, on their own
    quantizations = [q for q in fmt.QUANTIZATIONS if q != "int4"]
    cases = [(q, a) for q in quantizations for a in fmt.ACTIVATIONS]
    decoders = [(q, f) for q in quantizations for f in ("gpt2", "llama")]
    seq2seqs = [(q, f) for q in quantizations for f in ("t5", "marian")]
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(cases) + len(decoders) + len(seq2seqs), desc="compiling kernels", unit="path")
    # 5 and 12 tokens: below and within the few-row GEMM path (gemm_vnni.ROW_BANDS_MIN..MAX rows).
    batches = [(np.array([1, 2, 3, 4, 5], dtype=np.int32), np.array([0, 2, 5], dtype=np.int64)),
               (np.arange(12, dtype=np.int32) % 15 + 1, np.array([0, 6, 12], dtype=np.int64))]
    for quantization, activation in cases:
        model = _tiny_model(quantization, activation)
        for ids, starts in batches:
            hidden = model(ids, np.zeros_like(ids), starts, np.ones(ids.size, dtype=np.uint8))
            pooling.segment_sum(hidden, starts, np.empty((starts.size - 1, hidden.shape[1]), dtype=np.float64))
        if progress is not None:
            progress.update(1)
    # int4 layers (kernels/gemm_int4.py), one row (decode) and a few
    int4 = gemm_int4.Int4Weight(np.full((16, 16), 0x5A, dtype=np.uint8), np.ones((16, 1), np.float16),
                                np.zeros((16, 1), np.float16), 32)
    for rows in (1, 5):
        gemm_int4.linear_int4(np.ones((rows, 32), dtype=np.float32), int4, np.zeros(16, dtype=np.float32))
    for quantization, family in decoders:
        _run_decoder(_tiny_decoder(quantization, family))
        if progress is not None:
            progress.update(1)
    for quantization, family in seq2seqs:
        _run_seq2seq(_tiny_seq2seq(quantization, family))
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    try:
        _marker().touch()
    except OSError:  # a read-only cache folder only costs the message next time
        pass
