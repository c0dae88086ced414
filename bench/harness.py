"""What every benchmark in bench/ shares: engines in their own processes, interleaved rounds, medians,
peak RSS, the machine and the versions, the read-bandwidth bound, ratio tables and JSON results.

    python -m bench.harness              # prints machine(), versions() and the read-bandwidth bound here

The rules it enforces (DEVELOPERS.md, "Measuring"; ../shared/README.md): one engine per process, never two
engines in one process (their thread pools disturb each other); every engine gets the same inputs and the
same threads; rounds run engine by engine, alternating the order between rounds, and each figure is the
median over the rounds (the per-round figures are kept in the JSON); every figure names the CPU.

A bench uses it like this:

    parser = harness.parser(__doc__)                   # --threads --rounds --smoke --out (+ the hidden --worker)
    args = parser.parse_args(argv)
    if args.worker:
        return harness.serve(args.worker, worker)      # worker(spec: dict) -> dict, in the engine's own process
    session = harness.Session("encoder", args)         # machine, versions, command; bandwidth=True measures it
    results = session.rounds(engines, specs)            # {engine: medians over rounds, + "rounds"}
    session.write({"models": ...})                     # bench/results/encoder-<date>-<cpu>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    """../shared beside the repo (TINYBERT_SHARED overrides; a git worktree nested deeper finds the nearest one)."""
    if os.environ.get("TINYBERT_SHARED"):
        return Path(os.environ["TINYBERT_SHARED"])
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


SHARED = _shared()
SENTENCES = SHARED / "data" / "sentences.txt"
CACHE = Path(os.environ.get("TINYBERT_BENCH_CACHE", Path.home() / ".cache" / "tinybert-bench"))
RESULTS = REPO / "bench" / "results"
SCRATCH = RESULTS / "scratch"   # --smoke results: git-ignored, never figures to quote
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16")
PACKAGES = ("numpy", "numba", "llvmlite", "tokenizers", "torch", "transformers", "onnxruntime", "onnx",
            "ctranslate2", "ray", "pyarrow")
BANDWIDTH_BYTES = 1 << 30


# ----------------------------------------------------------------------------- inputs and files

def sentences() -> list[str]:
    """The 1,000 shared sentences (../shared/data/sentences.txt), stripped, empty lines dropped."""
    if not SENTENCES.is_file():
        sys.exit(f"{SENTENCES} is missing (the benchmarks read ../shared/data/sentences.txt)")
    return [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]


def file_size(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def built_once(target: Path, build: Callable[[Path], None], done: Callable[[Path], bool] | None = None) -> Path:
    """``target`` built once by ``build(partial)`` into ``<target>.partial`` and renamed into place, so that
    only a complete file or folder ever sits at ``target``. ``done(target)`` says whether it is there
    already (default: it exists)."""
    target = Path(target)
    if (done or Path.exists)(target):
        return target
    partial = target.with_name(target.stem + ".partial" + target.suffix)
    if partial.is_dir():
        shutil.rmtree(partial)
    else:
        partial.unlink(missing_ok=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    build(partial)
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


# ----------------------------------------------------------------------------- engine preparation (parent)

def kind_precision(engine: str) -> tuple[str, str]:
    """"tinybert-int8" -> ("tinybert", "int8"); "tinybert/avx512vnni-int8" -> ("tinybert/avx512vnni", "int8")."""
    kind, precision = engine.rsplit("-", 1)
    return kind, precision


def is_tinybert(engine: str) -> bool:
    return engine == "tinybert" or engine.startswith(("tinybert-", "tinybert/"))


def current_tinybert_file(path: Path) -> bool:
    """True when ``path`` exists and is in this tinybert's format version (older caches are rebuilt)."""
    from tinybert.errors import TinyBertError
    from tinybert.loader import read_metadata

    try:
        read_metadata(path)
        return True
    except (TinyBertError, OSError):
        return False


