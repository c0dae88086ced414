"""LlamaIndex adapter (llama-index-core), in-process:

    from llama_index.core import Settings, VectorStoreIndex
    Settings.embed_model = TinyBertEmbedding(model="sentence-transformers/all-MiniLM-L6-v2")

Query and text embeddings are ``Encoder.encode_query`` / ``encode_document``'s (the model's prompts, if any).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings import BaseEmbedding
from pydantic import PrivateAttr

from ..api.encoder import Encoder


class TinyBertEmbedding(BaseEmbedding):
    """A LlamaIndex embedding model on a tinybert ``Encoder`` (a file, Hugging Face folder or Hub id)."""

    model: str
    dtype: str = "int8"
    threads: int | None = None
    _encoder: Encoder = PrivateAttr()

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model=model, model_name=kwargs.pop("model_name", model), **kwargs)
        self._encoder = Encoder(model, threads=self.threads, dtype=self.dtype)

    @classmethod
    def class_name(cls) -> str:
        return "TinyBertEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.encode_query([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encoder.encode_document([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encoder.encode_document(list(texts), batch_size=self.embed_batch_size).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
