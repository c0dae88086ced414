"""Chroma adapter (chromadb), in-process:

    collection = chromadb.Client().create_collection("docs", embedding_function=TinyBertEmbeddingFunction(
        "sentence-transformers/all-MiniLM-L6-v2"))

Documents are embedded with ``Encoder.encode_document``, queries with ``encode_query`` (the model's prompts,
if any).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from ..api.encoder import Encoder


class TinyBertEmbeddingFunction(EmbeddingFunction[Documents]):
    """A Chroma embedding function on a tinybert ``Encoder`` (a file, Hugging Face folder or Hub id)."""

    def __init__(self, model: str, dtype: str = "int8", threads: int | None = None, batch_size: int = 32) -> None:
        self.model, self.dtype, self.threads, self.batch_size = model, dtype, threads, batch_size
        self.encoder = Encoder(model, threads=threads, dtype=dtype)

    def __call__(self, input: Documents) -> Embeddings:        # noqa: A002 (chromadb's name)
        return list(np.asarray(self.encoder.encode_document(list(input), batch_size=self.batch_size)))

    def embed_query(self, input: Documents) -> Embeddings:     # noqa: A002
        return list(np.asarray(self.encoder.encode_query(list(input))))

    @staticmethod
    def name() -> str:
        return "tinybert"

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model, "dtype": self.dtype, "threads": self.threads, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> TinyBertEmbeddingFunction:
        return TinyBertEmbeddingFunction(**config)