def tinybert_file(folder: Path, path: Path, precision: str, reconvert: bool = False, **convert_args) -> Path:
    """tinybert's one-file model of the HF ``folder`` at ``path`` (converted once; again with ``reconvert``)."""
    if reconvert or not current_tinybert_file(path):
        from tinybert_convert import convert

        path.parent.mkdir(parents=True, exist_ok=True)
        convert(folder, path, dtype=precision, force=True, **convert_args)   # a stale file or --reconvert
    return path


def ct2_vocabulary(path: Path) -> list[str]:
    """The (target) vocabulary of a converted CTranslate2 model."""
    for name in ("vocabulary.json", "shared_vocabulary.json", "target_vocabulary.json"):
        if (path / name).is_file():
            return json.loads((path / name).read_text(encoding="utf-8"))
    raise RuntimeError(f"{path}: no CTranslate2 vocabulary file")


def check_ct2_vocabulary(path: Path, folder: Path, may_drop_last: bool = False) -> None:
    """CTranslate2 maps token strings to ids through its own vocabulary: every vocabulary file of the model at
    ``path`` must be the HF tokenizer's, id for id (``may_drop_last``: without the final token, as for
    Marian's <pad>, which CTranslate2 drops since its decoder starts from a zero embedding)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    expected = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    for name in ("vocabulary.json", "shared_vocabulary.json", "source_vocabulary.json", "target_vocabulary.json"):
        if not (path / name).is_file():
            continue
        vocab = json.loads((path / name).read_text(encoding="utf-8"))
        short = len(expected) - len(vocab)
        if vocab != expected[:len(vocab)] or short not in ((0, 1) if may_drop_last else (0,)) \
                or len(set(vocab)) != len(vocab):
            raise RuntimeError(f"{path / name}: CTranslate2 vocabulary ({len(vocab)} tokens) is not the "
                               f"tokenizer's ({len(expected)} tokens) id for id")


def ct2_model(folder: Path, path: Path, precision: str) -> Path:
    """A CTranslate2 conversion of the HF ``folder`` at ``path`` (converted once)."""
    def build(partial: Path) -> None:
        import ctranslate2

        ctranslate2.converters.TransformersConverter(str(folder)).convert(
            str(partial), quantization="int8" if precision == "int8" else "float32", force=True)
    return built_once(path, build, lambda p: (p / "model.bin").is_file())


def export_onnx(module, sample: tuple, target: Path, input_names: list[str], output_names: list[str],
                dynamic_axes: dict) -> None:
    """torch.onnx.export of a wrapper ``module`` (TorchScript exporter, opset 17) to ``target``, atomically."""
    import torch

    def build(partial: Path) -> None:
        torch.onnx.export(module, sample, str(partial), dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=17)
    built_once(target, build)


def onnx_model(out: Path, precision: str, export: Callable[[Path], None]) -> Path:
    """``out/model-fp32.onnx`` (``export(path)`` writes it once) or its dynamic int8 quantization."""
    fp32 = out / "model-fp32.onnx"
    if not fp32.is_file():
        export(fp32)
    if precision == "fp32":
        return fp32

    def build(partial: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
    return built_once(out / "model-int8.onnx", build)


def engine_files(folder: Path, out: Path, engine: str, check_ct2: Callable[[Path, Path], None] | None = None,
                 reconvert: bool = False) -> Path:
    """What a tinybert / CTranslate2 / PyTorch ``engine`` loads for the HF ``folder``: tinybert's file or the
    CTranslate2 folder, converted once into ``out`` (beside the HF folder, not in it: the converters and
    from_pretrained read every weight file they find there; ``check_ct2(path, folder)`` checks the CTranslate2
    conversion), or ``folder`` itself for PyTorch (int8 is quantized at load time). ``reconvert``: convert
    tinybert's file again even when one of the current format version is cached."""
    kind, precision = kind_precision(engine)
    if is_tinybert(kind):
        return tinybert_file(folder, out / f"tinybert-{precision}.safetensors", precision, reconvert)
    if kind == "ctranslate2":
        path = ct2_model(folder, out / f"ct2-{precision}", precision)
        if check_ct2:
            check_ct2(path, folder)
        return path
    if kind in ("pytorch", "torch"):
        return folder
    raise ValueError(f"unknown engine {engine!r}")


