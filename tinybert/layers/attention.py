"""Attention: the projections (SelfAttention, CrossAttention) and the rows they run over.

The rows decide how keys are found, so that one block serves encoders and decoders:

    PackedRows  whole sequences packed back to back (encoders): bidirectional within each sequence.
    CachedRows  tokens of sequences held in cache slots (decoders): each row writes its key and value into its
                slot and attends causally to it, and cross-attends to the source its slot reads.

Positions are data of the stack (``Positions``): a rotary table applied to q and k, or a bias on the scores
(T5's relative buckets; ALiBi would be another bias of the same [heads, distance] form). Local attention in
packed rows (ModernBERT) is a bias of the same form too: 0 within the window, a large negative number outside.
"""

from __future__ import annotations

import math

import numpy as np

from .. import format as fmt
from ..config import BlockConfig
from ..kernels.attention import attention_with_bias
from ..kernels.decoder import cached_attention, cached_attention_with_bias, write_kv
from ..kernels.rope import apply_rope, rope_tables
from .cache import KVCache
from .linear import Linear

_NO_BIAS = np.zeros((1, 0), dtype=np.float32)
# Keys outside a local window: finite, so that the kernel's fast-math arithmetic never meets an infinity. Its
# scores sit ~1e30 below any in-window score, which the softmax turns into exact zeros (kernels/attention.py
# flushes p below 2**-126 to 0); a query whose every key is outside (padding far from any token) stays finite.
_OUTSIDE_WINDOW = np.float32(-1e30)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
    """transformers' T5Attention._relative_position_bucket (relative = key pos − query pos), in numpy with
    the same float32 log arithmetic."""
    rel = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
        large = (np.log(ratio) / np.float32(math.log(max_distance / max_exact))
                 * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(max_exact + large, num_buckets - 1)
    return buckets + np.where(is_small, rel, large)


class Positions:
    """The position data a stack's attention uses: rotary tables, or the relative bias table (T5: layer 0's,
    shared by every layer). Learned and sinusoidal positions live in the embeddings instead."""

    def __init__(self, cfg: BlockConfig, tensors: dict[str, np.ndarray], stack: str = "") -> None:
        self.cfg = cfg
        # Rotary tables cover the positions used so far and grow on demand (a table for a stated context of
        # 10⁷ positions would be gigabytes); one position at load checks the rope parameters. Windowed layers
        # may rotate with other parameters (ModernBERT's local theta).
        self._params = {False: cfg.rope, True: cfg.window_rope or cfg.rope}
        self._rope = {windowed: rope_tables(cfg.head_dim, 1, params) for windowed, params in self._params.items()} \
            if cfg.positions == "rope" else None
        self.table = None
        if cfg.has_relative_bias:
            self.table = np.ascontiguousarray(tensors[fmt.stack_prefix(stack) + fmt.REL_BIAS], dtype=np.float32)
        self._causal = np.zeros((cfg.num_heads, 0), dtype=np.float32)

    def rope(self, upto: int, windowed: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """cos, sin tables covering positions < ``upto`` (≤ max_positions), or None without rotary positions
        (``windowed``: those of the local-attention layers). Grown by doubling; a position's entries do not
        depend on the table's length."""
        if self._rope is None:
            return None
        held = self._rope[windowed][0].shape[0]
        if held < upto:
            grown = min(self.cfg.max_positions, max(upto, 2 * held, 256))
            self._rope[windowed] = rope_tables(self.cfg.head_dim, grown, self._params[windowed])
        return self._rope[windowed]

    def packed_bias(self, longest: int, windowed: bool = False) -> tuple[np.ndarray, int]:
        """bias[h, center + j − i] for keys j and queries i of sequences up to ``longest`` (bidirectional);
        ``windowed``: that of the local-attention layers, which also shuts out keys more than ``window`` away."""
        cfg = self.cfg
        if self.table is None and not windowed:
            return _NO_BIAS, 0
        offsets = np.arange(-(longest - 1), longest)
        if self.table is None:
            bias = np.zeros((cfg.num_heads, offsets.size), dtype=np.float32)
        else:
            buckets = relative_position_bucket(offsets, True, cfg.relative_buckets, cfg.relative_max_distance)
            bias = np.ascontiguousarray(self.table[buckets].T)                 # [heads, 2·longest − 1]
        if windowed:
            bias[:, np.abs(offsets) > cfg.window] = _OUTSIDE_WINDOW
        return bias, longest - 1

    def causal_bias(self, upto: int) -> np.ndarray:
        """bias[h, p − t] for a query at p and keys t ≤ p < ``upto`` (or more positions); kept, and grown by
        doubling. (Rebuilt one position longer at every decode step, its arrays grew by a few bytes each time,
        and the process's heap by ~2 MB per 2,000-step translation with a new model each time: the config
        fuzzer ran out of address space.)"""
        if self.table is None:
            return _NO_BIAS
        if self._causal.shape[1] < upto:
            cfg = self.cfg
            # Never shorter than asked, even past max_positions: the kernels index it unchecked.
            upto = max(upto, min(cfg.max_positions, max(2 * self._causal.shape[1], 64)))
            buckets = relative_position_bucket(-np.arange(upto), False, cfg.relative_buckets,
                                               cfg.relative_max_distance)
            self._causal = np.ascontiguousarray(self.table[buckets].T)
        return self._causal


def _score_scale(cfg: BlockConfig) -> float:
    return 1.0 / math.sqrt(cfg.head_dim) if cfg.attn_scale else 1.0


class PackedRows:
    """Sequence b is rows starts[b]:starts[b+1]; key_mask uint8 [T] is 0 for keys no query may see (padding).
    ``threads``: numba.get_num_threads(), read once per forward (each read costs ~0.8 µs)."""

    def __init__(self, cfg: BlockConfig, positions: Positions, starts: np.ndarray, key_mask: np.ndarray,
                 threads: int) -> None:
        self.cfg, self.starts, self.key_mask, self.threads = cfg, starts, key_mask, threads
        self.scale = _score_scale(cfg)
        self.windowed = frozenset(cfg.window_layers)
        kinds = (False, True) if self.windowed else (False,)     # plain layers, local-attention layers
        lengths = np.diff(starts)
        longest = int(lengths.max()) if lengths.size else 0
        self.bias = {w: positions.packed_bias(longest if positions.table is not None or w else 0, w) for w in kinds}
        self.rope = None
        if cfg.positions == "rope":
            # Rotary positions restart in each sequence (transformers numbers a padded row 0 .. S−1).
            self.at = (np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1], lengths)).astype(np.int32)
            self.rope = {w: positions.rope(longest, w) for w in kinds}

    def attend(self, qkv: np.ndarray, layer: int) -> np.ndarray:
        """q | k | v rows [T, 3A] → context [T, A]."""
        cfg = self.cfg
        windowed = layer in self.windowed
        n, a = qkv.shape[0], cfg.num_heads * cfg.head_dim
        if self.rope is not None:
            # q and k rotated as one [T, 2·heads, d] array (both take the same angles), in a contiguous copy.
            qk = np.ascontiguousarray(qkv[:, :2 * a]).reshape(n, 2 * cfg.num_heads, cfg.head_dim)
            apply_rope(qk, self.at, *self.rope[windowed])
            qkv[:, :2 * a] = qk.reshape(n, 2 * a)
        context = np.empty((n, a), dtype=np.float32)
        bias, center = self.bias[windowed]
        attention_with_bias(qkv, self.starts, self.key_mask, cfg.num_heads, self.scale, bias, center,
                            context, self.threads)
        return context


