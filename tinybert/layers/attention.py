"""Attention: the projections (SelfAttention, CrossAttention) and the rows they run over.

The rows decide how keys are found, so that one block serves encoders and decoders:

    PackedRows  whole sequences packed back to back (encoders, bidirectional decoders): bidirectional within each
                sequence; grouped-query heads are shared by repeating them.
    CachedRows  tokens of sequences held in cache slots (decoders): each row writes its key and value into its
                slot and attends causally to it, and cross-attends to the source its slot reads.

Positions are data of the stack (``Positions``): a rotary table applied to q and k (``RotaryTables``), or a bias
on the scores (T5's relative buckets; ALiBi would be another bias of the same [heads, distance] form). A sliding
attention window is a bias of that form too: −1e30 on keys a window or more away from the query (behind it in
causal rows: Gemma 3, Phi-3; on either side in packed rows: ModernBERT's local layers). Which
rotary table and which bias a layer uses is the config's per-layer data (``BlockConfig.layer_windows``).

DeBERTa (He et al., 2021) adds to q_i · k_j two terms through relative embeddings P (shared by the layers,
LayerNorm'ed in v3) projected by each layer's own query and key projections, Qr = P Wq + bq, Kr = P Wk + bk:

    score(i, j) = (q_i · k_j + q_i · Kr[δ] + k_j · Qr[δ]) / √(d · (1 + terms)),   δ = span + bucket(i − j)

(content-to-position c2p, position-to-content p2c; bucket is odd, so transformers' p2c index span − bucket(j − i)
is the same δ). The terms depend on content, not on the distance alone, so they cannot be a [heads, distance]
bias. They are made inside the packed attention kernel instead, by its own micro-kernel, where each block of
scores needs them (kernels/attention.py): each query block's q rows times the Kr rows it reaches, each key
block's k rows times the Qr rows it reaches. Qr and Kr are computed once, at load, by the layer's own qkv
projection (int8 files: its int8 weights, as for any other input).
"""

from __future__ import annotations

import math

import numpy as np

from .. import format as fmt
from ..config import BlockConfig
from ..errors import ModelFileError
from ..kernels import cpu
from ..kernels.attention import (
    NO_QUANTIZED_TABLES,
    NO_TABLES,
    attention_with_bias,
    pack_position_tables,
    position_table_rows,
    quantize_position_tables,
)
from ..kernels.decoder import cached_attention, cached_attention_with_bias, write_kv
from ..kernels.norm import head_rms_norm
from ..kernels.rope import apply_rope, rope_tables
from .cache import KVCache
from .linear import Linear
from .norm import Norm

_NO_BIAS = np.zeros((1, 0), dtype=np.float32)
_PACKED_KEPT = 64    # packed biases kept per stack (by longest sequence and window)
# The bias on keys outside a sliding window. Finite, not −inf: the attention kernels are compiled with fastmath,
# which assumes no infinities. Their softmax weight is then 2**-126 (exp2_nonpositive's floor) against the
# weight 1 of the top score: below float32's resolution of any sum it joins.
WINDOW_BIAS = np.float32(-1e30)


