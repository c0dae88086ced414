"""Layers built from kernels, configured by data: Linear, Norm, Embeddings, attention, the one TransformerBlock
and the one KVCache. Canonical tensor names in (tinybert/format.py), float32 arrays out."""

from .attention import CachedRows, PackedRows, Positions, relative_position_bucket
from .block import FFN_ROWS, MLP, TransformerBlock
from .cache import KVCache, cache_dtype
from .embeddings import Embeddings, fairseq_sinusoidal_table, sinusoidal_table
from .linear import Linear, use_row_bands
from .norm import Norm

__all__ = ["FFN_ROWS", "MLP", "CachedRows", "Embeddings", "KVCache", "Linear", "Norm", "PackedRows", "Positions",
           "TransformerBlock", "cache_dtype", "fairseq_sinusoidal_table", "relative_position_bucket",
           "sinusoidal_table", "use_row_bands"]