# ----------------------------------------------------------------------------- engines (worker side)

def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def torch_model(load: Callable[[], object], precision: str, threads: int):
    """``load()`` with torch on ``threads`` threads, in eval mode; int8: ``quantize_dynamic({nn.Linear}, qint8)``."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    model = load().eval()
    if precision == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def engine_inputs(engine: str, rows: dict, batch: int) -> object:
    """The first ``batch`` rows of ``rows`` ({"ids", "tokens"}) as ``engine`` takes them: CTranslate2 token
    strings, a torch tensor of ids for PyTorch, id lists otherwise."""
    kind = kind_precision(engine)[0]
    if kind == "ctranslate2":
        return rows["tokens"][:batch]
    if kind in ("pytorch", "torch"):
        import torch

        return torch.tensor(rows["ids"][:batch], dtype=torch.long)
    return rows["ids"][:batch]


def median_time(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0, max_calls: int = 200) -> float:
    """Median seconds of ``fn()`` over at least ``repeats`` calls and ``min_seconds`` (at most ``max_calls``),
    after one warm-up call that is not counted."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= max_calls:
            break
    return statistics.median(times)


def time_generation(call: Callable[[int], object], new_tokens: int, ttft_repeats: int, total_repeats: int) -> dict:
    """A generation call timed twice, medians after a warm-up each: ``call(1)`` (one new token: prefill and
    the first token, the time to first token) and ``call(new_tokens)``. Per sequence, decode speed is the
    tokens after the first over the time after the first. The outputs of the last calls are in "first" and
    "full" (for the caller to check and drop)."""
    last: dict = {}

    def first() -> None:
        last["first"] = call(1)

    def full() -> None:
        last["full"] = call(new_tokens)
    ttft = median_time(first, repeats=ttft_repeats)
    total = median_time(full, repeats=total_repeats)
    return {"ttft_ms": ttft * 1e3, "total_s": total,
            "decode_tok_s": (new_tokens - 1) / (total - ttft) if total > ttft else float("nan"),
            "first": last["first"], "full": last["full"]}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB of 10**6 bytes as every file size here (both are KiB, 1024
    bytes, in the kernel's figures). ru_maxrss would carry over the parent's peak across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return kib_to_mb(int(line.split()[1]))
    except OSError:
        pass
    import resource

    return kib_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def kib_to_mb(kib: float) -> float:
    """The kernel's KiB as MB (10**6 bytes): a ratio to a file size in MB must not mix the two (4.9 %)."""
    return kib * 1024 / 1e6


def leading_match(a: Iterable[int], b: Iterable[int]) -> int:
    """How many leading tokens two sequences share."""
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def serve(spec_path: str, worker: Callable[[dict], dict]) -> None:
    """The engine process: reads the spec, runs ``worker(spec)``, writes its result (with ``peak_rss_mb``
    unless the worker measured it itself) where the spec says."""
    spec = json.loads(Path(spec_path).read_text())
    result = worker(spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    Path(spec["result"]).write_text(json.dumps(result))


def thread_env(threads: int, extra: dict | None = None) -> dict:
    """The environment of an engine process: every thread pool we know of sized to ``threads``."""
    n = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n, NUMBA_NUM_THREADS=n,
                **(extra or {}))


def run_worker(module: str, spec: dict, scratch: Path, name: str, env: dict | None = None) -> dict:
    """``python -m <module> --worker <spec.json>`` in a fresh process; its result, or {"error": ...}."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    spec = dict(spec, result=str(scratch / f"{safe}.result.json"), scratch=str(scratch), name=safe)
    spec_path = scratch / f"{safe}.spec.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", module, "--worker", str(spec_path)], cwd=REPO,
                          env=env or thread_env(spec.get("threads", 2)), capture_output=True, text=True)
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        lines = proc.stderr.strip().splitlines()
        return {"error": " | ".join(lines[-3:]) if lines else f"exit code {proc.returncode}"}
    return json.loads(Path(spec["result"]).read_text())


# ----------------------------------------------------------------------------- rounds and medians

def _numeric(value):
    """The numbers of a result (nested dicts of int / float), without lists, strings or flags."""
    if isinstance(value, dict):
        out = {k: _numeric(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def combine(runs: list[dict], maxima: tuple[str, ...] = ("peak_rss_mb",)) -> dict:
    """One engine's result over its rounds: every number is the median over the rounds (the keys in
    ``maxima``: the largest), everything else comes from the first round; "rounds" keeps each round's
    numbers. A round that failed makes the whole result that round's error."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return dict(failed[0], rounds_completed=len(runs) - len(failed))

    def merge(values: list, key: str | None):
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v.get(k) for v in values], k) if all(isinstance(v, dict) and k in v for v in values)
                    else first[k] for k in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
                isinstance(v, (int, float)) for v in values):
            if any(isinstance(v, float) and v != v for v in values):
                return float("nan")
            return max(values) if key in maxima else float(statistics.median(values))
        return first
    out = merge(runs, None)
    out["rounds"] = [_numeric(run) for run in runs]
    return out


