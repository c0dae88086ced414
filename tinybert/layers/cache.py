"""The one key/value cache of every decoder, decoder-only or the decoder half of an encoder-decoder.

Self-attention: slots × length positions per layer, one sequence per slot (a prompt, a beam). Cross-attention:
sources × source_length per layer, the encoder output's keys and values of each source sequence, written once
(absent for decoder-only models). Beam search gives one source several slots, which all read its keys.

Keys and values are float32, or float16 for int8 models (``cache_dtype``; kernels/half.py): a decode step
reads the whole cache, and at batch 1 those bytes come on top of the weight bytes that bound its speed.
"""

from __future__ import annotations

import numpy as np

from ..buffers import zeros
from ..errors import InputError
from ..kernels.decoder import copy_slots as copy_cache_slots
from ..kernels.half import to_half_array


def _geometry(cfg) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the decoder stack of a DecoderConfig or Seq2SeqConfig."""
    block = cfg.decoder_block
    return cfg.num_decoder_layers, block.num_kv_heads, block.head_dim


DTYPES = {"float32": np.float32, "float16": np.uint16}    # float16 is held as its bits (kernels/half.py)


def cache_dtype(quantized: bool) -> str:
    """The KV cache dtype of a model: "float16" when its weights are int8, "float32" when they are float32.

    An int8 model's outputs already carry the weights' quantisation error, far above float16's rounding of
    keys and values (relative 2**-11), while its batch-1 decode is bound by the bytes it reads: measured on
    GPT-2 small int8 (Zen 4, 2 threads, positions 128-255), attention over a cache evicted by the weight
    stream took 0.69-0.87 ms per step in float32, 0.46-0.51 ms in float16. A float32 model keeps a
    float32 cache, so that it matches transformers' float32 results."""
    return "float16" if quantized else "float32"


# Positions a slot holds at first; the self-attention part grows (doubling) as positions are written, so a
# large ``length`` (max_new_tokens = 10**9, a context of millions) costs nothing until it is used.
INITIAL_LENGTH = 128


class KVCache:
    """self_k, self_v [layers, slots, kv_heads, held, head_dim]; cross_k, cross_v
    [layers, sources, kv_heads, source_length, head_dim]; source_lengths int32 [sources]. The four arrays
    are float32, or uint16 holding float16 bits (``dtype`` "float16").

    ``length`` bounds the positions a slot may hold; ``held`` (≤ length) is what is allocated, and
    ``reserve`` grows it before positions past it are written. The cross-attention part is allocated once.
    """

    def __init__(self, cfg, slots: int, length: int, sources: int = 0, source_length: int = 0,
                 dtype: str = "float32") -> None:
        layers, heads, d = _geometry(cfg)
        self.dtype = dtype
        store = DTYPES[dtype]
        # Each array in a map of its own (buffers.zeros): a cache lives for one call, and freed it must not stay
        # resident as heap.
        self.self_k = zeros((layers, slots, heads, min(length, INITIAL_LENGTH), d), store)
        self.self_v = zeros(self.self_k.shape, store)
        self.cross_k = zeros((layers, sources, heads, source_length, d), store)
        self.cross_v = zeros(self.cross_k.shape, store)
        self.source_lengths = np.zeros(sources, dtype=np.int32)
        self.length = length

    @property
    def held(self) -> int:
        """Positions per slot allocated now."""
        return self.self_k.shape[3]

    def reserve(self, positions: int) -> None:
        """Make room for positions 0 .. ``positions`` − 1 of every slot (≤ ``length``, validated by the
        caller): at least double what is held, so n positions cost O(n) copies in all."""
        held = self.held
        if positions <= held:
            return
        grown = min(self.length, max(positions, 2 * held))
        for name in ("self_k", "self_v"):
            old = getattr(self, name)
            new = zeros(old.shape[:3] + (grown,) + old.shape[4:], old.dtype)
            new[:, :, :, :held] = old
            setattr(self, name, new)
            del old

    @staticmethod
    def bytes_for(cfg, slots: int, length: int, sources: int = 0, source_length: int = 0,
                  dtype: str = "float32") -> int:
        layers, heads, d = _geometry(cfg)
        itemsize = np.dtype(DTYPES[dtype]).itemsize
        return 2 * itemsize * layers * heads * d * (slots * length + sources * source_length)

    @property
    def nbytes(self) -> int:
        return self.self_k.nbytes + self.self_v.nbytes + self.cross_k.nbytes + self.cross_v.nbytes

    @property
    def slots(self) -> int:
        return self.self_k.shape[1]

    @property
    def sources(self) -> int:
        return self.cross_k.shape[1]

    def write_source(self, layer: int, kv: np.ndarray, starts: np.ndarray, sources: np.ndarray) -> None:
        """Cross-attention keys | values [T, 2 Hkv d] of the encoder rows starts[b]:starts[b+1] as source
        sources[b] (validated by the caller)."""
        _, _, heads, _, d = self.cross_k.shape
        k = kv[:, :heads * d].reshape(-1, heads, d)
        v = kv[:, heads * d:].reshape(-1, heads, d)
        if self.dtype == "float16":
            k, v = to_half_array(k), to_half_array(v)
        for b, source in enumerate(sources):
            s0, s1 = starts[b], starts[b + 1]
            self.cross_k[layer, source, :, :s1 - s0] = k[s0:s1].transpose(1, 0, 2)
            self.cross_v[layer, source, :, :s1 - s0] = v[s0:s1].transpose(1, 0, 2)

    def copy_slots(self, dest: np.ndarray, src: np.ndarray, upto: int) -> None:
        """Slots ``dest[i]`` take over the first ``upto`` cached positions of slots ``src[i]`` (beam search:
        a beam continuing another beam). All sources are read before any destination is written."""
        dest = np.ascontiguousarray(dest, dtype=np.int64)
        src = np.ascontiguousarray(src, dtype=np.int64)
        if dest.shape != src.shape or dest.ndim != 1 or not 0 <= upto <= self.held or (dest.size and (
                min(dest.min(), src.min()) < 0 or max(dest.max(), src.max()) >= self.slots
                or np.intersect1d(dest, src).size)):
            raise InputError("copy_slots needs distinct destination and source slots of the state")
        if dest.size:
            for arr in (self.self_k, self.self_v):
                copy_cache_slots(arr, dest, src, int(upto))