class CachedRows:
    """Row r is the token at position positions[r] of the sequence in cache slot slots[r] (every earlier
    position of the slot already in the cache or earlier in these rows), whose source is sources[r]."""

    def __init__(self, cfg: BlockConfig, positions: Positions, slots: np.ndarray, at: np.ndarray, cache: KVCache,
                 threads: int, sources: np.ndarray | None = None) -> None:
        self.cfg, self.slots, self.positions, self.cache, self.threads = cfg, slots, at, cache, threads
        self.scale = _score_scale(cfg)
        upto = int(at.max()) + 1
        self.rope = positions.rope(upto)
        self.bias = positions.causal_bias(upto)
        cache.reserve(upto)
        if cfg.cross_attention:
            self.sources = slots if sources is None else sources
            self.source_positions = cache.source_lengths[self.sources] - 1   # every source key is visible

    def attend(self, qkv: np.ndarray, layer: int) -> np.ndarray:
        """q | k | v rows [N, (Hq + 2 Hkv) d] → context [N, Hq d]; writes k and v into the cache first."""
        cfg = self.cfg
        n, hq, hkv, d = qkv.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = np.ascontiguousarray(qkv[:, :hq * d]).reshape(n, hq, d)
        k = np.ascontiguousarray(qkv[:, hq * d:(hq + hkv) * d]).reshape(n, hkv, d)
        v = np.ascontiguousarray(qkv[:, (hq + hkv) * d:]).reshape(n, hkv, d)
        if self.rope is not None:
            apply_rope(q, self.positions, *self.rope)
            apply_rope(k, self.positions, *self.rope)
        keys, values = self.cache.self_k[layer], self.cache.self_v[layer]
        write_kv(k, v, self.slots, self.positions, keys, values)
        cached_attention_with_bias(q, keys, values, self.slots, self.positions, self.scale, self.bias, q)
        return q.reshape(n, hq * d)

    def attend_source(self, q: np.ndarray, layer: int) -> np.ndarray:
        """Queries [N, Hq d] → context over all keys of each row's source (written by ``KVCache.write_source``)."""
        cfg = self.cfg
        n = q.shape[0]
        q = q.reshape(n, cfg.num_heads, cfg.head_dim)
        cached_attention(q, self.cache.cross_k[layer], self.cache.cross_v[layer], self.sources,
                         self.source_positions, self.scale, q)
        return q.reshape(n, -1)


class SelfAttention:
    def __init__(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        self.qkv = Linear(tensors, prefix + fmt.ATTN_QKV)
        self.out = Linear(tensors, prefix + fmt.ATTN_OUT)

    def linears(self) -> list[Linear]:
        return [self.qkv, self.out]

    def __call__(self, x: np.ndarray, rows: PackedRows | CachedRows, layer: int) -> np.ndarray:
        qkv = self.qkv(x, rows.threads)
        context = rows.attend(qkv, layer)
        del qkv   # [T, 3A], the largest activation: gone before the output projection allocates (peak memory)
        return self.out(context, rows.threads)


class CrossAttention:
    """Queries from the decoder rows; keys and values from the encoder output, computed once per source."""

    def __init__(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        self.q = Linear(tensors, prefix + fmt.CROSS_Q)
        self.kv = Linear(tensors, prefix + fmt.CROSS_KV)
        self.out = Linear(tensors, prefix + fmt.CROSS_OUT)

    def linears(self) -> list[Linear]:
        return [self.q, self.kv, self.out]

    def __call__(self, x: np.ndarray, rows: CachedRows, layer: int) -> np.ndarray:
        return self.out(rows.attend_source(self.q(x, rows.threads), layer), rows.threads)
