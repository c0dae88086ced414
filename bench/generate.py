"""Text-generation benchmark: tinybert's ``Generator`` and its peers side by side, same ids, same threads, one run.

    python -m bench.generate [--quick] [--threads 2] [--models gpt2,llama] [--out bench/results/generate.json]

Models (random weights, seeded, built once into ~/.cache/tinybert-bench/<name>/hf with ``save_pretrained``):
"gpt2" has GPT-2 small's shape (12 x 768, 12 heads, vocab 50257, 1024 positions); "llama" is a Llama-shaped
model of ~125M parameters (768 hidden, 12 layers, 12 heads, 4 KV heads, MLP 2048, vocab 32000, untied head).
Their tokenizer is a byte-level BPE trained on ../shared/data/sentences.txt, padded with dummy added tokens
up to the model's vocabulary so that every id has a token string (CTranslate2 needs a vocabulary matching
the model). Neither config has an EOS id, so nothing can stop early; every engine is also told to produce
exactly the requested number of tokens and the worker checks that it did.

Workloads: greedy decoding of 128-token prompts (ids drawn with a fixed seed from the trained BPE range,
never the dummy tokens or the special token) + 128 new tokens, at batch 1 and at batch 8 (8 different
prompts, all 128 tokens long, so nobody pads). Every engine gets the very same ids; CTranslate2 takes token
strings, so ids are mapped to strings and checked to map back to the same ids through its vocabulary.

Engines, each in its own fresh process (so peak RSS is its own): tinybert int8 / fp32 (``generate_ids``),
PyTorch fp32 (``model.generate(do_sample=False)``) and dynamic int8 (``quantize_dynamic({nn.Linear})``:
on GPT-2 that quantizes the LM head only, since HF GPT-2's blocks are ``Conv1D`` and stay fp32, so it is
labelled as such and not treated as an int8 peer), CTranslate2 int8 / fp32 (``generate_batch``, top-1).

Figures per engine and workload, medians over repeats with a warm-up call excluded: time to first token
(TTFT: a call generating 1 new token, i.e. prefill + first token), total time for all new tokens, decode
speed per sequence = (new tokens - 1) / (total - TTFT), and throughput = batch x new tokens / total.
Also: load time, file size, peak RSS (VmHWM), and greedy agreement with PyTorch fp32 (number of leading
identical tokens at batch 1; random weights give flat logits, so int8 engines are expected to part early).

The decode bound: a batch-1 decode step reads every linear weight and the LM head once, so it cannot run
faster than (memory read bandwidth) / (weight bytes per step). The bandwidth is measured here (a Numba
``prange`` sum over a 512 MB float32 array with the given threads, and numpy's single-thread sum; the faster
counts). Weight bytes: int8 = 1 byte/param, fp32 = 4 (scales, biases, norms and the one embedding row are
left out, as is the KV cache, which is printed on its own line). Each engine's batch-1 decode speed is
reported as a fraction of the bound for the bytes it actually reads.

``--quick``: gpt2 only, batch 1 only, 32 new tokens, fewer repeats: a smoke run, not figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.encoder import CACHE, REPO, SENTENCES, _file_size, _median_time, _peak_rss_mb, _versions

ENGINES = ["tinybert-int8", "tinybert-fp32", "pytorch-int8", "pytorch-fp32", "ctranslate2-int8", "ctranslate2-fp32"]
MODELS = ["gpt2", "llama"]
REFERENCE = "pytorch-fp32"
SEED = 0
PROMPT_LEN = 128
NEW_TOKENS = 128
QUICK_NEW_TOKENS = 32
BATCHES = (1, 8)
N_PROMPTS = max(BATCHES)
# (TTFT repeats, total-generation repeats); each median also has one warm-up call before it.
REPEATS = {"full": (5, 3), "quick": (3, 2)}
BPE_VOCAB = 8000  # what the trainer may reach; 1,000 sentences give fewer merges (~6,800 tokens)
SPECIAL = "<|endoftext|>"
BANDWIDTH_MB = 512

# What each model's pytorch-int8 engine really is (printed under the table and kept in the JSON).
TORCH_INT8_NOTE = {
    "gpt2": ("pytorch-dynint8*", "* torch quantize_dynamic({nn.Linear}) on HF GPT-2 quantizes the LM head only: "
                                 "the blocks are Conv1D modules and stay fp32. Not an int8 peer."),
    "llama": ("pytorch-int8", "pytorch-int8 = torch quantize_dynamic({nn.Linear}): every projection and the LM head "
                              "int8 (per-tensor weight scales), activations quantized per call."),
}


# ----------------------------------------------------------------------------- preparation (parent)

def _hf_config(model: str):
    from transformers import GPT2Config, LlamaConfig

    # No EOS (nor BOS/pad) id: transformers then never stops early, and tinybert's converter writes a
    # model with no EOS either, so all engines generate exactly the requested number of tokens.
    if model == "gpt2":
        return GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                          bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, intermediate_size=2048, max_position_embeddings=2048,
                       tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _train_tokenizer(vocab_size: int, target: Path) -> int:
    """Byte-level BPE on the shared sentences, padded with dummy added tokens to ``vocab_size`` ids;
    returns how many ids are real BPE tokens (id 0 is the special token, the dummies come last)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if not SENTENCES.is_file():
        sys.exit(f"{SENTENCES} is missing (the benchmark trains its tokenizer on ../shared/data/sentences.txt)")
    lines = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    real = tok.get_vocab_size()
    tok.add_tokens([AddedToken(f"<|dummy_{i}|>", special=False, normalized=False) for i in range(real, vocab_size)])
    if tok.get_vocab_size() != vocab_size or tok.token_to_id(f"<|dummy_{vocab_size - 1}|>") != vocab_size - 1:
        raise RuntimeError("the padded tokenizer's ids do not run 0..vocab_size-1")
    tok.save(str(target / "tokenizer.json"))
    # GPT-2's own convention: one token for BOS, EOS and UNK. CTranslate2's converter reads all three
    # (a missing unk_token breaks it); none of them is an EOS id in config.json, so nothing stops early.
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL, "eos_token": SPECIAL,
        "unk_token": SPECIAL, "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}, indent=2))
    return real


