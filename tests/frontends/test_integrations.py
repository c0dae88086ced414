"""The framework adapters (tinybert.integrations), in-process: LangChain's own standard test suites for the
embeddings and the chat model, a LlamaIndex VectorStoreIndex round trip and a Chroma collection query, each
against the Python API's vectors and replies."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

import tinybert
from tinybert.integrations.langchain import ChatTinyBert, TinyBertEmbeddings

_FILES: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _files(minilm_files, chat_decoder_file):
    """The standard suites build models from class properties, so the files they need are set here first."""
    _FILES.update(embed=str(minilm_files["int8"]), chat=str(chat_decoder_file))


class _Embeddings:
    embeddings_class = TinyBertEmbeddings
    embedding_model_params = property(lambda self: {"model": _FILES["embed"]})


class TestTinyBertEmbeddingsUnit(_Embeddings, EmbeddingsUnitTests):
    pass


class TestTinyBertEmbeddingsIntegration(_Embeddings, EmbeddingsIntegrationTests):
    pass


class _Chat:
    chat_model_class = ChatTinyBert
    chat_model_params = property(lambda self: {"model": _FILES["chat"], "max_new_tokens": 12})
    # what ChatTinyBert has not: tools, structured output, a per-call model (its file is loaded once)
    has_tool_calling = has_structured_output = supports_model_override = False


class TestChatTinyBertUnit(_Chat, ChatModelUnitTests):
    pass


class TestChatTinyBertIntegration(_Chat, ChatModelIntegrationTests):
    pass


def test_langchain_adapters_equal_the_api(sentences):
    embeddings = TinyBertEmbeddings(model=_FILES["embed"])
    enc = tinybert.Encoder(_FILES["embed"])
    np.testing.assert_array_equal(np.array(embeddings.embed_documents(sentences[:5]), np.float32),
                                  enc.encode(sentences[:5]))
    np.testing.assert_array_equal(np.array(embeddings.embed_query(sentences[0]), np.float32),
                                  enc.encode(sentences[0])[0])
    chat = ChatTinyBert(model=_FILES["chat"], max_new_tokens=16)
    gen = tinybert.Generator(_FILES["chat"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": sentences[3]}]
    reply = chat.invoke([("system", "Be brief."), ("human", sentences[3])])
    assert reply.content == gen.chat(messages, max_new_tokens=16)
    assert reply.usage_metadata["input_tokens"] == len(gen._chat_ids(messages, True))
    assert "".join(c.content for c in chat.stream([("system", "Be brief."), ("human", sentences[3])])) == reply.content


def test_llama_index_vector_store_round_trip(sentences):
    from llama_index.core import Document, VectorStoreIndex

    from tinybert.integrations.llama_index import TinyBertEmbedding

    docs = sentences[:40]
    embed = TinyBertEmbedding(model=_FILES["embed"])
    index = VectorStoreIndex.from_documents([Document(text=t, id_=str(i)) for i, t in enumerate(docs)],
                                            embed_model=embed)
    enc = tinybert.Encoder(_FILES["embed"])
    vectors = enc.encode(docs)
    for q in (sentences[100], sentences[200], docs[7]):
        best = int(np.argmax(vectors @ enc.encode(q)[0]))
        hits = index.as_retriever(similarity_top_k=1).retrieve(q)
        assert hits[0].node.get_content() == docs[best]
    np.testing.assert_array_equal(np.array(embed.get_query_embedding(docs[0]), np.float32), vectors[0])


def test_chroma_collection_query(sentences):
    import chromadb

    from tinybert.integrations.chroma import TinyBertEmbeddingFunction

    docs = sentences[:40]
    client = chromadb.EphemeralClient(chromadb.config.Settings(anonymized_telemetry=False))
    ef = TinyBertEmbeddingFunction(_FILES["embed"])
    collection = client.create_collection("tinybert", embedding_function=ef, metadata={"hnsw:space": "cosine"})
    collection.add(ids=[str(i) for i in range(len(docs))], documents=docs)
    enc = tinybert.Encoder(_FILES["embed"])
    vectors = enc.encode(docs)
    queries = [sentences[100], sentences[200], docs[7]]
    got = collection.query(query_texts=queries, n_results=3)
    for q, ids in zip(queries, got["ids"]):
        expected = np.argsort(-(vectors @ enc.encode(q)[0]), kind="stable")[:3]
        assert [int(i) for i in ids] == [int(i) for i in expected]
