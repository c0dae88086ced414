"""`tinybert serve`: a real server on 127.0.0.1, spoken to by the real clients (the ``openai`` package, ``httpx``);
every answer equals the Python API's on the same model (greedy and seeded sampling, streamed or not, alone or
among concurrent requests), errors come in each protocol's format, and the limits hold."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
import uvicorn

import tinybert
from tinybert.models.heads import l2_normalize
from tinybert.server import Limits, create_app, open_models, wait_until_healthy

pytestmark = pytest.mark.usefixtures("quiet_torch")

CHATS = [[{"role": "user", "content": "What is the option for?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compare the files"}],
         [{"role": "user", "content": "If no matching line exists"}, {"role": "assistant", "content": "Then what?"},
          {"role": "user", "content": "Especially a keybox"}]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server on 127.0.0.1 in a thread of this process, for a with-block."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def files(chat_decoder_file, minilm_files, head_model):
    """The three kinds a server holds: an embedder (MiniLM), a chat decoder (a random Llama with SmolLM2's
    template) and a cross-encoder (a random BERT classifier with one label)."""
    ranker = head_model("bert", "sequence-classification", labels=["relevance"])[1]["int8"]
    return {"embed": minilm_files["int8"], "chat": chat_decoder_file, "rank": ranker}


@pytest.fixture(scope="module")
def server(files):
    models = open_models([str(files["embed"]), str(files["chat"]), str(files["rank"])], parallel=4, context=256)
    with Running(create_app(models)) as running:
        running.models = {m.kind: m for m in models}
        yield running
    for m in models:
        if m.live:
            m.live.close(5)


@pytest.fixture(scope="module")
def api(files):
    """The Python API on the same files: what every answer must equal."""
    return {"embed": tinybert.Encoder(files["embed"]), "chat": tinybert.Generator(files["chat"]),
            "rank": tinybert.Classifier(files["rank"])}


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------------- OpenAI routes, the openai client

def test_models_list(server, files):
    names = sorted(m.id for m in _client(server).models.list().data)
    assert names == sorted(Path(f).stem for f in files.values())


def test_embeddings_equal_encode(server, api, sentences):
    client, name = _client(server), server.models["embed"].name
    texts = sentences[:7]
    expected = api["embed"].encode(texts)
    # the client asks for base64 unless told otherwise; float too
    got = np.array([d.embedding for d in client.embeddings.create(model=name, input=texts).data], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    floats = client.embeddings.create(model=name, input=texts, encoding_format="float")
    np.testing.assert_array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32), expected)
    assert floats.usage.prompt_tokens == sum(len(api["embed"].tokenizer.encode(t).ids) for t in texts)
    short = client.embeddings.create(model=name, input=texts[0], dimensions=64, encoding_format="float")
    np.testing.assert_allclose(short.data[0].embedding,
                               api["embed"].encode([texts[0]], truncate_dim=64, normalize_embeddings=True)[0],
                               rtol=0, atol=1e-7)


def test_concurrent_embeddings_are_merged_and_unchanged(server, api, sentences):
    """64 clients at once: every vector equals encode's, and the model saw fewer, larger batches."""
    name, texts = server.models["embed"].name, sentences[:64]
    expected = api["embed"].encode(texts)

    def one(i):
        with httpx.Client(timeout=60) as c:
            r = c.post(server.url + "/v1/embeddings", json={"model": name, "input": texts[i],
                                                            "encoding_format": "base64"})
            r.raise_for_status()
            return np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")

    def calls() -> float:
        lines = httpx.get(server.url + "/metrics").text.splitlines()
        counts = [line for line in lines if line.startswith('tinybert_batch_size_count{kind="embed"}')]
        return sum(float(line.split()[-1]) for line in counts)

    before = calls()
    with ThreadPoolExecutor(64) as pool:
        got = list(pool.map(one, range(64)))
    np.testing.assert_array_equal(np.stack(got), expected)
    assert calls() - before < 64        # merged: fewer model calls than requests


