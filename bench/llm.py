"""Decoding at the memory limit: tinybert int8 / int4 and llama.cpp Q8_0 / Q4_0 / Q4_K_M side by side, one run.

    python -m bench.llm [--rounds N] [--threads 2] [--models smollm2-135m,qwen2.5-0.5b] [--engines ...]
                        [--llama-cpp DIR --gguf-python PYTHON] [--smoke] [--out FILE]

Models (random weights, seeded, built once into ~/.cache/tinybert-bench/<name>/hf): "smollm2-135m" has
SmolLM2-135M's shape (Llama, 576 hidden, 30 layers, 9 heads / 3 KV heads, MLP 1536, vocab 49,152, tied) and
"qwen2.5-0.5b" Qwen2.5-0.5B's (Qwen2, 896 hidden, 24 layers, 14 / 2 heads, MLP 4864, vocab 151,936, tied); and,
when named, "llama3.2-1b" Llama-3.2-1B's (2048 hidden, 16 layers, 32 / 8 heads, MLP 8192, vocab 128,256, tied).
Their tokenizer is bench.generate's byte-level BPE trained on the shared sentences and padded to the vocabulary.

Engines, each in its own fresh process, interleaved round by round with a read-bandwidth reading between them:
tinybert int8 and int4 (``Generator.generate_ids``, greedy, no early stop) and, with ``--llama-cpp`` (a
llama.cpp source tree with build/bin/llama-bench, llama-quantize, llama-perplexity: ../shared/README.md says how
to build it) and ``--gguf-python`` (a Python that can run its convert_hf_to_gguf.py), llama.cpp Q8_0, Q4_0 and
Q4_K_M converted from the same HF folder (f16 GGUF, then llama-quantize), timed by ``llama-bench -p 128 -n 128``.

Per engine: prefill tok/s (tinybert: the 128-token prompt over the time to the first new token; llama-bench:
its pp128 figure), batch-1 decode tok/s (tinybert: 127 tokens over the time after the first; llama-bench:
tg128), file size, peak RSS (and for tinybert, (peak RSS − the runtime's) / file size, the runtime's being the
peak RSS of the same process on a 1 MB model), and % of the decode bound (decode tok/s x weight bytes per token / read
bandwidth; weight bytes = the file's tensor bytes, which is what a decode step reads, embedding rows aside).

Quality, not timed, in a process of its own: the shared sentences as one text, tokenised by the model's
tokenizer, cut into 128-token chunks; over the second half of each chunk (as llama-perplexity scores), the mean
KL divergence of the next-token distribution from transformers fp32's, and how often the top token agrees.
llama.cpp's come from ``llama-perplexity --kl-divergence`` against its f16 file over the same text and
chunk size (its own tokenisation of the text; its reference is f16, not fp32).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import CACHE

MODELS = ("smollm2-135m", "qwen2.5-0.5b")
BIG_MODELS = ("llama3.2-1b",)       # run when named (--models): 5 GB of float32 to build and convert
RUNTIME_MODEL = "runtime-tiny"      # the fixed allowance of the memory target: a tiny model's peak RSS
TINYBERT_ENGINES = ["tinybert-int8", "tinybert-int4"]
LLAMA_ENGINES = ["llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q4_k_m"]
SEED = 0
PROMPT_LEN = 128
NEW_TOKENS = 128
CHUNK = 128
REPEATS = {"full": (5, 3), "smoke": (1, 1)}
QUALITY_CHUNKS = {"full": 24, "smoke": 2}


def _hf_config(model: str):
    common = dict(tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if model == RUNTIME_MODEL:          # 1 MB of weights: its peak RSS is the runtime's own (the allowance)
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=8000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512, **common)
    if model == "smollm2-135m":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=2048,
                           rope_theta=100000.0, **common)
    if model == "llama3.2-1b":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, intermediate_size=8192, max_position_embeddings=4096,
                           rope_theta=500000.0, **common)
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=4096,
                       rope_theta=1000000.0, **common)


def hf_folder(model: str) -> Path:
    """The seeded random HF folder of ``model`` (built once, as bench.generate builds its models)."""
    from bench.generate import random_decoder_folder

    return random_decoder_folder(model, _hf_config(model))


def _gguf(model: str, quant: str, llama_cpp: Path, gguf_python: str) -> Path:
    """llama.cpp's file of ``model`` at ``quant`` ("f16", "q8_0", ...): convert_hf_to_gguf.py once, then
    llama-quantize."""
    folder, out = hf_folder(model), CACHE / model / "gguf"
    f16 = out / "f16.gguf"
    if not f16.is_file():
        # transformers 5 names the tokenizer class TokenizersBackend, which llama.cpp's transformers 4 lacks.
        copy = out / "hf"
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        cfg = json.loads((copy / "tokenizer_config.json").read_text())
        (copy / "tokenizer_config.json").write_text(json.dumps(dict(cfg, tokenizer_class="PreTrainedTokenizerFast")))
        wrap = harness._shared() / "tools" / "llamacpp" / "convert_wrap.py"
        subprocess.run([gguf_python, str(wrap), str(copy), "--outfile", str(f16), "--outtype", "f16"], check=True,
                       env=dict(__import__("os").environ, LLAMA_CPP_SRC=str(llama_cpp)), capture_output=True)
    if quant == "f16":
        return f16
    target = out / f"{quant}.gguf"
    if not target.is_file():
        subprocess.run([str(llama_cpp / "build" / "bin" / "llama-quantize"), str(f16), str(target), quant.upper()],
                       check=True, capture_output=True)
    return target


def prepare(model: str, engine: str, args) -> Path:
    kind, precision = harness.kind_precision(engine)
    if kind == "tinybert":
        return harness.tinybert_file(hf_folder(model), CACHE / model / f"tinybert-{precision}.safetensors", precision)
    return _gguf(model, precision, Path(args.llama_cpp), args.gguf_python)


def prompt_ids(model: str) -> list[int]:
    real = json.loads((hf_folder(model) / "bench.json").read_text())["real_vocab"]
    return np.random.default_rng(SEED).integers(1, real, size=PROMPT_LEN).tolist()


def chunks(model: str, n: int) -> list[list[int]]:
    """The shared sentences as one text, tokenised, cut into CHUNK-token chunks (the first n)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_folder(model) / "tokenizer.json"))
    ids = tok.encode("\n".join(harness.sentences())).ids
    return [ids[i:i + CHUNK] for i in range(0, len(ids) - CHUNK + 1, CHUNK)][:n]


