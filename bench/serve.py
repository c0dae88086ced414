"""`tinybert serve` under load: throughput and latency of embeddings and of streamed chat at 1, 8 and 64
concurrent clients, against the same model called in-process, one run.

    python -m bench.serve [--threads 2] [--clients 1,8,64] [--smoke] [--out FILE]

Models: all-MiniLM-L6-v2 int8 (real weights) for embeddings; for chat, bench.generate's "llama" shape (random
weights, 100 MB of int8 per token) with a chat template added, int8. The server runs in its own process
(`python -m tinybert serve ... --parallel 8 --threads N`); the clients are one asyncio event loop in this
process (httpx for the streamed chats), on the same 2 cores as the server (loopback), so every server figure carries the
clients' own cost too. The in-process reference runs in a process of its own.

Embeddings: each client sends single-sentence `/v1/embeddings` requests (the shared sentences, in turn) until
the run has sent max(8, 256 / clients) per client (a minimal keep-alive HTTP/1.1 client: httpx's was the
bottleneck at 64 connections); throughput = sentences / wall, latency per request (p50, p99). The
reference: ``Encoder.encode`` over the same sentences in batches of 32 (what batching across requests buys is
the ratio of the two), and the p50 of ``encode([one sentence])`` (the server's overhead is the difference of the
two p50s). Chat: each client streams one `/v1/chat/completions` answer of 64 tokens (temperature 0; EOS never
comes from the random model); per-client tok/s = 64 / (last chunk − first chunk), total = all tokens / wall.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import CACHE

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NEW_TOKENS = 64


def chat_file() -> Path:
    """bench.generate's llama-shape folder with a chat template, converted int8 once."""
    from bench.generate import hf_folder

    def build(folder: Path) -> None:
        shutil.copytree(hf_folder("llama"), folder, dirs_exist_ok=True)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=CHAT_TEMPLATE)))
    folder = harness.built_once(CACHE / "llama-chat" / "hf", build,
                                lambda f: (f / "tokenizer_config.json").is_file()
                                and "chat_template" in (f / "tokenizer_config.json").read_text())
    return harness.tinybert_file(folder, CACHE / "llama-chat" / "tinybert-int8.safetensors", "int8")


def minilm_file() -> Path:
    from bench.encoder import prepare

    return prepare("minilm", "tinybert-int8")


# ----------------------------------------------------------------------------- the in-process reference

def worker(spec: dict) -> dict:
    import tinybert

    enc = tinybert.Encoder(spec["embed"], threads=spec["threads"])
    texts = spec["texts"]
    enc.encode(texts[:64], batch_size=32)
    t0 = time.perf_counter()
    enc.encode(texts, batch_size=32)
    batched = len(texts) / (time.perf_counter() - t0)
    single = []
    for text in texts[:200]:
        t = time.perf_counter()
        enc.encode([text])
        single.append(time.perf_counter() - t)
    gen = tinybert.Generator(spec["chat"], threads=spec["threads"])
    messages = [{"role": "user", "content": texts[0]}]
    gen.chat(messages, max_new_tokens=4)
    t0 = time.perf_counter()
    out = gen.chat(messages, max_new_tokens=NEW_TOKENS, return_ids=True)
    return {"encode_batched_texts_s": batched, "encode_one_p50_ms": 1e3 * statistics.median(single),
            "chat_tok_s": len(out["token_ids"]) / (time.perf_counter() - t0)}


# ----------------------------------------------------------------------------- the clients

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values: list[float]) -> dict:
    ms = np.array(values) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