def test_completions_equal_generate(server, api):
    client, name, gen = _client(server), server.models["generate"].name, api["chat"]
    prompt = "The option can also be used to compare files"
    r = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == gen.generate(prompt, max_new_tokens=12)
    assert r.usage.prompt_tokens == len(gen.tokenizer.encode(prompt).ids)
    sampled = client.completions.create(model=name, prompt=prompt, max_tokens=10, temperature=0.8, top_p=0.9,
                                        seed=7, n=2)
    assert [c.text for c in sampled.choices] == gen.generate([prompt, prompt], max_new_tokens=10, temperature=0.8,
                                                            top_p=0.9, seed=7)
    stopped = client.completions.create(model=name, prompt=prompt, max_tokens=20, temperature=0, stop=[" the"])
    assert stopped.choices[0].text == gen.generate(prompt, max_new_tokens=20, stop=[" the"])


def test_completions_of_token_ids_prompt_lists_and_echo(server, api):
    """/v1/completions takes what OpenAI's does: token-id prompts, lists of prompts (choice p·n + i is prompt p's
    i-th), and ``echo``; each answer equals the Python API's on the same prompts."""
    client, name, gen = _client(server), server.models["generate"].name, api["chat"]
    prompts = ["The option can also be used to compare files", "Each line is read"]
    ids = [gen.tokenizer.encode(p).ids for p in prompts]
    by_ids = client.completions.create(model=name, prompt=ids, max_tokens=8, temperature=0)
    assert [c.text for c in sorted(by_ids.choices, key=lambda c: c.index)] == \
        [h["text"] for h in gen.generate_ids(ids, max_new_tokens=8)]
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))
    one = client.completions.create(model=name, prompt=ids[1], max_tokens=8, temperature=0)
    assert one.choices[0].text == gen.generate(prompts[1], max_new_tokens=8)
    sampled = client.completions.create(model=name, prompt=prompts, max_tokens=8, temperature=0.8, seed=3, n=2)
    assert [c.text for c in sorted(sampled.choices, key=lambda c: c.index)] == gen.generate(
        [prompts[0], prompts[0], prompts[1], prompts[1]], max_new_tokens=8, temperature=0.8, seed=3)
    echoed = client.completions.create(model=name, prompt=prompts[0], max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == prompts[0] + gen.generate(prompts[0], max_new_tokens=6)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=name, prompt=prompts[0], max_tokens=6, temperature=0, echo=True, stream=True) if c.choices)
    assert streamed == echoed.choices[0].text
    for bad in ([[10 ** 9]], [[]], [1.5], [["a"]], [prompts[0]] * 9):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=name, prompt=bad, max_tokens=2, n=2)


def test_logprobs_equal_the_api_logits(server, api):
    """``logprobs``: each generated token's log-probability and its ``top_logprobs`` alternatives, in OpenAI's
    shapes for completions (parallel lists, text offsets) and chat (per-token content, streamed whole with the
    last chunk), equal torch.log_softmax of the Python API's logits for the same tokens
    (``Generator.generate_ids(output_logits=True)``)."""
    client, name, gen = _client(server), server.models["generate"].name, api["chat"]
    prompt = "The option can also be used to compare files"
    r = client.completions.create(model=name, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    (ref,) = gen.generate_ids([gen.tokenizer.encode(prompt).ids], max_new_tokens=8, output_logits=True)
    lp = torch.log_softmax(torch.tensor(ref["logits"], dtype=torch.float64), -1).numpy()
    steps = len(ref["token_ids"])
    got = r.choices[0].logprobs
    assert len(got.token_logprobs) == steps and r.choices[0].text == ref["text"]
    np.testing.assert_allclose(got.token_logprobs, lp[np.arange(steps), ref["token_ids"]], atol=1e-9)
    for row, tops in zip(lp, got.top_logprobs):
        best = np.argsort(-row, kind="stable")[:3]
        assert list(tops) == [gen.tokenizer.decode([int(i)], skip_special_tokens=False) for i in best]
        np.testing.assert_allclose(list(tops.values()), row[best], atol=1e-9)
    assert len(got.tokens) == steps and got.text_offset[0] == 0
    assert got.text_offset == list(np.cumsum([0] + [len(t) for t in got.tokens[:-1]]))

    messages = [{"role": "user", "content": "What does diff compare?"}]
    chat = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    ids = gen.tokenizer.encode(gen.render_chat(messages, add_generation_prompt=True), add_special_tokens=False).ids
    (ref,) = gen.generate_ids([ids], max_new_tokens=6, output_logits=True)
    lp = torch.log_softmax(torch.tensor(ref["logits"], dtype=torch.float64), -1).numpy()
    assert [c.logprob for c in content] == pytest.approx(
        list(lp[np.arange(len(ref["token_ids"])), ref["token_ids"]]), abs=1e-9)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)
    streamed = [c for c in client.chat.completions.create(model=name, messages=messages, max_tokens=6,
                                                          temperature=0, logprobs=True, stream=True) if c.choices]
    entries = [e for c in streamed if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.logprob for e in entries] == [c.logprob for c in content]
    for bad in ({"logprobs": 6}, {"logprobs": True}, {"logprobs": 2, "echo": True}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=name, prompt=prompt, max_tokens=2, **bad)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=name, messages=messages, max_tokens=2, top_logprobs=3)


