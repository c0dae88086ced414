"""Stress runs on the tiny seed models: threads sharing models, memory over long runs, and C API callbacks
that call back into the library.

    python -m fuzz.stress threads [--threads 8] [--calls 200]
    python -m fuzz.stress longrun [--encode 10000] [--generate 1000]
    python -m fuzz.stress capi-reentrant [--iterations 10000] [--seed 0] [--library DIR] [--timeout 1800]

``threads``: one Encoder, Classifier and Generator shared by N threads, each making M mixed calls (encode,
classify, generate greedy and seeded sampling); every result must equal the same call made sequentially
beforehand; a deadlock shows as the run never ending (the tests put a timeout on it). ``longrun``: RSS
(VmRSS) after a warm-up and after the calls; growth must stay within 5 %. Both print a JSON line with
their figures and exit 1 when the property fails. ``capi-reentrant``: builds the C library (``tinybert
build-capi`` into a temporary folder, or takes the one in ``--library``) and compiles fuzz/capi_reentrant.c
against it, then runs it on the seed models (two decoders, an encoder, a classifier) from a plain environment:
tb_generate with an on_piece callback that, by seeded random choices, calls tb_generate / tb_encode /
tb_classify / tb_model_free on the same model or on another, nested up to 3 calls deep. Every status must be
the promised one (the same model: TB_ERR_BUSY; another model: success; a freed handle: TB_ERR_INVALID_ARGUMENT
at once and after the call returns; a call the model's kind does not take: TB_ERR_WRONG_MODEL_KIND), and the
program must end within ``--timeout`` seconds (a deadlock would hang it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fuzz.seeds import write_seeds
from tinybert import Classifier, Encoder, Generator

TEXTS = ["the cat sat on the mat", "a big red dog ran", "hello world", "café 你好 🙂", "the small blue cat is big"]


def _models() -> tuple[Encoder, Classifier, Generator]:
    files = write_seeds(tempfile.mkdtemp(prefix="tinybert-stress-"))
    return (Encoder(files["encoder-int8"]), Classifier(files["classifier-int8"]), Generator(files["decoder-int8"]))


def _call(models, i: int):
    enc, clf, gen = models
    kind, text = i % 4, TEXTS[i % len(TEXTS)]
    if kind == 0:
        return enc.encode([text, TEXTS[(i + 1) % len(TEXTS)]]).tobytes()
    if kind == 1:
        return json.dumps(clf.classify(text, top_k=None))
    if kind == 2:
        return gen.generate(text, max_new_tokens=6)
    return gen.generate(text, max_new_tokens=6, temperature=0.9, top_k=5, seed=i)


def threads(n_threads: int, calls: int) -> dict:
    models = _models()
    expected = {i: _call(models, i) for i in range(n_threads * calls)}
    mismatches, failures = [], []

    def worker(t: int) -> None:
        for j in range(calls):
            i = t * calls + j
            try:
                if _call(models, i) != expected[i]:
                    mismatches.append(i)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return {"threads": n_threads, "calls": n_threads * calls, "mismatches": len(mismatches),
            "failures": failures[:5], "seconds": round(time.perf_counter() - start, 2),
            "ok": not mismatches and not failures}


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def longrun(encode_calls: int, generate_calls: int) -> dict:
    enc, _, gen = _models()
    for i in range(200):                      # warm-up: kernels, caches, allocator pools
        enc.encode(TEXTS[i % 5])
        if i % 4 == 0:
            gen.generate(TEXTS[i % 5], max_new_tokens=8)
    before = _rss_kb()
    start = time.perf_counter()
    for i in range(encode_calls):
        enc.encode([TEXTS[i % 5], TEXTS[(i + 2) % 5]])
    for i in range(generate_calls):
        gen.generate(TEXTS[i % 5], max_new_tokens=8, temperature=0.8 if i % 2 else 0.0, seed=i)
    after = _rss_kb()
    growth = (after - before) / before
    return {"encode_calls": encode_calls, "generate_calls": generate_calls, "rss_before_kb": before,
            "rss_after_kb": after, "growth": round(growth, 4), "seconds": round(time.perf_counter() - start, 1),
            "ok": growth <= 0.05}


def _plain_env() -> dict[str, str]:
    """What a user's shell has: no virtual environment, no PYTHONPATH (the library records its own paths)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    for name in ("NUMBA_CACHE_DIR", "RUST_BACKTRACE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def capi_reentrant(iterations: int, seed: int, library: str | None, timeout: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tinybert-capi-reentrant-"))
    try:
        return _capi_reentrant(work, iterations, seed, library, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _capi_reentrant(work: Path, iterations: int, seed: int, library: str | None, timeout: float) -> dict:
    if library is None:
        library = str(work / "lib")
        subprocess.run([sys.executable, "-m", "tinybert", "build-capi", library], check=True, capture_output=True,
                       timeout=900)
    exe = work / "capi_reentrant"
    built = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1",
                            str(Path(__file__).with_name("capi_reentrant.c")), "-o", str(exe), f"-I{library}",
                            f"-L{library}", "-ltinybert", f"-Wl,-rpath,{library}"], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"gcc failed:\n{built.stderr}")
    files = write_seeds(work / "seeds")
    command = [str(exe), *(str(files[name]) for name in ("decoder-int8", "rope-int8", "encoder-int8",
                                                          "classifier-int8")), str(iterations), str(seed)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_plain_env())
    except subprocess.TimeoutExpired:
        return {"iterations": iterations, "seed": seed, "hang": True, "seconds": round(time.perf_counter() - start, 1),
                "ok": False}
    result: dict = {"seed": seed, "hang": False, "exit": proc.returncode}
    details = []
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("\t")
        if value.isdigit() and key not in ("mismatch", "load_failed"):
            result[key] = int(value)
        else:
            details.append(line)
    result.update(seconds=round(time.perf_counter() - start, 1), details=details[:20])
    if proc.returncode not in (0, 1):
        result["stderr"] = proc.stderr[-2000:]
    result["ok"] = proc.returncode == 0 and result.get("mismatches") == 0 and result.get("iterations") == iterations
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("threads")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--calls", type=int, default=200)
    p = sub.add_parser("longrun")
    p.add_argument("--encode", type=int, default=10_000)
    p.add_argument("--generate", type=int, default=1_000)
    p = sub.add_parser("capi-reentrant")
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--library", help="a folder holding a libtinybert.so built by `tinybert build-capi`")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before the run counts as a hang")
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    if args.mode == "threads":
        result = threads(args.threads, args.calls)
    elif args.mode == "longrun":
        result = longrun(args.encode, args.generate)
    else:
        result = capi_reentrant(args.iterations, args.seed, args.library, args.timeout)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
