"""Decoder-only Transformer (GPT-2, Llama family) with a KV cache. Arrays in, arrays out.

One block serves every family (pre-norm, Radford et al. 2019; Touvron et al. 2023):

    x = x + out(attention(rope(q), rope(k), v  over the cache, causal))    q, k, v = qkv(norm(x))
    x = x + down(act(up(norm(x))))          or, gated (SwiGLU): down(silu(gate(h)) · up(h))

Tokens travel packed: row r is token ``ids[r]`` of the sequence in cache slot ``slots[r]`` at
position ``positions[r]``. A prefill is all prompt tokens of all sequences at once (no padding);
a decode step is one row per unfinished sequence. Each row writes its key/value into the cache
and attends to positions 0..positions[r] of its own slot, so prompts of different lengths never
need padding or masks.
"""

from __future__ import annotations

import numpy as np

from .blocks import Linear
from .config import DecoderConfig
from .errors import check_finite
from .format import SCALE_SUFFIX
from .kernels import embeddings as embed_k
from .kernels.activations import ACTIVATIONS
from .kernels.decoder import cached_attention, rms_norm, silu_mul, write_kv
from .kernels.decoder import copy_slots as copy_cache_slots
from .kernels.norm import layer_norm
from .kernels.rope import apply_rope, rope_tables


class KVCache:
    """Keys and values of every layer: float32 [layers, slots, kv_heads, length, head_dim] each.

    ``length`` bounds the positions a slot can hold; memory is ``nbytes`` and is allocated once.
    """

    def __init__(self, cfg: DecoderConfig, slots: int, length: int) -> None:
        shape = (cfg.num_layers, slots, cfg.num_kv_heads, length, cfg.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.length = length

    @staticmethod
    def bytes_for(cfg: DecoderConfig, slots: int, length: int) -> int:
        return 2 * 4 * cfg.num_layers * slots * cfg.num_kv_heads * length * cfg.head_dim

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def copy_slots(self, dest: np.ndarray, src: np.ndarray, upto: int) -> None:
        """Slots ``dest[i]`` take over the first ``upto`` cached positions of slots ``src[i]`` (beam search:
        a beam continuing another). The caller guarantees distinct, valid slots, no dest among the srcs."""
        for arr in (self.k, self.v):
            copy_cache_slots(arr, dest, src, int(upto))


class Norm:
    """LayerNorm (with bias) or RMSNorm, as the config says."""

    def __init__(self, tensors: dict[str, np.ndarray], name: str, eps: float) -> None:
        self.weight = tensors[name + ".weight"]
        self.bias = tensors.get(name + ".bias")
        self.eps = float(eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        if self.bias is None:
            rms_norm(x, self.weight, self.eps, out)
        else:
            layer_norm(x, self.weight, self.bias, self.eps, out)
        return out


class DecoderBlock:
    def __init__(self, cfg: DecoderConfig, tensors: dict[str, np.ndarray], index: int) -> None:
        p = f"layers.{index}."
        self.cfg = cfg
        self.index = index
        self.attn_norm = Norm(tensors, p + "attn_norm", cfg.norm_eps)
        self.qkv = Linear(tensors, p + "attn.qkv")
        self.attn_out = Linear(tensors, p + "attn.out")
        self.mlp_norm = Norm(tensors, p + "mlp_norm", cfg.norm_eps)
        self.up = Linear(tensors, p + "mlp.up")
        self.down = Linear(tensors, p + "mlp.down")
        self.activation = None if cfg.gated_mlp else ACTIVATIONS[cfg.activation]
        self.scale = float(1.0 / np.sqrt(cfg.head_dim))

    def __call__(self, x: np.ndarray, slots: np.ndarray, positions: np.ndarray, cache: KVCache,
                 rope: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        cfg = self.cfg
        n, hq, hkv, d = x.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = self.qkv(self.attn_norm(x))
        q = np.ascontiguousarray(qkv[:, :hq * d]).reshape(n, hq, d)
        k = np.ascontiguousarray(qkv[:, hq * d:(hq + hkv) * d]).reshape(n, hkv, d)
        v = np.ascontiguousarray(qkv[:, (hq + hkv) * d:]).reshape(n, hkv, d)
        if rope is not None:
            apply_rope(q, positions, rope[0], rope[1])
            apply_rope(k, positions, rope[0], rope[1])
        keys, values = cache.k[self.index], cache.v[self.index]
        write_kv(k, v, slots, positions, keys, values)
        context = np.empty((n, hq, d), dtype=np.float32)
        cached_attention(q, keys, values, slots, positions, self.scale, context)
        x = x + self.attn_out(context.reshape(n, hq * d))
        hidden = self.up(self.mlp_norm(x))
        if self.activation is None:
            gated = np.empty((n, hidden.shape[1] // 2), dtype=np.float32)
            silu_mul(hidden, gated)
            hidden = gated
        else:
            self.activation(hidden)
        return x + self.down(hidden)


class DecoderModel:
    """embeddings → blocks → final norm → LM head (tied to the token table or not)."""

    def __init__(self, cfg: DecoderConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = cfg
        self.tokens = tensors["embed.tokens"]
        self.token_scale = tensors.get("embed.tokens" + SCALE_SUFFIX)
        if cfg.positions == "learned":
            positions = tensors["embed.positions"]
            if positions.dtype == np.int8:
                positions = positions * tensors["embed.positions" + SCALE_SUFFIX][:, None]
            self.position_table = np.ascontiguousarray(positions, dtype=np.float32)
            self.rope = None
        else:
            # One zero row keeps a single embedding kernel signature for both position schemes.
            self.position_table = np.zeros((1, cfg.hidden_size), dtype=np.float32)
            self.rope = rope_tables(cfg.head_dim, cfg.max_positions, cfg.rope)
        self.no_types = np.zeros((1, cfg.hidden_size), dtype=np.float32)
        self.blocks = [DecoderBlock(cfg, tensors, i) for i in range(cfg.num_layers)]
        self.final_norm = Norm(tensors, "final_norm", cfg.norm_eps)
        self.lm_head = Linear(tensors, "lm_head", weight_name="embed.tokens" if cfg.tie_word_embeddings else None)

    def embed(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = np.empty((ids.size, self.config.hidden_size), dtype=np.float32)
        table_positions = positions if self.rope is None else np.zeros_like(positions)
        zeros = np.zeros_like(ids)
        if self.token_scale is not None:
            embed_k.embed_int8(ids, table_positions, zeros, self.tokens, self.token_scale, self.position_table,
                               self.no_types, out)
        else:
            embed_k.embed_fp32(ids, table_positions, zeros, self.tokens, self.position_table, self.no_types, out)
        return out

    def __call__(self, ids: np.ndarray, slots: np.ndarray, positions: np.ndarray, cache: KVCache,
                 logit_rows: np.ndarray | None = None) -> np.ndarray:
        """ids, slots, positions int32 [N] (validated: ids in the vocabulary, positions < cache.length,
        slots < the cache's slots, and every earlier position of each slot already in the cache or in
        this call, in order) → logits float32 [R, vocab] for ``logit_rows`` (all rows when None)."""
        x = self.embed(ids, positions)
        for block in self.blocks:
            x = block(x, slots, positions, cache, self.rope)
        if logit_rows is not None:
            x = np.ascontiguousarray(x[logit_rows])
        logits = self.lm_head(self.final_norm(x))
        check_finite(logits, "logits")
        return logits