def test_chat_equals_generator_chat(server, api):
    client, name, gen = _client(server), server.models["generate"].name, api["chat"]
    for messages in CHATS:
        expected = gen.chat(messages, max_new_tokens=16, return_ids=True)
        r = client.chat.completions.create(model=name, messages=messages, max_tokens=16, temperature=0)
        assert r.choices[0].message.content == expected["text"]
        assert r.choices[0].finish_reason == ("length" if expected["finish_reason"] == "length" else "stop")
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=name, messages=messages, max_tokens=16, temperature=0, stream=True) if c.choices]
        assert "".join(pieces) == expected["text"]


def test_concurrent_chats_share_steps_and_equal_alone(server, api):
    """16 chats at once on 4 slots (joining and leaving the running batch): each equals its answer alone."""
    name, gen = server.models["generate"].name, api["chat"]
    asks = [[{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}] for i in range(16)]
    expected = [gen.chat(m, max_new_tokens=8 + i % 5) for i, m in enumerate(asks)]

    def one(i):
        return _client(server).chat.completions.create(model=name, messages=asks[i], max_tokens=8 + i % 5,
                                                       temperature=0).choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(16))) == expected


# ---------------------------------------------------------------------- TEI routes, httpx

def test_tei_routes_equal_the_api(server, api, sentences):
    url = server.url
    texts = sentences[:5]
    got = np.array(httpx.post(url + "/embed", json={"inputs": texts}).json(), dtype=np.float32)
    np.testing.assert_array_equal(got, l2_normalize(api["embed"].encode(texts)))
    raw = np.array(httpx.post(url + "/embed", json={"inputs": texts[0], "normalize": False}).json(), np.float32)
    np.testing.assert_array_equal(raw, api["embed"].encode([texts[0]]))
    ranked = httpx.post(url + "/rerank", json={"query": texts[0], "texts": texts[1:], "return_text": True}).json()
    expected = api["rank"].rerank(texts[0], texts[1:])
    assert [r["index"] for r in ranked] == [e["index"] for e in expected]
    np.testing.assert_allclose([r["score"] for r in ranked], [e["score"] for e in expected], rtol=1e-6)
    assert [r["text"] for r in ranked] == [texts[1:][e["index"]] for e in expected]
    predicted = httpx.post(url + "/predict", json={"inputs": [[texts[0], texts[1]], [texts[2], texts[3]]]}).json()
    reference = api["rank"].classify([texts[0], texts[2]], [texts[1], texts[3]], top_k=None)
    assert [[p["label"] for p in row] for row in predicted] == [[r["label"] for r in row] for row in reference]
    np.testing.assert_allclose([p["score"] for row in predicted for p in row],
                               [r["score"] for row in reference for r in row], rtol=1e-6)
    tokens = httpx.post(url + "/tokenize", json={"inputs": texts[0]}).json()[0]
    assert [t["id"] for t in tokens] == api["embed"].tokenizer.encode(texts[0]).ids
    sparse = httpx.post(url + "/embed_sparse", json={"inputs": "x"})
    assert sparse.status_code == 404 and set(sparse.json()) == {"error", "error_type"}
    assert httpx.get(url + "/health").json() == {"status": "ok"}