def interleave(engines: list[str], rounds: int, run_one: Callable[[str, int], dict]) -> dict[str, list[dict]]:
    """``run_one(engine, round)`` for every engine in every round, engine by engine, the order alternating
    between rounds (a drifting machine then drifts under all engines); an engine that failed is not run again."""
    out: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(rounds):
        for engine in engines if r % 2 == 0 else engines[::-1]:
            if out[engine] and "error" in out[engine][-1]:
                continue
            label = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
            print(f"   {engine}{label} ...", end=" ", flush=True)
            t = time.perf_counter()
            result = run_one(engine, r)
            out[engine].append(result)
            print(f"{time.perf_counter() - t:.0f} s" + (f" error: {result['error']}" if "error" in result else ""),
                  flush=True)
    return out


# ----------------------------------------------------------------------------- ratios and tables

def best_peer(values: dict[str, float | None], engine: str, higher: bool = True,
              exclude: Iterable[str] = ()) -> tuple[str, float] | None:
    """The best peer of ``engine``'s precision in ``values`` ({engine: figure}) and ``engine``'s ratio to it,
    > 1 when ``engine`` is better (``higher``: a speed, ratio = mine / peer's; else a time, peer's / mine).
    Peers are the non-tinybert engines with the same precision suffix, minus ``exclude``."""
    precision = kind_precision(engine)[1]
    mine = values.get(engine)
    peers = {e: v for e, v in values.items() if not is_tinybert(e) and e not in exclude and v is not None
             and v == v and kind_precision(e)[1] == precision}
    if mine is None or not peers:
        return None
    best = (max if higher else min)(peers, key=peers.get)
    return best, (mine / peers[best] if higher else peers[best] / mine)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, widths from the content."""
    cols = list(zip(*([header] + rows))) if rows else [[h] for h in header]
    widths = [max(len(str(c)) for c in col) for col in cols]
    lines = []
    for row in [header] + rows:
        cells = [f"{str(row[0]):<{widths[0]}}"] + [f"{str(c):>{w}}" for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)


# ----------------------------------------------------------------------------- machine, versions, bandwidth

def _cpuinfo() -> dict:
    info = {"model": None, "flags": set()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and info["model"] is None:
                info["model"] = value.strip()
            elif key == "flags" and not info["flags"]:
                info["flags"] = set(value.split())
    except OSError:
        pass
    return info


def machine() -> dict:
    """The CPU (model name from /proc/cpuinfo), its cores, the ISA flags that matter to our kernels, and the
    int8 path tinybert picks here (when it can tell)."""
    import platform

    info = _cpuinfo()
    out = {"cpu": info["model"] or platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count(),
           "isa": {flag: flag in info["flags"] for flag in ISA_FLAGS},
           "platform": platform.platform(), "memory_gib": _memory_gib()}
    try:
        import llvmlite.binding as llb

        out["llvm_cpu"] = llb.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - a description, never a reason to fail
        pass
    out["tinybert_int8"] = _tinybert_int8_path()
    out["slug"] = cpu_slug(out["cpu"])
    return out


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _tinybert_int8_path() -> str | None:
    """tinybert's int8 kernel path on this host (None when this tinybert does not tell)."""
    try:
        from tinybert.kernels import gemm_vnni as g
    except Exception:  # noqa: BLE001 - the kernels move between modules; the flags above still name the ISA
        return None
    amx, vnni = getattr(g, "AMX_AVAILABLE", None), getattr(g, "VNNI_AVAILABLE", None)
    if amx is None or vnni is None:
        return None
    path = "AMX + AVX-512 VNNI" if amx else "AVX-512 VNNI" if vnni else "AVX2 / generic vectors"
    if vnni and (getattr(g, "VNNI_EMULATED", False) or amx and getattr(g, "AMX_EMULATED", False)):
        path += " (emulated: TINYBERT_INT8_EMULATE=1, not a speed figure)"
    return path


