"""LangChain adapters (langchain-core), in-process:

    embeddings = TinyBertEmbeddings(model="sentence-transformers/all-MiniLM-L6-v2")
    embeddings.embed_documents(["A sentence."]); embeddings.embed_query("A question?")
    chat = ChatTinyBert(model="Qwen/Qwen2.5-0.5B-Instruct", max_new_tokens=256)
    chat.invoke("Hi!"); for chunk in chat.stream("Tell me a story"): ...

``TinyBertEmbeddings`` is an ``Embeddings`` over ``Encoder.encode``; ``ChatTinyBert`` a ``BaseChatModel`` over
``Generator.chat`` / ``stream_chat`` (the file's chat template; greedy unless ``temperature`` > 0), with usage
metadata and LangChain's stop sequences.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

from ..api.encoder import Encoder
from ..api.generator import Generator

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "chat": None}


class TinyBertEmbeddings(Embeddings):
    """LangChain embeddings from a tinybert ``Encoder`` (a file, Hugging Face folder or Hub id)."""

    def __init__(self, model: str, *, dtype: str = "int8", threads: int | None = None, batch_size: int = 32,
                 normalize_embeddings: bool = False) -> None:
        self.model, self.batch_size, self.normalize_embeddings = model, batch_size, normalize_embeddings
        self.encoder = Encoder(model, threads=threads, dtype=dtype)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, ``Encoder.encode``'s (documents: the model's document prompt, if it has one)."""
        if not texts:
            return []
        return self.encoder.encode_document(list(texts), batch_size=self.batch_size,
                                            normalize_embeddings=self.normalize_embeddings).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (with the model's query prompt, if it has one)."""
        return self.encoder.encode_query([text], normalize_embeddings=self.normalize_embeddings)[0].tolist()


class ChatTinyBert(BaseChatModel):
    """A LangChain chat model on a tinybert ``Generator`` with a chat template."""

    model: str
    """A tinybert file, Hugging Face folder or Hub id of an instruct decoder."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    dtype: str = "int8"
    threads: int | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _generator: Generator = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._generator = Generator(self.model, threads=self.threads, dtype=self.dtype)

    @property
    def _llm_type(self) -> str:
        return "tinybert"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="tinybert", ls_model_name=kwargs.get("model", self.model),
                                 ls_model_type="chat",
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_new_tokens", self.max_new_tokens))
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _options(self, stop: list[str] | None, kwargs: dict) -> dict:
        options = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                   "seed": self.seed, "stop": stop or self.stop}
        options.update({k: v for k, v in kwargs.items() if k in options or k in ("top_k", "repetition_penalty")})
        return options

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        conversation = _conversation(messages)
        result = self._generator.chat(conversation, return_ids=True, **self._options(stop, kwargs))
        prompt = len(self._generator._chat_ids(conversation, True))
        usage = _usage(prompt, len(result["token_ids"]))
        message = AIMessage(content=result["text"], usage_metadata=usage,
                            response_metadata={"finish_reason": result["finish_reason"], "model_name": self.model})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        conversation = _conversation(messages)
        text = []
        for piece in self._generator.stream_chat(conversation, **self._options(stop, kwargs)):
            text.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        # the streamed text's tokens, encoded again (the stream yields text, not ids)
        prompt = len(self._generator._chat_ids(conversation, True))
        completion = len(self._generator.tokenizer.encode("".join(text), add_special_tokens=False).ids)
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=_usage(prompt, completion),
                                                         response_metadata={"model_name": self.model}))


def _usage(prompt: int, completion: int) -> UsageMetadata:
    return UsageMetadata(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)


def _conversation(messages: list[BaseMessage]) -> list[dict]:
    """LangChain messages as the chat template's {"role", "content"} dicts (text content parts joined)."""
    out = []
    for m in messages:
        role = _ROLES.get(m.type, m.type) or getattr(m, "role", "user")
        content = m.content if isinstance(m.content, str) else "".join(
            p if isinstance(p, str) else p.get("text", "") for p in m.content
            if isinstance(p, str) or p.get("type") == "text")
        out.append({"role": role, "content": content})
    return out