# ---------------------------------------------------------------------- errors and limits

def test_errors_in_each_protocols_format(server):
    url = server.url
    r = httpx.post(url + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(url + "/v1/chat/completions", json={"model": "nope", "messages": []})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        _client(server).chat.completions.create(model=server.models["generate"].name, messages="hi")
    r = httpx.post(url + "/embed", json={"inputs": 42})
    assert r.status_code == 400 and r.json()["error_type"] == "Validation"
    r = httpx.post(url + "/embed", content=b"x" * (9 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation"
    r = httpx.post(url + "/embed", json={"inputs": "word " * 30_000})
    assert r.status_code == 413
    prompt = "word " * 400          # past the served context of 256
    r = httpx.post(url + "/v1/completions", json={"model": server.models["generate"].name, "prompt": prompt})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    assert "Traceback" not in r.text


def test_api_key_checked(files):
    from fastapi.testclient import TestClient

    models = open_models([str(files["embed"])])
    with TestClient(create_app(models, api_key="s3cret")) as client:
        assert client.post("/embed", json={"inputs": "x"}).status_code == 401
        assert client.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = client.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = client.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/health").status_code == 200


def test_full_queue_gives_503_and_recovers(files):
    from fastapi.testclient import TestClient

    models = open_models([str(files["embed"])])
    models[0].batcher.max_waiting = 3
    with TestClient(create_app(models, limits=Limits(max_texts=10, timeout_s=60))) as client:
        r = client.post("/embed", json={"inputs": ["a"] * 5})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error_type"] == "Overloaded"
        assert client.post("/embed", json={"inputs": ["a", "b"]}).status_code == 200
        assert client.post("/embed", json={"inputs": ["a"] * 11}).status_code == 413


def test_disconnect_frees_the_slot(files):
    """A streaming client that leaves mid-answer: its generation stops and its slot is free again."""
    models = open_models([str(files["chat"])], parallel=1, context=512)
    live = models[0].live
    with Running(create_app(models)) as running:
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", running.url + "/v1/completions",
                          json={"model": models[0].name, "prompt": "Once", "max_tokens": 400, "temperature": 0,
                                "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        break
        deadline = time.monotonic() + 10
        while live.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.active == 0
        r = httpx.post(running.url + "/v1/completions", json={"model": models[0].name, "prompt": "Once",
                                                              "max_tokens": 4, "temperature": 0}, timeout=30)
        assert r.status_code == 200
    live.close(5)


def test_cli_serve_drains_on_sigterm(files, api):
    """`tinybert serve` as a real process: a generation in flight when SIGTERM comes is answered in full, then
    the process exits (uvicorn re-raises the signal after draining: status −SIGTERM, or 0)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinybert", "serve", str(files["chat"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    prompt = "Once upon a time"
    try:
        wait_until_healthy(url, proc)
        started = threading.Event()

        def stream() -> tuple[int, str]:
            pieces = []
            body = {"model": "chat", "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        pieces.append(json.loads(line[6:])["choices"][0]["text"])
                        started.set()
                return r.status_code, "".join(pieces)

        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(stream)
            assert started.wait(60)
            proc.send_signal(signal.SIGTERM)          # mid-answer
            status, text = answer.result()
        assert status == 200 and text == api["chat"].generate(prompt, max_new_tokens=200)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_64_clients_50_mixed_requests_each(server, api, sentences):
    """64 concurrent clients × 50 requests of four kinds (OpenAI and TEI embeddings, completions, chat), each with
    its own text: every answer is the Python API's for that text — nothing lost, duplicated or crossed."""
    import asyncio

    texts = sentences[:64]
    vectors = api["embed"].encode(texts)
    unit = l2_normalize(vectors)
    completions = api["chat"].generate(texts, max_new_tokens=3)
    chats = [api["chat"].chat([{"role": "user", "content": t}], max_new_tokens=3) for t in texts]
    names = {kind: m.name for kind, m in server.models.items()}
    wrong: list[str] = []

    async def client(c: int) -> int:
        done = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            for i in range(50):
                k, j = (c + i) % 4, (c * 50 + i) % 64
                if k == 0:
                    r = await http.post("/v1/embeddings", json={"model": names["embed"], "input": texts[j],
                                                                "encoding_format": "float"})
                    ok = np.array_equal(np.array(r.json()["data"][0]["embedding"], np.float32), vectors[j])
                elif k == 1:
                    r = await http.post("/embed", json={"inputs": texts[j]})
                    ok = np.array_equal(np.array(r.json()[0], np.float32), unit[j])
                elif k == 2:
                    r = await http.post("/v1/completions", json={"model": names["generate"], "prompt": texts[j],
                                                                  "max_tokens": 3, "temperature": 0})
                    ok = r.json()["choices"][0]["text"] == completions[j]
                else:
                    r = await http.post("/v1/chat/completions", json={
                        "model": names["generate"], "messages": [{"role": "user", "content": texts[j]}],
                        "max_tokens": 3, "temperature": 0})
                    ok = r.json()["choices"][0]["message"]["content"] == chats[j]
                if r.status_code != 200 or not ok:
                    wrong.append(f"client {c} request {i}: {r.status_code} {r.text[:120]}")
                done += 1
        return done

    async def everyone() -> list[int]:
        return await asyncio.gather(*(client(c) for c in range(64)))

    assert asyncio.run(asyncio.wait_for(everyone(), 600)) == [50] * 64
    assert not wrong, wrong[:5]


def test_killed_server_restarts_and_serves(files):
    """kill -9, then a new server on the same port answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tinybert", "serve", str(files["embed"]), "--port", str(port)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until_healthy(url, first)
        assert httpx.post(url + "/embed", json={"inputs": "hello"}, timeout=60).status_code == 200
        first.kill()
        assert first.wait(30) == -signal.SIGKILL
        with pytest.raises(httpx.TransportError):
            httpx.post(url + "/embed", json={"inputs": "hello"}, timeout=5)
        second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until_healthy(url, second)
            r = httpx.post(url + "/embed", json={"inputs": "hello"}, timeout=60)
            assert r.status_code == 200 and len(r.json()[0]) == 384
        finally:
            second.kill()
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()


def test_batcher_runs_one_merged_call_per_worker_on_one_thread_when_others_run():
    """EmbedBatcher with two workers: a call alone takes every thread; one that starts while another runs
    takes one; no more calls than workers run at once; each request gets its own rows back."""
    import asyncio

    from tinybert.server.batching import EmbedBatcher

    started, release = [], threading.Event()

    def run(texts, threads):
        started.append((tuple(texts), threads))
        assert release.wait(30)
        return np.array([[len(t)] for t in texts], dtype=np.float32), np.arange(len(texts))

    async def main():
        batcher = EmbedBatcher(run, ThreadPoolExecutor(2), workers=2, max_texts=2)
        first = asyncio.ensure_future(batcher.embed(["a"]))
        while not started:
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(batcher.embed([t])) for t in ("bb", "ccc", "dddd")]
        while len(started) < 2:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        running = list(started)                 # both workers busy: "dddd" waits
        assert batcher.waiting == 1
        release.set()
        return running, await first, await asyncio.gather(*rest)

    running, first, rest = asyncio.run(main())
    assert running == [(("a",), 2), (("bb", "ccc"), 1)]
    assert started[2][0] == ("dddd",) and len(started) == 3
    assert [r[0].tolist() for r in [first, *rest]] == [[[1.0]], [[2.0]], [[3.0]], [[4.0]]]
    assert [r[1].tolist() for r in [first, *rest]] == [[0], [0], [1], [0]]      # rows of the call's counts