def host_has_amx() -> bool:
    return "amx_int8" in _cpuinfo()["flags"]


def cpu_slug(name: str) -> str:
    """"AMD EPYC 9R14 96-Core Processor" -> "amd-epyc-9r14"; used in result file names."""
    words = re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*$|\d+-core|processor", " ", name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-")
    return slug or "unknown-cpu"


def machine_line(m: dict) -> str:
    isa = ", ".join(f for f, on in m["isa"].items() if on) or "none of " + "/".join(ISA_FLAGS)
    path = f"; tinybert int8: {m['tinybert_int8']}" if m.get("tinybert_int8") else ""
    return f"{m['cpu']}, {m['usable_cpus']} of {m['cpus']} CPUs, {m.get('memory_gib')} GiB; ISA: {isa}{path}"


def git_commit() -> str | None:
    """The tinybert commit benchmarked, with "+dirty" when the tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict:
    """Python, tinybert (version and git commit) and every package a bench may load, None where absent."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("tinybert",) + PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["tinybert_commit"] = git_commit()
    return out


def _threaded_sum(parts: list[np.ndarray]) -> float:
    out = [0.0] * len(parts)

    def work(i: int) -> None:
        out[i] = float(np.add.reduce(parts[i]))  # numpy releases the GIL inside the reduction
    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out)


BANDWIDTH = "read bandwidth"   # the pseudo-engine of rounds() that re-measures the bound