def hf_folder(model: str) -> Path:
    """The seeded random HF folder of ``model`` (built once): weights, tokenizer, bench.json."""
    folder = CACHE / model / "hf"
    if (folder / "bench.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    partial = folder.with_name("hf.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    config = _hf_config(model)
    torch.manual_seed(SEED)
    net = AutoModelForCausalLM.from_config(config).eval()
    net.save_pretrained(partial)
    real = _train_tokenizer(config.vocab_size, partial)
    (partial / "bench.json").write_text(json.dumps({"real_vocab": real, "parameters": net.num_parameters(),
                                                    "seed": SEED}))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)  # only a complete folder ever sits at CACHE/<model>/hf
    return folder


def _current_tinybert_file(path: Path) -> bool:
    from tinybert.errors import TinyBertError
    from tinybert.loader import read_metadata

    try:
        read_metadata(path)
        return True
    except TinyBertError:
        return False


def _check_ct2_vocabulary(path: Path, folder: Path) -> None:
    """CTranslate2 maps token strings to ids through its own vocabulary: it must be the tokenizer's, id for id."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = json.loads((path / "vocabulary.json").read_text(encoding="utf-8"))
    expected = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    if vocab != expected:
        bad = next((i for i, (a, b) in enumerate(zip(vocab, expected)) if a != b), min(len(vocab), len(expected)))
        raise RuntimeError(f"{path}: CTranslate2 vocabulary differs from the tokenizer's at id {bad} "
                           f"({len(vocab)} vs {len(expected)} tokens)")
    if len(set(vocab)) != len(vocab):
        raise RuntimeError(f"{path}: CTranslate2 vocabulary has duplicate token strings")


def prepare(model: str, engine: str) -> Path:
    """Build (once, cached) what ``engine`` loads for ``model``; returns its path."""
    return build_engine_files(hf_folder(model), CACHE / model, engine, _check_ct2_vocabulary)


def build_engine_files(folder: Path, out: Path, engine: str, check_ct2_vocabulary: Callable[[Path, Path], None],
                       reconvert: bool = False) -> Path:
    """The tinybert file or CTranslate2 folder ``engine`` loads, converted once from the HF ``folder`` into
    ``out`` (beside the HF folder, not in it: the converters and from_pretrained read every weight file they
    find there); PyTorch loads ``folder`` itself. ``reconvert``: convert tinybert's file again even when
    one of the current format version is cached."""
    kind, precision = engine.rsplit("-", 1)
    if kind == "tinybert":
        path = out / f"tinybert-{precision}.safetensors"
        if reconvert or not _current_tinybert_file(path):
            from tinybert_convert import convert

            convert(folder, path, dtype=precision)
        return path
    if kind == "ctranslate2":
        path = out / f"ct2-{precision}"
        if not (path / "model.bin").is_file():
            import ctranslate2

            partial = path.with_name(path.name + ".partial")
            ctranslate2.converters.TransformersConverter(str(folder)).convert(
                str(partial), quantization="int8" if precision == "int8" else "float32", force=True)
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)
        check_ct2_vocabulary(path, folder)
        return path
    return folder  # PyTorch loads the HF folder (int8 is quantized at load time)


def prompts(model: str) -> dict:
    """N_PROMPTS prompts of PROMPT_LEN ids from the trained BPE range, and their token strings."""
    from tokenizers import Tokenizer

    folder = hf_folder(model)
    real = json.loads((folder / "bench.json").read_text())["real_vocab"]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rng = np.random.default_rng(SEED)
    ids = rng.integers(1, real, size=(N_PROMPTS, PROMPT_LEN)).tolist()  # id 0 is the special token
    tokens = [[tok.id_to_token(i) for i in row] for row in ids]
    if [[tok.token_to_id(t) for t in row] for row in tokens] != ids:
        raise RuntimeError("prompt ids do not survive the id -> token string -> id round trip")
    return {"ids": ids, "tokens": tokens}


def _safetensors_parameters(folder: Path) -> int:
    with open(folder / "model.safetensors", "rb") as f:
        meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(int(np.prod(v["shape"])) for k, v in meta.items() if k != "__metadata__")


def weight_params(model: str) -> dict[str, int]:
    """Parameters a batch-1 decode step reads, from the config: the blocks' linear weights and the LM head
    (biases, norms and the looked-up embedding rows are a rounding error next to them)."""
    cfg = json.loads((hf_folder(model) / "config.json").read_text())
    if model == "gpt2":
        h, inter = cfg["n_embd"], cfg.get("n_inner") or 4 * cfg["n_embd"]
        per_layer = h * 3 * h + h * h + 2 * h * inter
        layers, vocab = cfg["n_layer"], cfg["vocab_size"]
    else:
        h, inter = cfg["hidden_size"], cfg["intermediate_size"]
        hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
        q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * inter
        layers, vocab = cfg["num_hidden_layers"], cfg["vocab_size"]
    return {"blocks": layers * per_layer, "lm_head": vocab * h}


def kv_bytes_per_step(model: str, new_tokens: int) -> float:
    """Float32 KV cache bytes one batch-1 decode step reads, averaged over the decode steps."""
    cfg = json.loads((hf_folder(model) / "config.json").read_text())
    if model == "gpt2":
        layers, width = cfg["n_layer"], cfg["n_embd"]
    else:
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        layers, width = cfg["num_hidden_layers"], cfg["num_key_value_heads"] * hd
    mean_context = PROMPT_LEN + new_tokens / 2
    return 2 * layers * width * mean_context * 4


def engine_weight_bytes(model: str, engine: str) -> int:
    """Weight bytes one batch-1 decode step of ``engine`` reads (int8 1 byte/param, fp32 4)."""
    params = weight_params(model)
    if engine.endswith("fp32"):
        return 4 * (params["blocks"] + params["lm_head"])
    if engine == "pytorch-int8" and model == "gpt2":
        return 4 * params["blocks"] + params["lm_head"]  # Conv1D blocks stay fp32
    return params["blocks"] + params["lm_head"]


# ----------------------------------------------------------------------------- engines (worker)

def load_engine(engine: str, path: Path, threads: int) -> Callable[[object, int], list[list[int]]]:
    """Returns gen(prompts, new tokens) -> the new ids of each prompt (greedy, no early stop); prompts are
    what the engine takes (id lists, a torch tensor, token strings: see _engine_inputs).
    Inputs are built before the returned function is timed, so the timed region is the engine's call."""
    kind, precision = engine.rsplit("-", 1)
    if kind == "tinybert":
        import tinybert

        gen = tinybert.Generator(path, threads=threads)
        if gen.config.eos_token_ids:
            raise SystemExit(f"{path} has EOS ids {gen.config.eos_token_ids}; the bench needs none")

        def run(rows: list[list[int]], n: int) -> list[list[int]]:
            return [r["token_ids"] for r in gen.generate_ids(rows, max_new_tokens=n)]
        return run
    if kind == "ctranslate2":
        import ctranslate2

        gen = ctranslate2.Generator(str(path), device="cpu", intra_threads=threads, inter_threads=1)

        def run(rows: list[list[str]], n: int) -> list[list[int]]:
            # end_token=[]: no token stops decoding (the default would be the tokenizer's EOS string);
            # min_length too, belt and braces. With include_prompt_in_result=False the lengths count new tokens.
            out = gen.generate_batch(rows, max_length=n, min_length=n, sampling_topk=1, beam_size=1,
                                     end_token=[], include_prompt_in_result=False)
            return [r.sequences_ids[0] for r in out]
        return run
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    net = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    if precision == "int8":
        net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)

    def run(rows: torch.Tensor, n: int) -> list[list[int]]:
        with torch.inference_mode():
            out = net.generate(input_ids=rows, attention_mask=torch.ones_like(rows), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, num_beams=1)
        return out[:, rows.shape[1]:].tolist()
    return run


