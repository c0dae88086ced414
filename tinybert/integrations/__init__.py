"""tinybert inside other frameworks, in-process (no server): each adapter imports its framework only when used.

    from tinybert.integrations.langchain import ChatTinyBert, TinyBertEmbeddings     # langchain-core
    from tinybert.integrations.llama_index import TinyBertEmbedding                  # llama-index-core
    from tinybert.integrations.chroma import TinyBertEmbeddingFunction               # chromadb

Every adapter takes what the tinybert classes take: a tinybert file, a Hugging Face folder or a Hub id, and
``dtype`` / ``threads``; the vectors and replies are the Python API's.
"""

__all__ = ["langchain", "llama_index", "chroma"]