def measure_bandwidth(threads: int, nbytes: int = BANDWIDTH_BYTES, repeats: int = 7) -> dict:
    """Memory read bandwidth, GB/s (1e9 bytes), by ../shared/tools/bandwidth.py's method: a sum over a 1 GiB
    float32 array; median of ``repeats`` passes after one untimed pass, for numpy on one thread, numpy on
    ``threads`` Python threads (one part each: numpy releases the GIL) and a Numba prange sum. The bound
    (``bound_gb_s``) is the best of the three; on Zen 4 it is the threaded numpy sum (~34 GB/s)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, fastmath=True, cache=False)
    def psum(a: np.ndarray, parts: int) -> float:
        acc = np.zeros(parts, dtype=np.float64)
        n = a.size
        for p in prange(parts):
            s = np.float32(0.0)
            for i in range(n * p // parts, n * (p + 1) // parts):
                s += a[i]
            acc[p] = s
        return acc.sum()

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    a = np.ones(nbytes // 4, dtype=np.float32)  # touches every page
    parts = np.array_split(a, threads)
    res = {"bytes": a.nbytes, "threads": threads, "repeats": repeats,
           "numpy_1thread_gb_s": a.nbytes / median_time(lambda: np.add.reduce(a), repeats) / 1e9,
           f"numpy_{threads}pythreads_gb_s": a.nbytes / median_time(lambda: _threaded_sum(parts), repeats) / 1e9,
           f"numba_prange_{threads}threads_gb_s": a.nbytes / median_time(lambda: psum(a, 16), repeats) / 1e9}
    res["bound_gb_s"] = max(v for k, v in res.items() if k.endswith("gb_s"))
    res["method"] = "max of the three readers over a 1 GiB float32 sum (../shared/tools/bandwidth.py's method)"
    return res


def bandwidth_in_process(threads: int, scratch: Path) -> dict:
    """measure_bandwidth in a fresh process of its own (no engine's threads or arrays around it)."""
    return run_worker("bench.harness", {"threads": threads, "what": "bandwidth"}, scratch, "bandwidth",
                      env=thread_env(threads))


# ----------------------------------------------------------------------------- the session (parent)

def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every bench has: --threads, --rounds, --smoke, --out."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1,
                   help="run every engine this many times, alternating the engine order between rounds, and report "
                        "each figure's median over the rounds (per-round figures are in the JSON)")
    p.add_argument("--smoke", action="store_true",
                   help="the smallest run that goes through every code path once (implies --quick, fewest "
                        "repeats); results go to bench/results/scratch/ (git-ignored): never figures to quote")
    p.add_argument("--out", default=None,
                   help="JSON results (default bench/results/<bench>[-quick]-<date>-<cpu>.json; "
                        "--smoke: bench/results/scratch/)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def results_path(bench: str, cpu: str, quick: bool = False, smoke: bool = False, date: str | None = None) -> Path:
    """bench/results/<bench>[-quick]-<YYYY-MM-DD>-<cpu-slug>.json, with -2, -3, ... when that name is taken;
    smoke runs go to bench/results/scratch/."""
    folder = SCRATCH if smoke else RESULTS
    stem = f"{bench}{'-quick' if quick and not smoke else ''}-{date or time.strftime('%Y-%m-%d')}-{cpu_slug(cpu)}"
    path, n = folder / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.json"
    return path


class Session:
    """One benchmark run in the parent process: the machine, versions and command line, a scratch folder for
    the engine processes, optionally the read-bandwidth bound, and the JSON results at the end."""

    def __init__(self, bench: str, args: argparse.Namespace, bandwidth: bool = False) -> None:
        if args.rounds < 1:
            sys.exit("--rounds must be at least 1")
        if getattr(args, "smoke", False) and hasattr(args, "quick"):
            args.quick = True
        self.bench, self.args, self.threads = bench, args, args.threads
        self.module = f"bench.{bench}"
        self._tmp = tempfile.TemporaryDirectory(prefix=f"tinybert-bench-{bench}-")
        self.scratch = Path(self._tmp.name)
        self.started = time.time()
        self.machine = machine()
        self.report: dict = {
            "bench": bench, "command": shlex.join([Path(sys.executable).name, "-m", self.module] + sys.argv[1:]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": self.machine, "versions": versions(), "threads": args.threads, "rounds": args.rounds,
            "smoke": bool(getattr(args, "smoke", False)), "quick": bool(getattr(args, "quick", False)),
            "options": {k: v for k, v in vars(args).items() if k != "worker"}}
        print(f"machine: {machine_line(self.machine)}", flush=True)
        if bandwidth:
            print(f"read bandwidth: 1 GiB float32 sum, {args.threads} threads ...", end=" ", flush=True)
            bw = bandwidth_in_process(args.threads, self.scratch)
            if "error" in bw:
                sys.exit(f"bandwidth measurement failed: {bw['error']}")
            self.report["bandwidth"] = bw
            print(f"{bw['bound_gb_s']:.1f} GB/s (" + ", ".join(
                f"{k[:-5]} {v:.1f}" for k, v in bw.items() if k.endswith("_gb_s") and k != "bound_gb_s") + ")",
                flush=True)

    @property
    def bandwidth_gb_s(self) -> float | None:
        return self.report.get("bandwidth", {}).get("bound_gb_s")

    def run(self, engine: str, spec: dict, name: str, env: dict | None = None) -> dict:
        """One engine process on ``spec`` (threads and quick/smoke are added)."""
        # A spec may name its engine itself (a key such as "model:engine" when models are interleaved).
        spec = dict({"engine": engine}, **spec, threads=self.threads, quick=self.report["quick"],
                    smoke=self.report["smoke"])
        return run_worker(self.module, spec, self.scratch, name, thread_env(self.threads, env))

    def rounds(self, engines: list[str], specs: dict[str, dict], tag: str = "",
               envs: dict[str, dict] | None = None) -> dict[str, dict]:
        """Every engine in its own process on ``specs[engine]``, ``--rounds`` times, interleaved; each engine's
        combined result (medians over the rounds, see combine). A spec {"error": ...} is not run: it is the result
        (e.g. preparing that engine failed). ``envs[engine]``: extra environment for that engine's process."""
        def one(engine: str, r: int) -> dict:
            if engine == BANDWIDTH:
                return bandwidth_in_process(self.threads, self.scratch)
            if "error" in specs[engine]:
                return specs[engine]
            return self.run(engine, specs[engine], f"{tag}-{engine}-r{r}", (envs or {}).get(engine))
        # A session that states a bound measures it again in every round, between the engines: this VM's
        # bandwidth drifts by a third within minutes, so one reading at the start could flatter or wrong them.
        measure = "bandwidth" in self.report
        runs = interleave(engines + [BANDWIDTH] * measure, self.args.rounds, one)
        if measure:
            self._add_bandwidth([bw["bound_gb_s"] for bw in runs.pop(BANDWIDTH) if "error" not in bw])
        return {engine: combine(rs) for engine, rs in runs.items()}

    def _add_bandwidth(self, readings: list[float]) -> None:
        bw = self.report["bandwidth"]
        bw.setdefault("readings_gb_s", [bw["bound_gb_s"]]).extend(readings)
        bw["bound_gb_s"] = statistics.median(bw["readings_gb_s"])
        bw["method"] = (f"median of {len(bw['readings_gb_s'])} readings (one at the start, one per round between "
                        "the engines), each the max of three readers over a 1 GiB float32 sum "
                        "(../shared/tools/bandwidth.py's method)")
        print("   read bandwidth readings: " + ", ".join(f"{v:.1f}" for v in bw["readings_gb_s"])
              + f" GB/s; median {bw['bound_gb_s']:.1f}", flush=True)

    def write(self, body: dict) -> Path:
        """The JSON results: the session's header (machine, versions, command, dates) and ``body``."""
        self.report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.report["wall_s"] = round(time.time() - self.started, 1)
        self.report["options"] = {k: v for k, v in vars(self.args).items() if k != "worker"}  # as resolved
        self.report.update(body)
        out = Path(self.args.out) if self.args.out else results_path(
            self.bench, self.machine["cpu"], self.report["quick"], self.report["smoke"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_finite(self.report), indent=1, default=_json_default, allow_nan=False) + "\n")
        print("\nversions: " + ", ".join(f"{k} {v}" for k, v in self.report["versions"].items() if v))
        print(f"wrote {out}")
        self._tmp.cleanup()
        return out


def _finite(value):
    """NaN and infinities become null, so that the results are standard JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _worker(spec: dict) -> dict:
    if spec.get("what") == "bandwidth":
        return measure_bandwidth(spec["threads"])
    raise SystemExit(f"unknown harness worker {spec.get('what')!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bandwidth", action="store_true", help="only the machine and the versions")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        serve(args.worker, _worker)
        return
    m = machine()
    print(json.dumps({"machine": m, "versions": versions()}, indent=1))
    if not args.no_bandwidth:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(bandwidth_in_process(args.threads, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