class _Connection:
    """One keep-alive HTTP/1.1 connection speaking just what the embedding load needs (JSON POST, Content-Length
    answers). httpx's AsyncClient was the bottleneck at 64 connections (GET /health: 142 requests/s, against
    4,178 with this client), so its figures measured the client, not the server."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def __aenter__(self) -> _Connection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def _embeddings(port: int, texts: list[str], clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    counter = iter(range(clients * per_client))

    async def client() -> None:
        async with _Connection(port) as conn:
            for i in counter:
                t = time.perf_counter()
                status, _ = await conn.post("/v1/embeddings", {"model": "minilm", "input": texts[i % len(texts)],
                                                               "encoding_format": "base64"})
                if status != 200:
                    raise SystemExit(f"/v1/embeddings answered {status}")
                latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(latencies), "texts_s": len(latencies) / wall, **_percentiles(latencies)}


def _lone_requests(port: int, texts: list[str]) -> dict:
    """One client sending one request at a time on a blocking keep-alive socket: what a request costs beyond its
    model call, with as little client as there can be (the asyncio client adds its event loop's own work to
    every latency, on the same two cores as the server)."""
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        reader = conn.makefile("rb")
        for i, text in enumerate(texts * 2):
            data = json.dumps({"model": "minilm", "input": text, "encoding_format": "base64"}).encode()
            t = time.perf_counter()
            conn.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
            status, length = int(reader.readline().split()[1]), 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            reader.read(length)
            if status != 200:
                raise SystemExit(f"/v1/embeddings answered {status}")
            if i >= len(texts):          # the first pass warms the texts' shapes
                latencies.append(time.perf_counter() - t)
    return {"clients": 1, "requests": len(latencies), "client": "blocking socket", **_percentiles(latencies)}


async def _chats(url: str, texts: list[str], clients: int) -> dict:
    import httpx

    rates, tokens = [], []

    async def client(http, i: int) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": texts[i % len(texts)]}], "stream": True,
                "max_tokens": NEW_TOKENS, "temperature": 0, "stream_options": {"include_usage": True}}
        first = last = None
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens.append(chunk["usage"]["completion_tokens"])
                elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    last = time.perf_counter()
                    first = first or last
        if first is not None and last > first:
            rates.append((tokens[-1] - 1) / (last - first))

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "tokens": sum(tokens), "total_tok_s": sum(tokens) / wall,
            "per_client_tok_s_median": statistics.median(rates) if rates else None}


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--clients", default="1,8,64")
    args = parser.parse_args(argv)
    if args.worker:
        harness.serve(args.worker, worker)
        return
    session = harness.Session("serve", args)
    counts = [int(c) for c in args.clients.split(",")] if not args.smoke else [1, 8]
    texts = harness.sentences()
    paths = {}
    for name, path in (("minilm", minilm_file()), ("chat", chat_file())):   # served under these names (file stems)
        paths[name] = session.scratch / f"{name}.safetensors"
        paths[name].symlink_to(path)
    print("in-process reference ...", flush=True)
    reference = session.run("tinybert-int8", {"embed": str(paths["minilm"]), "chat": str(paths["chat"]),
                                              "texts": texts}, "reference")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tinybert", "serve", str(paths["minilm"]), str(paths["chat"]),
                               "--port", str(port), "--parallel", "8", "--threads", str(args.threads)],
                              env=harness.thread_env(args.threads), stderr=subprocess.PIPE)
    report: dict = {"reference": reference, "embeddings": [], "chat": []}
    try:
        from tinybert.server import wait_until_healthy

        wait_until_healthy(url, server, timeout=300)
        asyncio.run(_embeddings(port, texts, 8, 8))           # warm-up: kernels, connections
        asyncio.run(_chats(url, texts, 2))
        print("embeddings, lone requests ...", flush=True)
        report["lone"] = _lone_requests(port, texts[:200])
        for c in counts:
            print(f"embeddings, {c} clients ...", flush=True)
            report["embeddings"].append(asyncio.run(_embeddings(port, texts, c, max(8, 256 // c))))
        for c in counts:
            print(f"chat, {c} clients ...", flush=True)
            report["chat"].append(asyncio.run(_chats(url, texts, c)))
    finally:
        server.terminate()
        server.wait(60)
    _print(report)
    session.write(report)


def _print(report: dict) -> None:
    ref = report["reference"]
    rows = [[str(e["clients"]), f"{e['texts_s']:.0f}", f"{e['p50_ms']:.2f}", f"{e['p99_ms']:.2f}",
             f"{e['texts_s'] / ref['encode_batched_texts_s']:.0%}"] for e in report["embeddings"]]
    print(f"\nembeddings (MiniLM int8): in-process encode in batches of 32 {ref['encode_batched_texts_s']:.0f} "
          f"texts/s; encode([one]) p50 {ref['encode_one_p50_ms']:.2f} ms")
    print(harness.table(["clients", "texts/s", "p50 ms", "p99 ms", "of in-process batched"], rows))
    lone = report.get("lone")
    if lone:
        overhead = lone["p50_ms"] - ref["encode_one_p50_ms"]
        print(f"lone requests (one blocking keep-alive client, the reference's 200 texts): p50 "
              f"{lone['p50_ms']:.2f} ms, p99 {lone['p99_ms']:.2f} ms; {overhead:.2f} ms over encode([one])'s p50")
    single = next((c["total_tok_s"] for c in report["chat"] if c["clients"] == 1), None)
    rows = [[str(c["clients"]), f"{c['total_tok_s']:.1f}", harness.fmt(c["per_client_tok_s_median"], ".1f"),
             harness.fmt(c["total_tok_s"] / single if single else None, ".2f")] for c in report["chat"]]
    print(f"\nchat (llama shape int8, {NEW_TOKENS} tokens streamed): in-process chat {ref['chat_tok_s']:.1f} tok/s")
    print(harness.table(["clients", "total tok/s", "per client tok/s (median)", "x one client"], rows))


if __name__ == "__main__":
    main()