def _engine_inputs(engine: str, spec: dict, batch: int) -> object:
    kind = engine.rsplit("-", 1)[0]
    if kind == "ctranslate2":
        return spec["prompts"]["tokens"][:batch]
    if kind == "pytorch":
        import torch

        return torch.tensor(spec["prompts"]["ids"][:batch], dtype=torch.long)
    return spec["prompts"]["ids"][:batch]


def worker(spec: dict) -> dict:
    engine, quick = spec["engine"], spec["quick"]
    t0 = time.perf_counter()
    run = load_engine(engine, Path(spec["path"]), spec["threads"])
    result: dict = {"load_s": time.perf_counter() - t0, "batches": {}}
    n = spec["new_tokens"]
    ttft_repeats, total_repeats = REPEATS["quick" if quick else "full"]
    for batch in spec["batches"]:
        rows = _engine_inputs(engine, spec, batch)
        last: dict = {}

        def full(rows: object = rows, last: dict = last) -> None:
            last["ids"] = run(rows, n)
        ttft = _median_time(lambda rows=rows: run(rows, 1), repeats=ttft_repeats, min_seconds=0.0)
        total = _median_time(full, repeats=total_repeats, min_seconds=0.0)
        lengths = sorted({len(r) for r in last["ids"]})
        if len(last["ids"]) != batch or lengths != [n]:
            raise SystemExit(f"{engine} returned {len(last['ids'])} sequences of lengths {lengths}, "
                             f"expected {batch} of {n}")
        result["batches"][str(batch)] = {
            "ttft_ms": ttft * 1e3, "total_s": total,
            # per sequence: the tokens after the first, over the time after the first
            "decode_tok_s": (n - 1) / (total - ttft) if total > ttft else float("nan"),
            "total_tok_s": batch * n / total, "ids": last["ids"]}
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def bandwidth_worker(spec: dict) -> dict:
    """Memory read bandwidth, GB/s: a Numba prange sum (``threads`` threads) and numpy's sum over 512 MB."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, fastmath=True, cache=False)
    def psum(a: np.ndarray, parts: int) -> float:
        acc = np.zeros(parts, dtype=np.float64)
        n = a.size
        for p in prange(parts):
            s = np.float32(0.0)  # fastmath lets LLVM split this into vector accumulators
            for i in range(n * p // parts, n * (p + 1) // parts):
                s += a[i]
            acc[p] = s
        return acc.sum()

    numba.set_num_threads(spec["threads"])
    a = np.ones(BANDWIDTH_MB * (1 << 20) // 4, dtype=np.float32)  # np.ones touches every page up front
    parts = spec["threads"] * 8  # a few chunks per thread so a slow core does not hold the rest back
    t_numba = _median_time(lambda: psum(a, parts), repeats=7, min_seconds=0.0)
    t_numpy = _median_time(lambda: np.add.reduce(a), repeats=5, min_seconds=0.0)
    return {"numba_gb_s": a.nbytes / t_numba / 1e9, "numpy_gb_s": a.nbytes / t_numpy / 1e9,
            "bytes": a.nbytes, "threads": spec["threads"]}


# ----------------------------------------------------------------------------- orchestration (parent)

def _subprocess(spec: dict, tmp: Path, name: str) -> dict:
    spec = dict(spec, result=str(tmp / f"{name}.json"))
    spec_path = tmp / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    proc = subprocess.run([sys.executable, "-m", "bench.generate", "--worker", str(spec_path)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": " | ".join(lines[-3:]) if lines else f"exit code {proc.returncode}"}
    return json.loads(Path(spec["result"]).read_text())


def _leading_match(a: list[int], b: list[int]) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def analyse(model: str, results: dict, bandwidth: float) -> dict:
    """Agreement with the reference, the decode bound, tinybert's ratios; drops the token ids."""
    ref = {batch: fig["ids"] for batch, fig in results.get(REFERENCE, {}).get("batches", {}).items()}
    for engine, res in results.items():
        if "batches" not in res:
            continue
        for batch, fig in res["batches"].items():
            ids = fig.pop("ids")  # too long for the report; the first few of batch 1 are kept to eyeball
            if batch in ref:
                fig["agreement_leading"] = [_leading_match(a, b) for a, b in zip(ids, ref[batch])]
            if batch == "1":
                fig["first_ids"] = ids[0][:16]
        weight_bytes = engine_weight_bytes(model, engine)
        res["weight_bytes_per_step"] = weight_bytes
        res["decode_bound_tok_s"] = bandwidth / weight_bytes
        if "1" in res["batches"]:
            res["fraction_of_bound"] = res["batches"]["1"]["decode_tok_s"] / res["decode_bound_tok_s"]
    ratios: dict = {}
    for mine, peers in (("tinybert-int8", ["ctranslate2-int8"]),
                        ("tinybert-fp32", [e for e in results if e.endswith("fp32") and not e.startswith("tinybert")])):
        if "batches" not in results.get(mine, {}):
            continue
        for batch, fig in results[mine]["batches"].items():
            live = [p for p in peers if batch in results.get(p, {}).get("batches", {})]
            if not live:
                continue
            figs = {p: results[p]["batches"][batch] for p in live}
            best_ttft = min(live, key=lambda p: figs[p]["ttft_ms"])
            best_decode = max(live, key=lambda p: figs[p]["decode_tok_s"])
            best_total = max(live, key=lambda p: figs[p]["total_tok_s"])
            # >1 means tinybert is faster (TTFT: the peer's time over tinybert's)
            ratios.setdefault(mine, {})[batch] = {
                "ttft": {"peer": best_ttft, "ratio": figs[best_ttft]["ttft_ms"] / fig["ttft_ms"]},
                "decode": {"peer": best_decode, "ratio": fig["decode_tok_s"] / figs[best_decode]["decode_tok_s"]},
                "total": {"peer": best_total, "ratio": fig["total_tok_s"] / figs[best_total]["total_tok_s"]}}
    return ratios


