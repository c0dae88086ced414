"""Encoder-decoder Transformers (T5 v1.0 / v1.1, BART, Marian) — the forward pass. Arrays in, arrays out.

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

    pre-norm:   x = x + attn(norm(x));          x = x + cross(cross_norm(x));   x = x + ffn(mlp_norm(x))
    post-norm:  x = norm(x + attn(x));          x = cross_norm(x + cross(x));   x = mlp_norm(x + ffn(x))

Canonical tensor names (float32; ``S`` is ``encoder`` or ``decoder``, ``L`` the layer index; ``A`` =
num_heads · head_dim, which need not equal H for T5; ``I`` the FFN width; every ``.bias`` is optional and
taken as zero when absent, every norm has a ``.bias`` only when it is a LayerNorm):

    embed.tokens [V, H]                    token table of the encoder (and of the decoder unless below)
    decoder.embed.tokens [Vd, H]           only when the decoder has its own table (Marian, unshared)
    S.embed.positions [P, H]               learned positions (BART), row p = position p (offset removed)
    S.embed.norm.weight / .bias [H]        LayerNorm on the embeddings (BART layernorm_embedding)
    S.rel_bias [buckets, num_heads]        T5 relative attention bias (layer 0's, shared by all layers)
    S.layers.L.attn_norm.weight [H]        self-attention norm (before it: pre-norm; after the add: post)
    S.layers.L.attn.qkv.weight [3A, H]     q | k | v stacked
    S.layers.L.attn.out.weight [H, A]
    decoder.layers.L.cross_norm.weight [H]
    decoder.layers.L.cross.q.weight [A, H]
    decoder.layers.L.cross.kv.weight [2A, H]   k | v stacked, applied to the encoder output
    decoder.layers.L.cross.out.weight [H, A]
    S.layers.L.mlp_norm.weight [H]
    S.layers.L.mlp.up.weight [I, H]        or [2I, H] for a gated FFN (gate rows first, then linear)
    S.layers.L.mlp.down.weight [H, I]
    S.final_norm.weight [H]                pre-norm models (T5)
    lm_head.weight [Vd, H]                 only when not tied to the decoder token table
    lm_head.bias [Vd]                      final_logits_bias (BART, Marian)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .blocks import Linear
from .config import Seq2SeqConfig
from .decoder import Norm
from .errors import InputError, check_finite
from .format import SCALE_SUFFIX
from .kernels.activations import ACTIVATIONS
from .kernels.attention import attention_with_bias
from .kernels.decoder import cached_attention, cached_attention_with_bias, write_kv
from .kernels.decoder import copy_slots as copy_cache_slots

# --- positions ---------------------------------------------------------------------------------------------

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


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """transformers' MarianSinusoidalPositionalEmbedding.create_weight: sin in the first half, cos in the
    second (not interleaved), computed in float64 and stored as float32."""
    j = np.arange(dim)
    position_enc = np.arange(n_pos, dtype=np.float64)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    out = np.empty((n_pos, dim), dtype=np.float32)
    sentinel = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    out[:, :sentinel] = np.sin(position_enc[:, 0::2])
    out[:, sentinel:] = np.cos(position_enc[:, 1::2])
    return out


def _silu(x: np.ndarray) -> None:
    with np.errstate(over="ignore"):
        x *= np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


_ACT = {**ACTIVATIONS, "silu": _silu}


# --- layers ------------------------------------------------------------------------------------------------

class _FFN:
    def __init__(self, cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray], p: str) -> None:
        self.up = Linear(tensors, p + "mlp.up")
        self.down = Linear(tensors, p + "mlp.down")
        self.gated = cfg.gated_mlp
        self.act = _ACT[cfg.activation]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        hidden = self.up(x)
        if self.gated:
            inter = hidden.shape[1] // 2
            gate = np.ascontiguousarray(hidden[:, :inter])
            self.act(gate)
            gate *= hidden[:, inter:]
            hidden = gate
        else:
            self.act(hidden)
        return self.down(hidden)


class _Block:
    """One encoder or decoder layer: norms, self-attention projections, optional cross-attention, FFN."""

    def __init__(self, cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray], p: str, cross: bool) -> None:
        self.cfg = cfg
        self.attn_norm = Norm(tensors, p + "attn_norm", cfg.norm_eps)
        self.qkv = Linear(tensors, p + "attn.qkv")
        self.attn_out = Linear(tensors, p + "attn.out")
        if cross:
            self.cross_norm = Norm(tensors, p + "cross_norm", cfg.norm_eps)
            self.cross_q = Linear(tensors, p + "cross.q")
            self.cross_kv = Linear(tensors, p + "cross.kv")
            self.cross_out = Linear(tensors, p + "cross.out")
        self.mlp_norm = Norm(tensors, p + "mlp_norm", cfg.norm_eps)
        self.ffn = _FFN(cfg, tensors, p)

    def sublayer(self, x: np.ndarray, norm: Norm, fn) -> np.ndarray:
        if self.cfg.pre_norm:
            return x + fn(norm(x))
        return norm(x + fn(x))

    def split_qkv(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, h, d = x.shape[0], self.cfg.num_heads, self.cfg.head_dim
        qkv = self.qkv(x)
        a = h * d
        return tuple(np.ascontiguousarray(qkv[:, i * a:(i + 1) * a]).reshape(n, h, d) for i in range(3))


class _Table:
    """An embedding table, int8 with per-row scales or float32; rows are widened only when looked up."""

    def __init__(self, tensors: dict[str, np.ndarray], name: str) -> None:
        self.values = tensors[name]
        self.scale = tensors.get(name + SCALE_SUFFIX)

    def rows(self, ids: np.ndarray, factor: np.float32) -> np.ndarray:
        """float32 rows ``ids`` times ``factor`` (Marian's √d embedding scale)."""
        if self.scale is None:
            return self.values[ids] * factor
        return self.values[ids].astype(np.float32) * (self.scale[ids] * factor)[:, None]

    def dense(self) -> np.ndarray:
        return np.ascontiguousarray(self.rows(np.arange(self.values.shape[0]), np.float32(1.0)))


class DecoderState:
    """Decoder state: per slot, the self-attention cache (filled by ``step``); per source sequence, the
    cross-attention keys/values of its encoder output (filled once by ``Seq2SeqModel.start``). Beam search
    gives one source several slots (its beams), which all read that source's cross keys/values.

    self_k, self_v float32 [layers, slots, heads, length, head_dim]; cross_k, cross_v float32
    [layers, sources, heads, source_length, head_dim]; source_lengths int32 [sources].
    """

    def __init__(self, cfg: Seq2SeqConfig, slots: int, length: int, sources: int, source_length: int) -> None:
        shape = (cfg.num_decoder_layers, slots, cfg.num_heads, length, cfg.head_dim)
        self.self_k = np.zeros(shape, dtype=np.float32)
        self.self_v = np.zeros(shape, dtype=np.float32)
        cross = (cfg.num_decoder_layers, sources, cfg.num_heads, source_length, cfg.head_dim)
        self.cross_k = np.zeros(cross, dtype=np.float32)
        self.cross_v = np.zeros(cross, dtype=np.float32)
        self.source_lengths = np.zeros(sources, dtype=np.int32)
        self.length = length

    @property
    def slots(self) -> int:
        return self.self_k.shape[1]

    @property
    def sources(self) -> int:
        return self.cross_k.shape[1]

    @staticmethod
    def bytes_for(cfg: Seq2SeqConfig, slots: int, length: int, sources: int, source_length: int) -> int:
        per = cfg.num_decoder_layers * cfg.num_heads * cfg.head_dim * 4 * 2
        return per * (slots * length + sources * source_length)

    def copy_slots(self, dest: np.ndarray, src: np.ndarray, upto: int) -> None:
        """Slots ``dest[i]`` take over the first ``upto`` cached positions of slots ``src[i]`` (beam search:
        a beam continuing another beam). All sources are read before any destination is written."""
        dest = np.ascontiguousarray(dest, dtype=np.int64)
        src = np.ascontiguousarray(src, dtype=np.int64)
        if dest.shape != src.shape or dest.ndim != 1 or not 0 <= upto <= self.length or (dest.size and (
                min(dest.min(), src.min()) < 0 or max(dest.max(), src.max()) >= self.slots
                or np.intersect1d(dest, src).size)):
            raise InputError("copy_slots needs distinct destination and source slots of the state")
        if dest.size:
            for arr in (self.self_k, self.self_v):
                copy_cache_slots(arr, dest, src, int(upto))


class Seq2SeqModel:
    """encode(ids, starts) → encoder hidden states; start(hidden, starts) → DecoderState;
    step(state, tokens, slots, positions) → logits."""

    def __init__(self, cfg: Seq2SeqConfig, tensors: dict[str, np.ndarray]) -> None:
        cfg.validate()
        self.config = cfg
        self.enc_tokens = _Table(tensors, "embed.tokens")
        dec_name = "embed.tokens" if cfg.share_embeddings else "decoder.embed.tokens"
        self.dec_tokens = self.enc_tokens if cfg.share_embeddings else _Table(tensors, dec_name)
        self.embed_scale = np.float32(math.sqrt(cfg.hidden_size)) if cfg.scale_embedding else np.float32(1.0)
        self.pos_tables = {}
        self.embed_norms = {}
        self.rel_bias = {}
        for side in ("encoder", "decoder"):
            if cfg.positions == "learned":
                self.pos_tables[side] = _Table(tensors, side + ".embed.positions").dense()
            elif cfg.positions == "sinusoidal":
                if side == "encoder":
                    table = sinusoidal_table(cfg.max_positions, cfg.hidden_size)
                self.pos_tables[side] = table
            else:
                self.rel_bias[side] = np.ascontiguousarray(tensors[side + ".rel_bias"], dtype=np.float32)
            if cfg.layernorm_embedding:
                self.embed_norms[side] = Norm(tensors, side + ".embed.norm", cfg.norm_eps)
        self.encoder_blocks = [_Block(cfg, tensors, f"encoder.layers.{i}.", cross=False)
                               for i in range(cfg.num_encoder_layers)]
        self.decoder_blocks = [_Block(cfg, tensors, f"decoder.layers.{i}.", cross=True)
                               for i in range(cfg.num_decoder_layers)]
        self.final_norms = {side: Norm(tensors, side + ".final_norm", cfg.norm_eps)
                            for side in ("encoder", "decoder") if side + ".final_norm.weight" in tensors}
        head_weight = "lm_head.weight" if "lm_head.weight" in tensors else dec_name
        self.lm_head = Linear(tensors, "lm_head", weight_name=head_weight)
        self.scale = float(1.0 / math.sqrt(cfg.head_dim)) if cfg.attn_scale else 1.0
        # T5 decoder: bias by distance p − t ≥ 0 (causal buckets), extended on demand.
        self._causal_bias = np.zeros((cfg.num_heads, 0), dtype=np.float32)

    # -- embeddings --
    def _embed(self, side: str, table: _Table, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        x = table.rows(ids, self.embed_scale)
        if side in self.pos_tables:
            x += self.pos_tables[side][positions]
        if side in self.embed_norms:
            x = self.embed_norms[side](x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_positions(self, positions: np.ndarray) -> None:
        if self.config.positions != "relative" and positions.size and positions.max() >= self.config.max_positions:
            raise InputError(f"position {int(positions.max())} is past the model's {self.config.max_positions}")

    # -- encoder --
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
        positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        self._check_positions(positions)
        x = self._embed("encoder", self.enc_tokens, ids, positions)
        t, h, d = ids.size, cfg.num_heads, cfg.head_dim
        if cfg.positions == "relative":
            longest = int(lengths.max())
            offsets = np.arange(-(longest - 1), longest)
            buckets = relative_position_bucket(offsets, True, cfg.relative_buckets, cfg.relative_max_distance)
            bias = np.ascontiguousarray(self.rel_bias["encoder"][buckets].T)    # [heads, 2·longest − 1]
            center = longest - 1
        else:
            bias, center = np.zeros((h, 0), dtype=np.float32), 0
        key_mask = np.ones(t, dtype=np.uint8)
        for block in self.encoder_blocks:
            def attend(y: np.ndarray, block: _Block = block) -> np.ndarray:
                context = np.empty((t, h * d), dtype=np.float32)
                attention_with_bias(block.qkv(y), starts, key_mask, h, self.scale, bias, center, context,
                                    numba.get_num_threads())
                return block.attn_out(context)
            x = block.sublayer(x, block.attn_norm, attend)
            x = block.sublayer(x, block.mlp_norm, block.ffn)
        if "encoder" in self.final_norms:
            x = self.final_norms["encoder"](x)
        check_finite(x, "encoder output")
        return x

    # -- decoder --
    def start(self, encoder_hidden: np.ndarray, starts: np.ndarray, length: int,
              slots: int | None = None) -> DecoderState:
        """Cross-attention keys/values of every layer for each encoded sequence b (rows starts[b]:starts[b+1]
        of ``encoder_hidden``), as source b of a new state whose self-attention cache holds ``length``
        decoder positions in each of ``slots`` slots (default B: one per source)."""
        cfg = self.config
        starts = np.asarray(starts, dtype=np.int64)
        batch = starts.size - 1
        slots = batch if slots is None else int(slots)
        if slots < 1 or not 1 <= length <= cfg.max_positions:
            raise InputError(f"a decoder state needs ≥ 1 slot and 1..{cfg.max_positions} positions")
        lengths = np.diff(starts)
        state = DecoderState(cfg, slots, int(length), batch, int(lengths.max()))
        state.source_lengths[:] = lengths
        h, d = cfg.num_heads, cfg.head_dim
        x = np.ascontiguousarray(encoder_hidden, dtype=np.float32)
        for i, block in enumerate(self.decoder_blocks):
            kv = block.cross_kv(x)
            k = kv[:, :h * d].reshape(-1, h, d)
            v = kv[:, h * d:].reshape(-1, h, d)
            for b in range(batch):
                s0, s1 = starts[b], starts[b + 1]
                state.cross_k[i, b, :, :s1 - s0] = k[s0:s1].transpose(1, 0, 2)
                state.cross_v[i, b, :, :s1 - s0] = v[s0:s1].transpose(1, 0, 2)
        return state

    def _causal(self, upto: int) -> np.ndarray:
        if self._causal_bias.shape[1] < upto:
            cfg = self.config
            dist = np.arange(upto)
            buckets = relative_position_bucket(-dist, False, cfg.relative_buckets, cfg.relative_max_distance)
            self._causal_bias = np.ascontiguousarray(self.rel_bias["decoder"][buckets].T)
        return self._causal_bias

    def step(self, state: DecoderState, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
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
        h, d = cfg.num_heads, cfg.head_dim
        x = self._embed("decoder", self.dec_tokens, tokens, positions)
        bias = self._causal(int(positions.max()) + 1) if cfg.positions == "relative" else None
        cross_positions = state.source_lengths[sources] - 1
        for i, block in enumerate(self.decoder_blocks):
            def self_attend(y: np.ndarray, block: _Block = block, i: int = i) -> np.ndarray:
                q, k, v = block.split_qkv(y)
                write_kv(k, v, slots, positions, state.self_k[i], state.self_v[i])
                context = np.empty((n, h, d), dtype=np.float32)
                if bias is None:
                    cached_attention(q, state.self_k[i], state.self_v[i], slots, positions, self.scale, context)
                else:
                    cached_attention_with_bias(q, state.self_k[i], state.self_v[i], slots, positions, self.scale,
                                               bias, context)
                return block.attn_out(context.reshape(n, h * d))

            def cross_attend(y: np.ndarray, block: _Block = block, i: int = i) -> np.ndarray:
                q = block.cross_q(y).reshape(n, h, d)
                context = np.empty((n, h, d), dtype=np.float32)
                # all source positions 0..len−1 of the slot: cached_attention with positions = len − 1
                cached_attention(q, state.cross_k[i], state.cross_v[i], sources, cross_positions, self.scale, context)
                return block.cross_out(context.reshape(n, h * d))

            x = block.sublayer(x, block.attn_norm, self_attend)
            x = block.sublayer(x, block.cross_norm, cross_attend)
            x = block.sublayer(x, block.mlp_norm, block.ffn)
        if "decoder" in self.final_norms:
            x = self.final_norms["decoder"](x)
        if cfg.lm_head_scale != 1.0:
            x = x * np.float32(cfg.lm_head_scale)
        logits = self.lm_head(x)
        check_finite(logits, "logits")
        return logits
