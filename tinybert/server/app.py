"""The HTTP routes: OpenAI's (/v1/models, /v1/embeddings, /v1/completions, /v1/chat/completions), TEI's (/embed,
/embed_sparse, /rerank, /predict, /tokenize), /health and /metrics, on Starlette (through FastAPI).

Errors come in the protocol's own format: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on /v1
routes, TEI's ``{"error", "error_type"}`` elsewhere; never a traceback. Limits: request bodies and texts
(413), waiting work (503 with Retry-After), a time limit per request (504); a client that goes away cancels
its generation at the next decoding step.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..api.live import QueueFull
from ..errors import InputError, TinyBertError
from ..generation import GenerationParams
from ..models.heads import l2_normalize
from .metrics import Metrics
from .models import ServedModel

MAX_CHOICES = 16   # prompts × n in one generation request


@dataclass
class Limits:
    max_body_bytes: int = 8 << 20        # a request body
    max_text_chars: int = 100_000        # one text or prompt
    max_texts: int = 2048                # texts in one request
    max_tokens: int = 4096               # max_tokens a request may ask for
    timeout_s: float = 600.0             # one request, end to end


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}


_TEI_KINDS = {400: "Validation", 413: "Validation", 422: "Validation", 401: "Unauthorized", 404: "NotFound",
              503: "Overloaded", 504: "Timeout", 500: "Backend"}


def _error_response(request: Request | str, exc: ApiError) -> JSONResponse:
    path = request if isinstance(request, str) else request.url.path
    if path.startswith("/v1/"):
        body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
    else:
        body = {"error": exc.message, "error_type": _TEI_KINDS.get(exc.status, "Backend")}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def create_app(models: list[ServedModel], api_key: str | None = None, limits: Limits | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    """The application serving ``models`` (opened by models.open_served)."""
    limits = limits or Limits()
    metrics = metrics or Metrics()
    by_name = {m.name: m for m in models}
    for m in models:        # batch sizes: texts an embedding call took, sequences a decoding step fed
        if m.batcher is not None:
            m.batcher.on_batch = lambda n: metrics.batch("embed", n)
        if m.live is not None:
            m.live.on_step = lambda n: metrics.batch("generate", n)
    app = FastAPI(title="tinybert", docs_url=None, redoc_url=None, openapi_url=None)

    app.add_middleware(_Guard, api_key=api_key, limits=limits, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(request, exc)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception):
        return _error_response(request, ApiError(500, f"internal error: {type(exc).__name__}", "server_error"))

    async def body(request: Request) -> dict:
        raw = b""
        async for chunk in request.stream():       # counted as it comes: a body without Content-Length too
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise ApiError(413, f"the request body is over {limits.max_body_bytes} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def pick(kind: str, name: object = None) -> ServedModel:
        if name is not None:
            if not isinstance(name, str) or name not in by_name:
                raise ApiError(404, f"model {name!r} is not served here (served: {', '.join(by_name)})",
                               code="model_not_found", param="model")
            if by_name[name].kind != kind:
                raise ApiError(400, f"model {name!r} cannot {kind}", param="model")
            return by_name[name]
        for m in models:
            if m.kind == kind:
                return m
        raise ApiError(404, f"no served model can {kind}", code="model_not_found")

    def texts_of(value: object, what: str) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
            raise ApiError(400, f"{what} must be a string or a non-empty list of strings", param=what)
        if len(items) > limits.max_texts:
            raise ApiError(413, f"{len(items)} texts is over the limit of {limits.max_texts} a request")
        if any(len(t) > limits.max_text_chars for t in items):
            raise ApiError(413, f"a text is over the limit of {limits.max_text_chars} characters")
        return items

    async def on_model(m: ServedModel, fn, *args):
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(m.executor, fn, *args),
                                          limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "the request took longer than the server's time limit", "timeout") from None
        except TinyBertError as exc:
            raise ApiError(400, str(exc)) from None

    async def embed(m: ServedModel, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The texts' vectors and token counts, from the model's batcher."""
        try:
            return await asyncio.wait_for(m.batcher.embed(texts), limits.timeout_s)
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy: {exc}", "server_busy", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, "the request took longer than the server's time limit", "timeout") from None
        except TinyBertError as exc:
            raise ApiError(400, str(exc)) from None

    # ------------------------------------------------------------------ general

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text():
        for m in models:
            metrics.queue(m.name, m.live.waiting if m.live else m.batcher.waiting if m.batcher else 0)
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": m.name, "object": "model", "created": 0, "owned_by": "tinybert"}
                                           for m in models]}

    # ------------------------------------------------------------------ embeddings

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        data = await body(request)
        m = pick("embed", data.get("model"))
        texts = texts_of(data.get("input"), "input")
        fmt = data.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        vectors, counts = await embed(m, texts)
        vectors = _shortened(vectors, data.get("dimensions"), m.model.dimension)
        rows = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v}
                for i, v in enumerate(vectors)]
        tokens = int(counts.sum())
        return _vectors_response({"object": "list", "data": rows, "model": m.name,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/embed")
    async def tei_embed(request: Request):
        data = await body(request)
        m = pick("embed")
        texts = texts_of(data.get("inputs"), "inputs")
        vectors, _ = await embed(m, texts)
        if data.get("dimensions") is not None:
            vectors = _shortened(vectors, data["dimensions"], m.model.dimension)
        if data.get("normalize", True):
            vectors = l2_normalize(vectors)
        return _vectors_response(vectors)

    @app.post("/embed_sparse")
    async def tei_embed_sparse():
        raise ApiError(404, "no served model gives sparse embeddings")

    # ------------------------------------------------------------------ classifiers

    @app.post("/rerank")
    async def tei_rerank(request: Request):
        data = await body(request)
        m = pick("classify")
        query = data.get("query")
        if not isinstance(query, str) or len(query) > limits.max_text_chars:
            raise ApiError(400, "query must be a string (within the text limit)")
        texts = texts_of(data.get("texts"), "texts")
        raw = bool(data.get("raw_scores", False))
        if raw:
            logits = await on_model(m, lambda: m.model.predict_logits([query] * len(texts), texts))
            ranked = [{"index": i, "score": float(logits[i, -1])} for i in range(len(texts))]
            ranked.sort(key=lambda r: -r["score"])
        else:
            ranked = [{"index": r["index"], "score": float(r["score"])}
                      for r in await on_model(m, m.model.rerank, query, texts)]
        if data.get("return_text", False):
            for r in ranked:
                r["text"] = texts[r["index"]]
        return ranked

    @app.post("/predict")
    async def tei_predict(request: Request):
        data = await body(request)
        m = pick("classify")
        inputs = data.get("inputs")
        # TEI reads a text, or a list of exactly two texts, as one input (the second: a sentence pair).
        single = isinstance(inputs, str) or (isinstance(inputs, list) and len(inputs) == 2
                                              and all(isinstance(t, str) for t in inputs))
        items = [inputs] if single else inputs
        if not isinstance(items, list) or not items:
            raise ApiError(400, "inputs must be a text, a [text, text] pair or a list of those")
        firsts, seconds = [], []
        for item in items:
            if isinstance(item, str):
                firsts.append(item)
                seconds.append(None)
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
                firsts.append(item[0])
                seconds.append(item[1])
            else:
                raise ApiError(400, "inputs must be a text, a [text, text] pair or a list of those")
        texts_of(firsts, "inputs")
        if any(s is not None for s in seconds):
            if any(s is None for s in seconds):
                raise ApiError(400, "inputs must be all texts or all pairs")
            texts_of(seconds, "inputs")
        pair = seconds if seconds[0] is not None else None
        results = await on_model(m, lambda: m.model.classify(firsts, pair, top_k=None))
        out = [[{"label": r["label"], "score": float(r["score"])} for r in row] for row in results]
        return out[0] if single else out

    @app.post("/tokenize")
    async def tei_tokenize(request: Request):
        data = await body(request)
        m = by_name[data["model"]] if isinstance(data.get("model"), str) and data["model"] in by_name else models[0]
        texts = texts_of(data.get("inputs"), "inputs")
        special = bool(data.get("add_special_tokens", True))
        out = []
        for text, enc in zip(texts, m.model.tokenizer.encode_batch(texts, add_special_tokens=special)):
            out.append([{"id": int(i), "text": text[a:b] if (a, b) != (0, 0) or not s else tok,
                         "special": bool(s), "start": int(a) if not s else None, "stop": int(b) if not s else None}
                        for i, tok, (a, b), s in zip(enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask)])
        return out

    # ------------------------------------------------------------------ generation

    def generation_request(data: dict) -> tuple[GenerationParams, list[str], int, bool]:
        n = data.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
            raise ApiError(400, f"n must be an integer in 1..{MAX_CHOICES}", param="n")
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        max_tokens = 16 if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= limits.max_tokens:
            raise ApiError(400, f"max_tokens must be an integer in 1..{limits.max_tokens}", param="max_tokens")
        stop = data.get("stop")
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise ApiError(400, "stop must be a string or a list of up to 4 non-empty strings", param="stop")
        temperature = data.get("temperature", 1.0)
        top_p = data.get("top_p")
        seed = data.get("seed")
        try:
            params = GenerationParams(max_new_tokens=max_tokens, temperature=float(temperature),
                                      top_p=None if top_p is None or top_p == 1 else float(top_p),
                                      seed=seed).validate()
        except (TinyBertError, TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
        return params, stops, n, bool(data.get("stream", False))

    def logprobs_request(data: dict, chat: bool) -> int | None:
        """How many alternatives each token's log-probabilities list (None: no logprobs): chat's ``logprobs``
        (true/false) and ``top_logprobs`` (0..20); a completion's ``logprobs`` (0..5)."""
        wanted, top = data.get("logprobs"), data.get("top_logprobs")
        if chat:
            if wanted not in (None, True, False):
                raise ApiError(400, "logprobs must be true or false", param="logprobs")
            if top is not None and (not wanted or not isinstance(top, int) or isinstance(top, bool)
                                    or not 0 <= top <= 20):
                raise ApiError(400, "top_logprobs must be an integer in 0..20, with logprobs true",
                               param="top_logprobs")
            return (top or 0) if wanted else None
        if wanted is None:
            return None
        if not isinstance(wanted, int) or isinstance(wanted, bool) or not 0 <= wanted <= 5:
            raise ApiError(400, "logprobs must be an integer in 0..5", param="logprobs")
        if data.get("echo"):
            raise ApiError(400, "logprobs of the prompt (echo with logprobs) are not supported", param="echo")
        return wanted

    def piece(m: ServedModel, token: int) -> tuple[str, list[int]]:
        text = m.model.tokenizer.decode([token], skip_special_tokens=False)
        return text, list(text.encode("utf-8"))

    def logprobs_of(m: ServedModel, entries: list[dict], chat: bool, start: int = 0) -> dict:
        """A choice's ``logprobs`` in OpenAI's shape (chat: per-token ``content``; completions: parallel lists,
        text offsets counted from ``start``) from SampleSearch's entries."""
        if chat:
            content = []
            for e in entries:
                text, raw = piece(m, e["id"])
                content.append({"token": text, "logprob": e["logprob"], "bytes": raw,
                                "top_logprobs": [{"token": t, "logprob": lp, "bytes": b}
                                                 for (t, b), lp in ((piece(m, i), lp) for i, lp in e["top"])]})
            return {"content": content, "refusal": None}
        tokens, offsets, at = [], [], start
        for e in entries:
            text = piece(m, e["id"])[0]
            tokens.append(text)
            offsets.append(at)
            at += len(text)
        return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{piece(m, i)[0]: lp for i, lp in e["top"]} for e in entries],
                "text_offset": offsets}

    async def run_generation(m: ServedModel, prompts: list[np.ndarray], params: GenerationParams,
                             stops: list[str], n: int, logprobs: int | None = None):
        """Submit n choices of each prompt (choice p·n + i: prompt p's i-th); returns the queue of (choice, event)
        and the jobs."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        jobs = []
        try:
            for p, prompt in enumerate(prompts):
                for i in range(p * n, (p + 1) * n):
                    jobs.append(m.live.submit(prompt, params, stops,
                                              lambda ev, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, ev)),
                                              index=i, logprobs=logprobs))
        except QueueFull as exc:
            for job in jobs:
                job.cancel()
            raise ApiError(503, f"the server is busy: {exc}", "server_busy", headers={"Retry-After": "1"}) from None
        except TinyBertError as exc:
            for job in jobs:
                job.cancel()
            raise ApiError(400, str(exc)) from None
        return queue, jobs

    async def events(request: Request, queue: asyncio.Queue, jobs: list, deadline: float):
        """(choice, event) until every choice is done; cancels the jobs if the client leaves or time runs out."""
        finished = 0
        try:
            while finished < len(jobs):
                try:
                    item = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    if time.monotonic() > deadline:
                        raise ApiError(504, "the request took longer than the server's time limit",
                                       "timeout") from None
                    continue
                if item[1][0] in ("done", "error"):
                    finished += 1
                yield item
        finally:
            for job in jobs:
                job.cancel()

    def prompt_of_chat(m: ServedModel, messages: object) -> np.ndarray:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", param="messages")
        try:
            rendered = m.model.render_chat([_message(x) for x in messages], add_generation_prompt=True)
            if len(rendered) > limits.max_text_chars:
                raise ApiError(413, f"the conversation is over the limit of {limits.max_text_chars} characters")
            return m.model._encode(rendered, add_special_tokens=False)
        except InputError as exc:
            raise ApiError(400, str(exc), param="messages") from None

    def prompts_of_completion(m: ServedModel, prompt: object, n: int) -> tuple[list[np.ndarray], list[str]]:
        """/v1/completions' prompt as OpenAI takes it: a string, a list of strings, a list of token ids or a list
        of such lists; each prompt's ids and its text (what ``echo`` returns: token-id prompts decoded)."""
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                       and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a list of "
                                "lists of token ids", param="prompt")
        if len(prompt) * n > MAX_CHOICES:
            raise ApiError(400, f"{len(prompt)} prompts × n = {n} is over the limit of {MAX_CHOICES} choices a "
                                "request", param="prompt")
        ids, texts = [], []
        try:
            for one in prompt:
                if isinstance(one, str):
                    texts_of(one, "prompt")
                    ids.append(m.model._encode(one))
                    texts.append(one)
                elif isinstance(one, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in one):
                    if len(one) > limits.max_text_chars:
                        raise ApiError(413, f"a prompt is over the limit of {limits.max_text_chars} tokens")
                    ids.append(m.model._check_ids(np.asarray(one, dtype=np.int64)))
                    texts.append(m.model._decode(one))
                else:
                    raise ApiError(400, "each prompt must be a string or a list of token ids", param="prompt")
        except InputError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        return ids, texts

    async def generation_route(request: Request, chat: bool):
        data = await body(request)
        m = pick("generate", data.get("model"))
        params, stops, n, stream = generation_request(data)
        if chat:
            prompts, echoes = [prompt_of_chat(m, data.get("messages"))], [""]
        else:
            prompts, echoes = prompts_of_completion(m, data.get("prompt"), n)
            if not data.get("echo", False):
                echoes = [""] * len(prompts)
        top = logprobs_request(data, chat)
        queue, jobs = await run_generation(m, prompts, params, stops, n, top)
        choices_total = len(prompts) * n

        def choice_logprobs(i: int, result: dict) -> dict | None:
            return None if top is None else logprobs_of(m, result.get("logprobs", []), chat, len(echoes[i // n]))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        deadline = time.monotonic() + limits.timeout_s
        usage = {"prompt_tokens": sum(int(p.size) for p in prompts) * n, "completion_tokens": 0}

        def finish_reason(result: dict) -> str:
            return "length" if result["finish_reason"] == "length" else "stop"

        if not stream:
            texts, reasons, logprobs = [""] * choices_total, [None] * choices_total, [None] * choices_total
            async for i, (what, value) in events(request, queue, jobs, deadline):
                if what == "error":
                    raise ApiError(500, value, "server_error")
                if what == "done":
                    texts[i], reasons[i] = echoes[i // n] + value["text"], finish_reason(value)
                    logprobs[i] = choice_logprobs(i, value)
                    usage["completion_tokens"] += len(value["token_ids"]) + (value["finish_reason"] == "eos")
            if any(r is None for r in reasons):
                return Response(status_code=499)     # the client left
            choices = [({"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": logprobs[i],
                         "finish_reason": reasons[i]} if chat else
                        {"index": i, "text": texts[i], "logprobs": logprobs[i], "finish_reason": reasons[i]})
                       for i in range(choices_total)]
            metrics.tokens("completion", usage["completion_tokens"])
            return {"id": rid, "object": obj, "created": created, "model": m.name, "choices": choices,
                    "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}

        include_usage = bool((data.get("stream_options") or {}).get("include_usage", False))
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i: int, text: str | None, reason: str | None, first: bool = False,
                  logprobs: dict | None = None) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            else:
                choice = {"index": i, "text": text or "", "logprobs": logprobs, "finish_reason": reason}
            payload = {"id": rid, "object": chunk_obj, "created": created, "model": m.name, "choices": [choice]}
            if include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def sse():
            if chat:
                for i in range(n):
                    yield chunk(i, None, None, first=True)
            for i in range(choices_total):
                if echoes[i // n]:
                    yield chunk(i, echoes[i // n], None)
            try:
                async for i, (what, value) in events(request, queue, jobs, deadline):
                    if what == "text":
                        yield chunk(i, value, None)
                    elif what == "done":
                        usage["completion_tokens"] += len(value["token_ids"]) + (value["finish_reason"] == "eos")
                        # a streamed choice's token log-probabilities come whole, with its last chunk
                        yield chunk(i, None, finish_reason(value), logprobs=choice_logprobs(i, value))
                    else:
                        err = {"error": {"message": value, "type": "server_error", "param": None, "code": None}}
                        yield f"data: {json.dumps(err)}\n\n"
                        return
            except ApiError as exc:
                err = {"error": {"message": exc.message, "type": exc.kind, "param": None, "code": None}}
                yield f"data: {json.dumps(err)}\n\n"
                return
            metrics.tokens("completion", usage["completion_tokens"])
            if include_usage:
                total = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
                payload = {"id": rid, "object": chunk_obj, "created": created, "model": m.name, "choices": [],
                           "usage": total}
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def openai_completions(request: Request):
        return await generation_route(request, chat=False)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request):
        return await generation_route(request, chat=True)

    return app


class _Guard:
    """The API key, the body-size limit from Content-Length (bodies without one are counted as they are read)
    and the request metrics, as a plain ASGI middleware (Starlette's BaseHTTPMiddleware cost ~1 ms a request)."""

    def __init__(self, app, api_key: str | None, limits: Limits, metrics: Metrics) -> None:
        self.app, self.key, self.limits, self.metrics = app, api_key, limits, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, started, status = scope["path"], time.perf_counter(), [500]
        headers = dict(scope["headers"])
        error = None
        if self.key is not None and path != "/health":
            given = headers.get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key.encode()):
                error = ApiError(401, "a valid API key is needed (Authorization: Bearer KEY)", "authentication_error",
                                 code="invalid_api_key")
        length = headers.get(b"content-length")
        if error is None and length is not None and (not length.isdigit() or int(length) > self.limits.max_body_bytes):
            error = ApiError(413, f"the request body is over {self.limits.max_body_bytes} bytes")

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if error is not None:
            await _error_response(path, error)(scope, receive, sending)
        else:
            await self.app(scope, receive, sending)
        self.metrics.request(path, status[0], time.perf_counter() - started)


def _vectors_response(payload: object) -> Response:
    """JSON with float32 arrays in it, written by orjson: each value in the shortest text that reads back as the
    same float32. ``tolist()`` and the json module took ~0.2 ms for one 384-wide vector, 17 digits a value."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _message(x: object) -> dict:
    """An OpenAI message as the chat template takes it: content parts joined to one string."""
    if not isinstance(x, dict) or not isinstance(x.get("role"), str):
        raise ApiError(400, "each message must be an object with a role", param="messages")
    content = x.get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            raise ApiError(400, "message content parts must be text", param="messages")
        content = "".join(parts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ApiError(400, "message content must be a string", param="messages")
    return {"role": x["role"], "content": content}


def _shortened(vectors: np.ndarray, dimensions: object, full: int) -> np.ndarray:
    """The first ``dimensions`` values of each vector, L2-normalised again (OpenAI's ``dimensions``)."""
    if dimensions is None:
        return vectors
    if not isinstance(dimensions, int) or not 1 <= dimensions <= full:
        raise ApiError(400, f"dimensions must be an integer in 1..{full}", param="dimensions")
    return l2_normalize(np.ascontiguousarray(vectors[:, :dimensions]))
