"""Encoder-decoder Transformers (T5 v1.0 / v1.1 / mT5, BART, mBART, Marian, M2M-100 / NLLB) — the forward pass.
Arrays in, arrays out.

Encoder: packed sequences (no padding), bidirectional attention within each sequence. Decoder: token rows
with cache slots and positions, like tinybert/decoder.py; each row attends causally to its own slot's
self-attention cache and to all encoder outputs of its slot (cross-attention keys/values are computed once
per sequence by ``start``). Families differ only in config data:

    T5 (Raffel et al. 2020)  pre-norm, RMSNorm ("T5LayerNorm": no mean, no bias), no biases anywhere,
                             relative position bias (buckets; bidirectional in the encoder, causal in the
                             decoder; computed from layer 0's table and added in every layer), NO 1/√d
                             score scaling, final norms, ReLU FFN (v1.0) or gated gelu_new (v1.1),
                             LM head on d_model**-0.5 · h when the head is tied (v1.0).
    BART (Lewis et al. 2020) post-norm LayerNorm, learned positions (HF table offset 2, stripped at
                             conversion), LayerNorm on the embeddings, GELU, final_logits_bias.
    Marian                   post-norm LayerNorm, sinusoidal positions (computed at load exactly as
                             transformers' MarianSinusoidalPositionalEmbedding, never stored), embeddings
                             scaled by √d_model, SiLU ("swish"), final_logits_bias.
    mBART (Liu et al. 2020)  BART made pre-norm, with final LayerNorms in both stacks.
    M2M-100 / NLLB           pre-norm LayerNorm with final norms, fairseq's sinusoidal positions (from
                             padding_idx + 1; pads take a zero row), embeddings scaled by √d_model, ReLU,
                             no final_logits_bias.
    mT5                      T5 v1.1 with a multilingual vocabulary.

    pre-norm:   x = x + attn(norm(x));          x = x + cross(cross_norm(x));   x = x + ffn(mlp_norm(x))
    post-norm:  x = norm(x + attn(x));          x = cross_norm(x + cross(x));   x = mlp_norm(x + ffn(x))

The canonical tensor names are in tinybert/format.py.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import format as fmt
from ..config import Seq2SeqConfig
from ..errors import InputError, check_finite
from ..layers import (
    CachedRows,
    Embeddings,
    KVCache,
    Linear,
    Norm,
    PackedRows,
    Positions,
    TransformerBlock,
    cache_dtype,
    use_row_bands,
)

__all__ = ["Seq2SeqModel"]


class _Stack:
    """One half: embeddings → blocks → final norm (pre-norm models)."""

    def __init__(self, cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray], stack: str,
                 head: tuple[str, Linear] | None = None) -> None:
        decoder = stack == "decoder"
        self.block_config = block = cfg.decoder_block if decoder else cfg.encoder_block
        shared = not decoder or cfg.share_embeddings
        # Token rows come from the LM head's packed weight when that weight is this stack's token table.
        tied = head[1] if head is not None and head[0] == fmt.embed_names(stack, shared)["tokens"] else None
        self.embeddings = Embeddings(tensors, stack, cfg.positions, cfg.max_positions, block.norm, block.norm_eps,
                                     scale=cfg.scale_embedding, shared_tokens=shared,
                                     padding_idx=cfg.position_padding_idx, tied=tied)
        self.positions = Positions(block, tensors, stack)
        layers = cfg.num_decoder_layers if decoder else cfg.num_encoder_layers
        self.blocks = [TransformerBlock(block, tensors, fmt.layer_prefix(i, stack), i) for i in range(layers)]
        final = fmt.stack_prefix(stack) + fmt.FINAL_NORM
        self.final_norm = Norm(tensors, final, block.norm, block.norm_eps) if final + ".weight" in tensors else None

    def __call__(self, x: np.ndarray, rows: PackedRows | CachedRows) -> np.ndarray:
        for block in self.blocks:
            x = block(x, rows)
        return x if self.final_norm is None else self.final_norm(x, out=x)


class Seq2SeqModel:
    """encode(ids, starts) → encoder hidden states; start(hidden, starts) → the cache with each source's
    cross-attention keys and values; step(cache, tokens, slots, positions) → logits."""

    def __init__(self, cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray]) -> None:
        cfg.validate()
        self.config = cfg
        dec_tokens = fmt.embed_names("decoder", cfg.share_embeddings)["tokens"]
        head_weight = fmt.LM_HEAD + ".weight" if fmt.LM_HEAD + ".weight" in tensors else dec_tokens
        self.lm_head = Linear(tensors, fmt.LM_HEAD, weight_name=head_weight)
        head = (head_weight, self.lm_head)
        self.encoder = _Stack(cfg, tensors, "encoder", head)
        self.decoder = _Stack(cfg, tensors, "decoder", head)
        use_row_bands([layer for stack in (self.encoder, self.decoder) for b in stack.blocks for layer in b.linears()])
        self.kv_dtype = cache_dtype(any(layer.quantized for b in self.decoder.blocks for layer in b.linears()))

    def _check_positions(self, positions: np.ndarray) -> None:
        if self.config.positions != "relative" and positions.size and positions.max() >= self.config.max_positions:
            raise InputError(f"position {int(positions.max())} is past the model's {self.config.max_positions}")

    def _source_rows(self, ids: np.ndarray, starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Position-table rows of packed source tokens. fairseq's positions (``position_padding_idx``) number the
        non-pad tokens of each sequence from padding_idx + 1 and give pads the zero row padding_idx."""
        pad = self.config.position_padding_idx
        if pad is None:
            return positions
        real = ids != self.config.pad_token_id
        counts = np.cumsum(real)
        before = np.concatenate(([0], counts))[starts[:-1]]
        ordinal = counts - np.repeat(before, np.diff(starts))
        return np.where(real, ordinal + pad, pad).astype(np.int32)

    def _target_rows(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Position-table rows of decoder tokens: as transformers' incremental decoding numbers them, position p
        is row padding_idx + 1 + p and a pad token takes the zero row (fairseq positions only)."""
        pad = self.config.position_padding_idx
        if pad is None:
            return positions
        return np.where(tokens == self.config.pad_token_id, pad, positions + pad + 1).astype(np.int32)

    def encode(self, ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """ids int32 [T] (the sequences packed back to back), starts int64 [B+1] → float32 [T, H]."""
        cfg = self.config
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        if ids.ndim != 1 or starts.ndim != 1 or starts.size < 2 or starts[0] != 0 or starts[-1] != ids.size \
                or np.any(np.diff(starts) <= 0):
            raise InputError("encode needs ids [T] and increasing starts [B+1] from 0 to T")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise InputError("token id outside the vocabulary")
        lengths = np.diff(starts)
        positions = (np.arange(ids.size) - np.repeat(starts[:-1], lengths)).astype(np.int32)
        self._check_positions(positions)
        x = self.encoder.embeddings(ids, self._source_rows(ids, starts, positions))
        rows = PackedRows(self.encoder.block_config, self.encoder.positions, starts, np.ones(ids.size, dtype=np.uint8),
                          numba.get_num_threads())
        x = self.encoder(x, rows)
        check_finite(x, "encoder output")
        return x

    def start(self, encoder_hidden: np.ndarray, starts: np.ndarray, length: int,
              slots: int | None = None) -> KVCache:
        """Cross-attention keys/values of every layer for each encoded sequence b (rows starts[b]:starts[b+1]
        of ``encoder_hidden``), as source b of a new cache whose self-attention part holds ``length``
        decoder positions in each of ``slots`` slots (default B: one per source)."""
        cfg = self.config
        starts = np.asarray(starts, dtype=np.int64)
        batch = starts.size - 1
        slots = batch if slots is None else int(slots)
        if slots < 1 or not 1 <= length <= cfg.max_positions:
            raise InputError(f"a decoder state needs ≥ 1 slot and 1..{cfg.max_positions} positions")
        cache = KVCache(cfg, slots, int(length), batch, int(np.diff(starts).max()), self.kv_dtype)
        self.write_sources(cache, encoder_hidden, starts, np.arange(batch))
        return cache

    def write_sources(self, cache: KVCache, encoder_hidden: np.ndarray, starts: np.ndarray,
                      sources: np.ndarray) -> None:
        """Encoded sequence b (rows starts[b]:starts[b+1] of ``encoder_hidden``) becomes source ``sources[b]``
        of ``cache``: its cross-attention keys/values in every layer (a generation driver reuses a finished
        input's source for the next one)."""
        starts = np.asarray(starts, dtype=np.int64)
        sources = np.asarray(sources, dtype=np.int64)
        lengths = np.diff(starts)
        if (sources.shape != lengths.shape or (sources.size and (sources.min() < 0 or sources.max() >= cache.sources))
                or np.unique(sources).size != sources.size or lengths.max(initial=0) > cache.cross_k.shape[3]):
            raise InputError("write_sources needs distinct sources of the cache, each long enough")
        cache.source_lengths[sources] = lengths
        x = np.ascontiguousarray(encoder_hidden, dtype=np.float32)
        threads = numba.get_num_threads()
        for i, block in enumerate(self.decoder.blocks):
            cache.write_source(i, block.cross.kv(x, threads), starts, sources)

    def step(self, state: KVCache, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
             sources: np.ndarray | None = None) -> np.ndarray:
        """Rows r: token tokens[r] of the decoder sequence in slot slots[r] at position positions[r] (every
        earlier position of the slot already in the cache or earlier in this call), attending to the
        encoder output of source sources[r] (default: slots[r]) → logits [N, Vd]."""
        cfg = self.config
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        slots = np.ascontiguousarray(slots, dtype=np.int32)
        positions = np.ascontiguousarray(positions, dtype=np.int32)
        sources = slots if sources is None else np.ascontiguousarray(sources, dtype=np.int32)
        n = tokens.size
        if not (tokens.ndim == slots.ndim == positions.ndim == sources.ndim == 1 and n
                and slots.size == n == positions.size == sources.size):
            raise InputError("tokens, slots, positions and sources must be 1-D of the same non-zero length")
        if tokens.min() < 0 or tokens.max() >= cfg.decoder_vocab_size:
            raise InputError("token id outside the vocabulary")
        if (slots.min() < 0 or slots.max() >= state.slots or positions.min() < 0 or positions.max() >= state.length
                or sources.min() < 0 or sources.max() >= state.sources):
            raise InputError("slot, source or position outside the decoder state")
        self._check_positions(positions)
        x = self.decoder.embeddings(tokens, self._target_rows(tokens, positions))
        rows = CachedRows(self.decoder.block_config, self.decoder.positions, slots, positions, state,
                          numba.get_num_threads(), sources)
        x = self.decoder(x, rows)
        if cfg.lm_head_scale != 1.0:
            x *= np.float32(cfg.lm_head_scale)
        logits = self.lm_head(x, rows.threads)
        check_finite(logits, "logits")
        return logits