# ----------------------------------------------------------------------------- engine processes

def _tinybert_speed(spec: dict) -> dict:
    import tinybert

    gen = tinybert.Generator(spec["path"], threads=spec["threads"])
    prompt = [spec["prompt"]]
    ttft_repeats, total_repeats = REPEATS["smoke" if spec.get("smoke") else "full"]
    fig = harness.time_generation(lambda k: [r["token_ids"] for r in gen.generate_ids(prompt, max_new_tokens=k)],
                                  NEW_TOKENS, ttft_repeats, total_repeats)
    if [len(r) for r in fig.pop("full")] != [NEW_TOKENS]:
        raise SystemExit("tinybert did not generate the requested number of tokens")
    fig.pop("first")
    return {"prefill_tok_s": PROMPT_LEN / (fig["ttft_ms"] / 1e3), "decode_tok_s": fig["decode_tok_s"],
            "ttft_ms": fig["ttft_ms"]}


def _llama_speed(spec: dict) -> dict:
    bench = Path(spec["llama_cpp"]) / "build" / "bin" / "llama-bench"
    repeats = 1 if spec.get("smoke") else 3
    out = subprocess.run([str(bench), "-m", spec["path"], "-p", str(PROMPT_LEN), "-n", str(NEW_TOKENS),
                          "-t", str(spec["threads"]), "-r", str(repeats), "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    prefill = [r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0]
    decode = [r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0]
    # the child's peak, not this process's: llama-bench is the engine
    return {"prefill_tok_s": prefill[0], "decode_tok_s": decode[0],
            "peak_rss_mb": harness.kib_to_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)}


def _kl_top1(ref_logits: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1), ref_logits.argmax(-1) == logits.argmax(-1)


def _tinybert_quality(spec: dict) -> dict:
    """Mean KL(transformers fp32 || engine) and top-1 agreement over the second half of each chunk."""
    import torch
    from transformers import AutoModelForCausalLM

    import tinybert

    torch.set_num_threads(spec["threads"])
    net = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    gen = tinybert.Generator(spec["path"], threads=spec["threads"])
    kls, same = [], []
    for ids in spec["chunks"]:
        with torch.inference_mode():
            ref = net(torch.tensor([ids])).logits[0].numpy()
        mine = gen.logits([ids])[0]
        kl, top = _kl_top1(ref[CHUNK // 2:], np.asarray(mine)[CHUNK // 2:])
        kls.append(kl)
        same.append(top)
    return {"kl_mean": float(np.concatenate(kls).mean()), "top1_agree": float(np.concatenate(same).mean()),
            "positions": int(sum(len(k) for k in kls)), "reference": "transformers fp32"}


def _llama_quality(spec: dict) -> dict:
    perplexity = Path(spec["llama_cpp"]) / "build" / "bin" / "llama-perplexity"
    scratch = Path(spec["scratch"])
    text = scratch / "quality.txt"
    text.write_text("\n".join(harness.sentences()))
    base = scratch / f"{Path(spec['f16']).stem}-{spec['model']}.kld"
    common = ["-f", str(text), "-c", str(CHUNK), "-t", str(spec["threads"]), "--chunks", str(spec["n_chunks"])]
    if not base.is_file():
        subprocess.run([str(perplexity), "-m", spec["f16"], "--kl-divergence-base", str(base)] + common,
                       check=True, capture_output=True)
    out = subprocess.run([str(perplexity), "-m", spec["path"], "--kl-divergence-base", str(base), "--kl-divergence"]
                         + common, check=True, capture_output=True, text=True)
    log = out.stdout + out.stderr
    res: dict = {"reference": "llama.cpp f16"}
    for line in log.splitlines():
        if line.startswith("Mean    KLD:") or line.startswith("Mean KLD:"):
            res["kl_mean"] = float(line.split(":")[1].split()[0])
        if line.startswith("Same top p:"):
            res["top1_agree"] = float(line.split(":")[1].split()[0].rstrip("%")) / 100
    return res


def worker(spec: dict) -> dict:
    kind = harness.kind_precision(spec["engine"])[0]
    t0 = time.perf_counter()
    if spec.get("what") == "quality":
        return _tinybert_quality(spec) if kind == "tinybert" else _llama_quality(spec)
    res = _tinybert_speed(spec) if kind == "tinybert" else _llama_speed(spec)
    res["wall_s"] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- the session

def weight_bytes(path: Path) -> int:
    """Tensor bytes of the file: safetensors' data section, or a GGUF's size (its header is a rounding error)."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            return path.stat().st_size - 8 - int.from_bytes(f.read(8), "little")
    return path.stat().st_size


def print_model(model: str, info: dict) -> None:
    bw = info["bandwidth_gb_s"]
    rows = []
    for engine, res in info["engines"].items():
        if "error" in res:
            rows.append([engine, "error: " + res["error"][:60]] + [""] * 7)
            continue
        rows.append([engine, harness.fmt(res.get("file_mb"), ".0f"), harness.fmt(res.get("prefill_tok_s"), ".0f"),
                     harness.fmt(res.get("decode_tok_s"), ".1f"), harness.fmt(res.get("fraction_of_bound"), ".0%"),
                     harness.fmt(res.get("peak_rss_mb"), ".0f"), harness.fmt(res.get("rss_over_file"), ".2f"),
                     harness.fmt(res.get("quality", {}).get("kl_mean"), ".5f"),
                     harness.fmt(res.get("quality", {}).get("top1_agree"), ".3f")])
    print(f"\n{model}: prompt {PROMPT_LEN} + {NEW_TOKENS} new, batch 1, {info['threads']} threads; read bandwidth "
          f"{bw:.1f} GB/s (median of this run's readings)")
    print(harness.table(["engine", "file MB", "prefill tok/s", "decode tok/s", "% bound", "peak RSS MB",
                         "(RSS - runtime) / file", "KL", "top-1"], rows))
    for mine, peer in (("tinybert-int8", "llamacpp-q8_0"), ("tinybert-int4", "llamacpp-q4_0")):
        a, b = info["engines"].get(mine, {}), info["engines"].get(peer, {})
        if "decode_tok_s" in a and "decode_tok_s" in b:
            print(f"  {mine} / {peer}: decode {a['decode_tok_s'] / b['decode_tok_s']:.2f}x, prefill "
                  f"{a['prefill_tok_s'] / b['prefill_tok_s']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=None, help="default: tinybert's, and llama.cpp's with --llama-cpp")
    parser.add_argument("--llama-cpp", default=None, help="llama.cpp source tree with build/bin/llama-bench etc.")
    parser.add_argument("--gguf-python", default=None, help="a Python that runs llama.cpp's convert_hf_to_gguf.py")
    args = parser.parse_args(argv)
    if args.worker:
        harness.serve(args.worker, worker)
        return
    import tinybert.format as fmt

    engines = args.engines.split(",") if args.engines else \
        [e for e in TINYBERT_ENGINES if harness.kind_precision(e)[1] in fmt.QUANTIZATIONS] + \
        (LLAMA_ENGINES if args.llama_cpp else [])
    if any(not harness.is_tinybert(e) for e in engines) and not (args.llama_cpp and args.gguf_python):
        parser.error("llama.cpp engines need --llama-cpp and --gguf-python")
    mode = "smoke" if args.smoke else "full"
    session = harness.Session("llm", args, bandwidth=True)
    report: dict = {"prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "models": {}, "runtime_rss_mb": {}}
    # The memory target is peak RSS <= 1.15 x the file + a fixed allowance: the allowance is what the same
    # process (import, load, the same generation) takes with a model of almost no weights.
    for engine in [e for e in engines if harness.is_tinybert(e)]:
        tiny = prepare(RUNTIME_MODEL, engine, args)
        res = session.run(engine, {"path": str(tiny), "prompt": prompt_ids(RUNTIME_MODEL)}, f"{RUNTIME_MODEL}-{engine}")
        report["runtime_rss_mb"][engine] = res.get("peak_rss_mb")
    for model in [m for m in args.models.split(",") if m]:
        if model not in MODELS + BIG_MODELS:
            parser.error(f"unknown model {model!r}: {', '.join(MODELS + BIG_MODELS)}")
        print(f"\n== {model}: preparing (cached after the first run)", flush=True)
        paths, specs = {}, {}
        for engine in engines:
            try:
                paths[engine] = prepare(model, engine, args)
                specs[engine] = {"path": str(paths[engine]), "prompt": prompt_ids(model), "llama_cpp": args.llama_cpp}
            except (subprocess.CalledProcessError, OSError, ValueError) as exc:
                specs[engine] = {"error": f"preparing: {exc}"}
        results = session.rounds(engines, specs, tag=model)
        bw = session.bandwidth_gb_s
        model_chunks = chunks(model, QUALITY_CHUNKS[mode])
        for engine, res in results.items():
            if "error" in res or engine not in paths:
                continue
            res["file_mb"] = harness.file_size(paths[engine]) / 1e6
            res["weight_bytes"] = weight_bytes(paths[engine])
            res["fraction_of_bound"] = res["decode_tok_s"] * res["weight_bytes"] / (bw * 1e9)
            runtime = report["runtime_rss_mb"].get(engine)
            if runtime and "peak_rss_mb" in res:      # (peak RSS − the runtime's) / file: the target is ≤ 1.15
                res["rss_over_file"] = (res["peak_rss_mb"] - runtime) / res["file_mb"]
            quality = {"what": "quality", "path": str(paths[engine]), "folder": str(hf_folder(model)),
                       "chunks": model_chunks, "model": model, "llama_cpp": args.llama_cpp,
                       "n_chunks": len(model_chunks)}
            if not harness.is_tinybert(engine):
                quality["f16"] = str(_gguf(model, "f16", Path(args.llama_cpp), args.gguf_python))
            res["quality"] = session.run(engine, quality, f"{model}-{engine}-quality")
        info = {"bandwidth_gb_s": bw, "threads": args.threads, "engines": results}
        report["models"][model] = info
        print_model(model, info)
    session.write(report)


if __name__ == "__main__":
    main()