def log_bucket_position(relative_position: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' DeBERTa-v2 make_log_bucket_position (relative = query pos − key pos): exact within
    ±bucket_size / 2, logarithmic beyond, in numpy with the same float32 arithmetic."""
    rel = np.asarray(relative_position, dtype=np.int64)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    # torch's float32 log is not correctly rounded, nor is numpy's, and not always alike: a ceil that falls within
    # an ulp of an integer can differ by a bucket. The base rounded from a float64 log matched torch's for more
    # configs than numpy's; tests check every distance a model's positions reach against transformers.
    base = np.float32(math.log(float(np.float32((max_position - 1) / mid))))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pos = (np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid))
                           / base * np.float32(mid - 1)) + np.float32(mid))
    return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int64)


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


class RotaryTables:
    """The cos / sin tables of one canonical rope dict (kernels/rope.py) for the positions used so far, grown on
    demand (a table for a stated context of 10⁷ positions would be gigabytes); a position's entries do not depend
    on the table's length.

    longrope with long factors (Phi-3 past its original context L = original_max_position_embeddings):
    transformers rotates every position of a forward with the long factors when the forward reaches position L,
    with the short ones otherwise. The rule here is per sequence, so that a sequence's result never depends on
    what else is in the batch: a row takes the long factors iff the last position of ITS sequence in the call is
    L or more (for one sequence, transformers' rule). Both sets live in one table, rows p < L the short factors'
    angles at p and rows L + p the long factors' at p, so that any mix of rows is one apply_rope over row
    indices (``rows``): a position, or L plus it."""

    def __init__(self, head_dim: int, max_positions: int, rope: dict) -> None:
        self.head_dim, self.max_positions, self.rope = head_dim, max_positions, rope
        long = rope.get("long_factors") if rope["type"] == "longrope" else None
        switch = rope.get("original_max_position_embeddings", max_positions)
        # the position from which a sequence may take the long factors (None: it never does)
        self.switch: int | None = switch if long is not None and switch < max_positions else None
        self._long = {**rope, "factors": long} if self.switch is not None else None
        # One position at load checks the parameters. (cos, sin, short positions held, long positions held), one
        # tuple, so that a thread never reads one table with the other's counts.
        cos, sin = rope_tables(head_dim, 1, rope)
        if self._long is not None:
            rope_tables(head_dim, 1, self._long)
        self._tables = (cos, sin, 1, 0)

    def rows(self, at: np.ndarray, last: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index, cos, sin) such that ``apply_rope(x, index, cos, sin)`` rotates rows at positions ``at`` (int32,
        below max_positions); ``last``: the last position of each row's sequence in this call (None: each row's
        own position, right when every row is short or every row is at the switch or beyond)."""
        upto = int(at.max()) + 1 if at.size else 1
        if self.switch is None or upto <= self.switch:
            cos, sin, _, _ = self._cover(upto, long=False)
            return at, cos, sin
        cos, sin, _, _ = self._cover(upto, long=True)
        switch = np.int32(self.switch)
        long = (at if last is None else last) >= switch
        index = at + switch if long.all() else np.where(long, at + switch, at).astype(np.int32, copy=False)
        return index, cos, sin

    def _cover(self, upto: int, long: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The tables, grown by doubling to cover short (or only) positions < ``upto``, or long ones."""
        tables = self._tables
        _, _, short_held, long_held = tables
        d = self.head_dim
        if not long and short_held < upto:      # short rows never pass the switch
            held = min(self.switch or self.max_positions, max(upto, 2 * short_held, 256))
            tables = self._tables = (*rope_tables(d, held, self.rope), held, 0)
        elif long and long_held < upto:
            held = min(self.max_positions, max(upto, 2 * long_held, 256))
            short, longs = rope_tables(d, self.switch, self.rope), rope_tables(d, held, self._long)
            tables = self._tables = (np.concatenate([short[0], longs[0]]), np.concatenate([short[1], longs[1]]),
                                     self.switch, held)
        return tables


class Positions:
    """The position data a stack's attention uses: rotary tables, or the relative bias table (T5: layer 0's,
    shared by every layer). Learned and sinusoidal positions live in the embeddings instead."""

    def __init__(self, cfg: BlockConfig, tensors: dict[str, np.ndarray], stack: str = "") -> None:
        self.cfg = cfg
        self._rope = RotaryTables(cfg.head_dim, cfg.max_positions, cfg.rope) if cfg.positions == "rope" else None
        self._local_rope = RotaryTables(cfg.head_dim, cfg.max_positions, cfg.local_rope) \
            if cfg.local_rope is not None else None
        # The positions at which a rotary table switches to longrope's long factors (rows then need the last
        # position of their sequence).
        self.switches = sorted({t.switch for t in (self._rope, self._local_rope) if t is not None and t.switch})
        self._windows: dict[int, np.ndarray] = {}
        self.table = None
        if cfg.has_relative_bias:
            self.table = np.ascontiguousarray(tensors[fmt.stack_prefix(stack) + fmt.REL_BIAS], dtype=np.float32)
        self._causal = np.zeros((cfg.num_heads, 0), dtype=np.float32)
        self._packed: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self._content_index: dict[int, tuple[np.ndarray, bool, int]] = {}
        # DeBERTa: the relative embeddings (normed once), projected per layer by ``project``.
        self.rel_embeddings, self.rel_tables, self.rel_tables_8bit = None, [], []
        self.table_rows = 0     # the table rows the kernel may index, in every layer's tables
        if cfg.positions == "disentangled":
            rel = np.ascontiguousarray(tensors[fmt.stack_prefix(stack) + fmt.REL_EMBEDDINGS], dtype=np.float32)
            norm = fmt.stack_prefix(stack) + fmt.REL_NORM
            self.rel_embeddings = Norm(tensors, norm, "layernorm", cfg.norm_eps)(rel) \
                if norm + ".weight" in tensors else rel
            self.span = fmt.relative_span(cfg.relative_buckets, cfg.relative_max_distance)

    def project(self, qkv: list[Linear]) -> None:
        """Qr and Kr of each layer, [heads, 2 · span, d], by the layers' qkv projections (DeBERTa, share_att_key),
        packed as the attention kernel reads them: per layer one table per head of the disentangled terms,
        Kr's heads (c2p, against the q heads) then Qr's (p2c, against the k heads). For an int8 layer on a CPU
        with VNNI also in 8 bits: the kernel then makes both terms with 8-bit products (the score terms in the
        precision of the layer's own products; an fp32 model keeps fp32 scores)."""
        if self.rel_embeddings is None:
            return
        h, d = self.cfg.num_heads, self.cfg.head_dim
        for linear in qkv:
            rows = linear(self.rel_embeddings)
            heads = {"c2p": rows[:, h * d:2 * h * d], "p2c": rows[:, :h * d]}      # Kr, Qr
            tables = {term: np.ascontiguousarray(heads[term].reshape(-1, h, d).transpose(1, 0, 2))
                      if term in self.cfg.disentangled else None for term in ("c2p", "p2c")}
            packed = pack_position_tables(tables["c2p"], tables["p2c"], _score_scale(self.cfg))
            self.rel_tables.append(packed)
            eight_bit = linear.quantized and cpu.VNNI_AVAILABLE and d % 4 == 0 and len(self.cfg.disentangled) == 2
            self.rel_tables_8bit.append(quantize_position_tables(packed) if eight_bit else NO_QUANTIZED_TABLES)
        # The kernel reads these unchecked: their shapes are checked once here, and a batch's index against
        # table_rows (PackedRows).
        for packed, (t8, corr, scale) in zip(self.rel_tables, self.rel_tables_8bit):
            groups, panels = packed.shape[:2]
            if packed.ndim != 4 or groups != h * len(self.cfg.disentangled) or packed.shape[2:] != (d, 16) \
                    or not packed.flags.c_contiguous \
                    or t8.shape[0] and (t8.shape != (groups, panels, d // 4, 16, 4) or d % 4
                                        or corr.shape != (groups, panels * 16) or scale.shape != (groups,)
                                        or not (t8.flags.c_contiguous and corr.flags.c_contiguous)):
                raise ModelFileError("DeBERTa position tables do not fit the model")
        self.table_rows = min(position_table_rows(t) for t in self.rel_tables) if self.rel_tables else 0

    def packed_content_index(self, longest: int) -> tuple[np.ndarray, int, int]:
        """DeBERTa: rel[center + j − i] = δ(i, j), the Qr / Kr row of query i and key j in sequences up to
        ``longest`` (center = longest − 1), non-increasing; how far it is linear (no log bucket reached:
        rel[center + x] = rel[center] − x for |x| < the returned span); and its largest row. Kept per ``longest``,
        as packed_bias (a batch-1 encode spent 0.15 ms of its 9 rebuilding it)."""
        held = self._content_index.get(longest)
        if held is None:
            if len(self._content_index) >= _PACKED_KEPT:
                self._content_index.clear()
            rel, linear_span = self._build_content_index(longest)
            # The kernel reads the tables by rel unchecked, and takes rel non-increasing: checked once here.
            if rel.shape[0] != 2 * longest - 1 or rel.min() < 0 or np.any(np.diff(rel) > 0):
                raise ModelFileError("DeBERTa's relative position index is out of order")
            held = self._content_index[longest] = (rel, linear_span, int(rel.max()))
        return held

    def _build_content_index(self, longest: int) -> tuple[np.ndarray, int]:
        cfg, span = self.cfg, self.span
        query_minus_key = np.arange(longest - 1, -longest, -1)    # i − j for j − i = −(longest − 1) ... longest − 1
        if cfg.relative_buckets > 0:
            query_minus_key = log_bucket_position(query_minus_key, cfg.relative_buckets, cfg.relative_max_distance)
        delta = np.clip(query_minus_key + span, 0, 2 * span - 1)
        # The smallest |x| at which the index leaves the line through the centre: the kernel's skewed tiles take
        # the sequences shorter than that (per sequence, so that a result does not depend on its batch).
        off_line = np.flatnonzero(delta != delta[longest - 1] - np.arange(1 - longest, longest)) - (longest - 1)
        linear_span = int(np.abs(off_line).min()) if off_line.size else longest
        return delta.astype(np.int32), linear_span

    def rope(self, at: np.ndarray, last: np.ndarray | None = None,
             local: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(index, cos, sin) for apply_rope on rows at positions ``at`` (RotaryTables.rows; ``last``: the last
        position of each row's sequence in the call, needed when ``needs_last``), or None without rotary
        positions; ``local``: the windowed layers' tables (``local_rope``, else the same)."""
        tables = self._local_rope if local and self._local_rope is not None else self._rope
        return None if tables is None else tables.rows(at, last)

    def needs_last(self, at: np.ndarray) -> bool:
        """Whether rows at ``at`` need their sequences' last positions: some row has reached a switch to long
        factors, and not every row is past every switch (then each row's own position decides)."""
        return bool(self.switches) and at.size > 0 and int(at.max()) >= self.switches[0] \
            and int(at.min()) < self.switches[-1]

    def window_bias(self, window: int, upto: int) -> np.ndarray:
        """bias[h, p − t] for a query at p and keys t ≤ p < ``upto`` (or more): 0 within ``window`` positions
        (p − t < window, transformers' sliding_window_overlay), WINDOW_BIAS beyond. Kept per window, grown by
        doubling like causal_bias."""
        held = self._windows.get(window)
        if held is None or held.shape[1] < upto:
            width = max(upto, min(self.cfg.max_positions, max(2 * (0 if held is None else held.shape[1]), 64)))
            held = np.zeros((self.cfg.num_heads, width), dtype=np.float32)
            held[:, window:] = WINDOW_BIAS
            self._windows[window] = held
        return held

    def packed_bias(self, longest: int, window: int = 0) -> tuple[np.ndarray, int]:
        """bias[h, center + j − i] for keys j and queries i of sequences up to ``longest`` (bidirectional): the
        relative bias table's, plus, for a layer with a ``window``, WINDOW_BIAS on keys that far away or more."""
        if self.table is None and not window:
            return _NO_BIAS, 0
        # Kept per (longest, window): a batch-1 encode of MPNet spent ~10 ms of 45 rebuilding it (bucket logs)
        # on every call. Readers never write it; a bounded number of lengths is kept (threads may race to build
        # one: each returns its own, equal, copy).
        key = (longest, window)
        held = self._packed.get(key)
        if held is None:
            if len(self._packed) >= _PACKED_KEPT:
                self._packed.clear()
            held = self._packed[key] = self._build_packed_bias(longest, window)
        return held

    def _build_packed_bias(self, longest: int, window: int) -> tuple[np.ndarray, int]:
        cfg = self.cfg
        offsets = np.arange(-(longest - 1), longest)
        if self.table is None:
            bias = np.zeros((cfg.num_heads, offsets.size), dtype=np.float32)
        else:
            buckets = relative_position_bucket(offsets, True, cfg.relative_buckets, cfg.relative_max_distance)
            bias = np.ascontiguousarray(self.table[buckets].T)                 # [heads, 2·longest − 1]
        if window:
            bias[:, np.abs(offsets) >= window] = WINDOW_BIAS
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
    if cfg.score_scale is not None:
        return cfg.score_scale
    return 1.0 / math.sqrt(cfg.head_dim * (1 + len(cfg.disentangled))) if cfg.attn_scale else 1.0


_NO_REL = np.zeros(0, dtype=np.int32)


def _shared_kv_heads(qkv: np.ndarray, num_heads: int, num_kv_heads: int, d: int) -> np.ndarray:
    """Grouped-query attention over packed rows: q | k | v [T, (Hq + 2 Hkv) d] → q | k | v [T, 3 Hq d], key and
    value head j repeated for query heads j·g .. j·g + g − 1 (g = Hq / Hkv), as transformers' repeat_kv. The
    packed kernel takes one key head per query head; the copy costs [T, 2 Hq d] floats per layer, little beside
    the projections (the cached decoder kernels share heads without it)."""
    n, group, a, kv = qkv.shape[0], num_heads // num_kv_heads, num_heads * d, num_kv_heads * d
    out = np.empty((n, 3 * a), dtype=np.float32)
    parts = out.reshape(n, 3, num_kv_heads, group, d)      # a view: q heads, k heads, v heads, by kv group
    parts[:, 0] = qkv[:, :a].reshape(n, num_kv_heads, group, d)
    parts[:, 1] = qkv[:, a:a + kv].reshape(n, num_kv_heads, 1, d)
    parts[:, 2] = qkv[:, a + kv:a + 2 * kv].reshape(n, num_kv_heads, 1, d)
    return out


class PackedRows:
    """Sequence b is rows starts[b]:starts[b+1]; key_mask uint8 [T] is 0 for keys no query may see (padding).
    ``threads``: numba.get_num_threads(), read once per forward (each read costs ~0.8 µs)."""

    def __init__(self, cfg: BlockConfig, positions: Positions, starts: np.ndarray, key_mask: np.ndarray,
                 threads: int) -> None:
        self.cfg, self.starts, self.key_mask, self.threads = cfg, starts, key_mask, threads
        self.scale = _score_scale(cfg)
        self.positions = positions
        lengths = np.diff(starts)
        longest = int(lengths.max()) if lengths.size else 0
        windows = {0, *cfg.layer_windows}      # the windows of the layers (0: none)
        self.bias = {w: positions.packed_bias(longest if positions.table is not None or w else 0, w) for w in windows}
        self.rel, self.linear_span = _NO_REL, 0
        if positions.rel_tables and longest > 0:   # DeBERTa: no bias table, no window; the index table is centred
            self.rel, self.linear_span, rel_top = positions.packed_content_index(longest)
            if rel_top >= positions.table_rows:
                raise ModelFileError("DeBERTa position tables do not fit the batch")
            self.bias = {0: (_NO_BIAS, longest - 1)}
        self.rope = None
        if cfg.positions == "rope":
            # Rotary positions restart in each sequence (transformers numbers a padded row 0 .. S−1).
            at = (np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1], lengths)).astype(np.int32)
            last = np.repeat(lengths - 1, lengths) if positions.needs_last(at) else None
            self.rope = {w: positions.rope(at, last, local=bool(w)) for w in windows}

    def attend(self, qkv: np.ndarray, layer: int) -> np.ndarray:
        """q | k | v rows [T, (Hq + 2 Hkv) d] → context [T, Hq d]."""
        cfg = self.cfg
        window = cfg.layer_windows[layer] if cfg.layer_windows else 0
        n, d, a = qkv.shape[0], cfg.head_dim, cfg.num_heads * cfg.head_dim
        qk_width = (cfg.num_heads + cfg.num_kv_heads) * d
        if self.rope is not None:
            # q and k rotated as one [T, Hq + Hkv, d] array (both take the same angles), in a contiguous copy.
            qk = np.ascontiguousarray(qkv[:, :qk_width]).reshape(n, cfg.num_heads + cfg.num_kv_heads, d)
            apply_rope(qk, *self.rope[window])
            qkv[:, :qk_width] = qk.reshape(n, qk_width)
        if cfg.num_kv_heads < cfg.num_heads:
            qkv = _shared_kv_heads(qkv, cfg.num_heads, cfg.num_kv_heads, d)
        context = np.empty((n, a), dtype=np.float32)
        bias, center = self.bias[window]
        tables, eight_bit, c2p_at, p2c_at = self._content(layer, d)
        attention_with_bias(qkv, self.starts, self.key_mask, cfg.num_heads, self.scale, bias, center,
                            tables, *eight_bit, c2p_at, p2c_at, self.rel, self.linear_span, context,
                            self.threads)
        return context

    def _content(self, layer: int, d: int) -> tuple[np.ndarray, tuple, int, int]:
        """DeBERTa's packed Kr | Qr tables of ``layer``, their 8-bit form (or NO_QUANTIZED_TABLES) and where each
        term's heads start in them (−1: absent), checked once (Positions.project; the index in __init__)."""
        if not self.rel.size:
            return NO_TABLES, NO_QUANTIZED_TABLES, -1, -1
        cfg = self.cfg
        c2p_at = 0 if "c2p" in cfg.disentangled else -1
        p2c_at = (cfg.num_heads if c2p_at == 0 else 0) if "p2c" in cfg.disentangled else -1
        return self.positions.rel_tables[layer], self.positions.rel_tables_8bit[layer], c2p_at, p2c_at


def _last_of_slot(slots: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Per row, the largest position among the rows of its cache slot (its sequence) in this call."""
    top = np.zeros(int(slots.max()) + 1, dtype=np.int32)
    np.maximum.at(top, slots, at)
    return top[slots]


class CachedRows:
    """Row r is the token at position positions[r] of the sequence in cache slot slots[r] (every earlier
    position of the slot already in the cache or earlier in these rows), whose source is sources[r]."""

    def __init__(self, cfg: BlockConfig, positions: Positions, slots: np.ndarray, at: np.ndarray, cache: KVCache,
                 threads: int, sources: np.ndarray | None = None) -> None:
        self.cfg, self.slots, self.positions, self.cache, self.threads = cfg, slots, at, cache, threads
        self.scale = _score_scale(cfg)
        upto = int(at.max()) + 1
        last = _last_of_slot(slots, at) if positions.needs_last(at) else None
        self.rope = positions.rope(at, last)
        self.bias = positions.causal_bias(upto)
        # per layer: its rotary tables and score bias (windowed layers: local rope, window bias)
        windows = cfg.layer_windows if cfg.windowed else ()
        local = positions.rope(at, last, local=True) if windows else None
        self.layer_rope = [local if w else self.rope for w in windows]
        self.layer_bias = [positions.window_bias(w, upto) if w else self.bias for w in windows]
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
        rope, bias = (self.layer_rope[layer], self.layer_bias[layer]) if self.layer_bias else (self.rope, self.bias)
        if rope is not None:
            apply_rope(q, *rope)
            apply_rope(k, *rope)
        keys, values = self.cache.self_k[layer], self.cache.self_v[layer]
        write_kv(k, v, self.slots, self.positions, keys, values)
        cached_attention_with_bias(q, keys, values, self.slots, self.positions, self.scale, bias, q)
        return q.reshape(n, hq * d)

    def attend_source(self, q: np.ndarray, layer: int) -> np.ndarray:
        """Queries [N, Hq d] → context over all keys of each row's source (written by ``KVCache.write_source``)."""
        cfg = self.cfg
        n = q.shape[0]
        q = q.reshape(n, cfg.num_heads, cfg.head_dim)
        cached_attention(q, self.cache.cross_k[layer], self.cache.cross_v[layer], self.sources,
                         self.source_positions, self.scale, q)
        return q.reshape(n, -1)


class HeadNorms:
    """qk_norm: each head's query and key normed over head_dim (weights shared by the heads), in place in the
    q | k | v rows, before the rows apply positions (Qwen3, Gemma 3). RMSNorm (every family so far) is one
    kernel call over the rows in place; a LayerNorm copies the columns out and back."""

    def __init__(self, cfg: BlockConfig, tensors: dict[str, np.ndarray], prefix: str) -> None:
        self.q = Norm(tensors, prefix + fmt.ATTN_Q_NORM, cfg.norm, cfg.norm_eps)
        self.k = Norm(tensors, prefix + fmt.ATTN_K_NORM, cfg.norm, cfg.norm_eps)
        d = cfg.head_dim
        self.q_heads, self.k_heads, self.d = cfg.num_heads, cfg.num_kv_heads, d
        self.q_end, self.k_end = cfg.num_heads * d, (cfg.num_heads + cfg.num_kv_heads) * d
        for norm, name in ((self.q, fmt.ATTN_Q_NORM), (self.k, fmt.ATTN_K_NORM)):
            if norm.weight.shape != (d,):
                raise ModelFileError(f"{prefix}{name}.weight has shape {norm.weight.shape}, expected ({d},)")
        self.rms = cfg.norm == "rmsnorm"
        self.wq, self.wk = (np.ascontiguousarray(n.weight, dtype=np.float32) for n in (self.q, self.k))
        self.eps = np.float32(cfg.norm_eps)

    def __call__(self, qkv: np.ndarray) -> None:
        if self.rms:
            head_rms_norm(qkv, self.q_heads, self.k_heads, self.wq, self.wk, self.eps)
            return
        for norm, start, end in ((self.q, 0, self.q_end), (self.k, self.q_end, self.k_end)):
            heads = np.ascontiguousarray(qkv[:, start:end]).reshape(-1, self.d)
            qkv[:, start:end] = norm(heads, out=heads).reshape(qkv.shape[0], end - start)


class SelfAttention:
    def __init__(self, tensors: dict[str, np.ndarray], prefix: str, cfg: BlockConfig) -> None:
        self.qkv = Linear(tensors, prefix + fmt.ATTN_QKV)
        self.out = Linear(tensors, prefix + fmt.ATTN_OUT)
        self.head_norms = HeadNorms(cfg, tensors, prefix) if cfg.qk_norm else None

    def linears(self) -> list[Linear]:
        return [self.qkv, self.out]

    def __call__(self, x: np.ndarray, rows: PackedRows | CachedRows, layer: int) -> np.ndarray:
        qkv = self.qkv(x, rows.threads)
        if self.head_norms is not None:
            self.head_norms(qkv)
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