def print_model(model: str, info: dict, new_tokens: int) -> None:
    results, batches = info["engines"], info["batches"]
    label, note = TORCH_INT8_NOTE[model]
    print(f"\n{model}: {info['parameters'] / 1e6:.1f}M parameters; greedy, {PROMPT_LEN}-token prompts + "
          f"{new_tokens} new tokens; {info['threads']} threads; medians (warm-up excluded)")
    head = f"{'engine':18}"
    for b in batches:
        head += f"{f'b{b} TTFT ms':>13}{f'b{b} dec tok/s':>15}{f'b{b} total tok/s':>17}"
    head += f"{'% bound':>9}{'load s':>8}{'MB':>8}{'RSS MB':>8}{'agree b1':>10}"
    print(head)
    for engine, res in results.items():
        name = label if engine == "pytorch-int8" else engine
        if "error" in res:
            print(f"{name:18} error: {res['error']}")
            continue
        row = f"{name:18}"
        for b in batches:
            fig = res["batches"][str(b)]
            row += f"{fig['ttft_ms']:>13.1f}{fig['decode_tok_s']:>15.1f}{fig['total_tok_s']:>17.1f}"
        agree = res["batches"].get("1", {}).get("agreement_leading")
        agree_text = f"{agree[0]}/{new_tokens}" if agree else "-"
        row += (f"{100 * res.get('fraction_of_bound', float('nan')):>8.0f}%{res['load_s']:>8.2f}"
                f"{res['file_mb']:>8.1f}{res['peak_rss_mb']:>8.0f}{agree_text:>10}")
        print(row)
    print("dec tok/s = per sequence, (new tokens - 1) / (total - TTFT); total tok/s = batch x new tokens / total; "
          f"agree b1 = leading tokens identical to {REFERENCE}'s; MB = file (PyTorch: the fp32 HF folder)")
    print(note)
    for mine, per_batch in info["ratios"].items():
        parts = []
        for b, r in per_batch.items():
            parts.append(f"b{b}: TTFT {r['ttft']['ratio']:.2f}x ({r['ttft']['peer']}), decode "
                         f"{r['decode']['ratio']:.2f}x ({r['decode']['peer']}), total {r['total']['ratio']:.2f}x "
                         f"({r['total']['peer']})")
        print(f"  {mine} vs {'ctranslate2-int8' if mine.endswith('int8') else 'best fp32 peer'} (>1: tinybert "
              "faster): " + "; ".join(parts))
    bw = info["bandwidth_gb_s"]
    params = info["weight_params"]
    total = params["blocks"] + params["lm_head"]
    kv = info["kv_bytes_per_step"]
    print(f"decode bound (batch 1): read bandwidth {bw:.1f} GB/s; weights per step {total / 1e6:.1f}M params "
          f"(blocks {params['blocks'] / 1e6:.1f}M + LM head {params['lm_head'] / 1e6:.1f}M) -> int8 "
          f"{total / 1e6:.0f} MB = {bw * 1e9 / total:.0f} tok/s, fp32 {4 * total / 1e6:.0f} MB = "
          f"{bw * 1e9 / (4 * total):.0f} tok/s"
          + (f", GPT-2 dynint8 {engine_weight_bytes(model, 'pytorch-int8') / 1e6:.0f} MB" if model == "gpt2" else ""))
    print(f"  plus the fp32 KV cache, {kv / 1e6:.1f} MB per step on average over the decode (not in the bound)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"gpt2 only (unless --models), batch 1 only, {QUICK_NEW_TOKENS} new tokens, fewer "
                             "repeats: a smoke run, not figures to quote")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated: gpt2,llama (default both; --quick: gpt2)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", default=None,
                        help="JSON report (default bench/results/generate.json, --quick: generate-quick.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        result = bandwidth_worker(spec) if spec["engine"] == "bandwidth" else worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return
    engines = [e for e in args.engines.split(",") if e]
    models = [m for m in (args.models or ("gpt2" if args.quick else ",".join(MODELS))).split(",") if m]
    for names, known in ((engines, ENGINES), (models, MODELS)):
        if set(names) - set(known):
            parser.error(f"unknown {sorted(set(names) - set(known))}; choose from {known}")
    batches = [1] if args.quick else list(BATCHES)
    new_tokens = QUICK_NEW_TOKENS if args.quick else NEW_TOKENS
    out = Path(args.out or REPO / "bench" / "results" / ("generate-quick.json" if args.quick else "generate.json"))
    versions = _versions()
    import tokenizers

    import tinybert

    versions.update(tinybert=tinybert.__version__, tokenizers=tokenizers.__version__)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "quick": args.quick, "prompt_len": PROMPT_LEN, "new_tokens": new_tokens,
              "batches": batches, "repeats": dict(zip(("ttft", "total"), REPEATS["quick" if args.quick else "full"])),
              "seed": SEED, "versions": versions, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"measuring memory read bandwidth ({BANDWIDTH_MB} MB, {args.threads} threads) ...", flush=True)
        bw = _subprocess({"engine": "bandwidth", "threads": args.threads}, Path(tmp), "bandwidth")
        if "error" in bw:
            sys.exit(f"bandwidth measurement failed: {bw['error']}")
        report["bandwidth"] = bw
        bandwidth = max(bw["numba_gb_s"], bw["numpy_gb_s"]) * 1e9
        print(f"   numba prange sum {bw['numba_gb_s']:.1f} GB/s, numpy sum {bw['numpy_gb_s']:.1f} GB/s", flush=True)
        for model in models:
            print(f"\n== {model}: preparing (cached after the first run)", flush=True)
            paths = {engine: prepare(model, engine) for engine in engines}
            model_prompts = prompts(model)
            results: dict = {}
            for engine in engines:
                print(f"   {engine} ...", end=" ", flush=True)
                t = time.perf_counter()
                spec = {"engine": engine, "path": str(paths[engine]), "threads": args.threads, "quick": args.quick,
                        "new_tokens": new_tokens, "batches": batches, "prompts": model_prompts}
                results[engine] = _subprocess(spec, Path(tmp), f"{model}-{engine}")
                if "error" not in results[engine]:
                    results[engine]["file_mb"] = _file_size(paths[engine]) / 1e6
                print(f"{time.perf_counter() - t:.0f} s", flush=True)
            info = {"parameters": _safetensors_parameters(hf_folder(model)), "weight_params": weight_params(model),
                    "kv_bytes_per_step": kv_bytes_per_step(model, new_tokens), "bandwidth_gb_s": bandwidth / 1e9,
                    "threads": args.threads, "batches": batches, "engines": results,
                    "pytorch_int8": dict(zip(("label", "note"), TORCH_INT8_NOTE[model]))}
            info["ratios"] = analyse(model, results, bandwidth)
            report["models"][model] = info
            print_model(model, info, new_tokens)
    print(f"\nbandwidth: {bandwidth / 1e9:.1f} GB/s read (best of numba prange sum with {args.threads} threads "
          f"and numpy sum, {BANDWIDTH_MB} MB float32)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
