"""Stress runs on the tiny seed models: threads sharing models, and memory over long runs.

    python -m fuzz.stress threads [--threads 8] [--calls 200]
    python -m fuzz.stress longrun [--encode 10000] [--generate 1000]

``threads``: one Encoder, Classifier and Generator shared by N threads, each making M mixed calls (encode,
classify, generate greedy and seeded sampling); every result must equal the same call made sequentially
beforehand; a deadlock shows as the run never ending (the tests put a timeout on it). ``longrun``: RSS
(VmRSS) after a warm-up and after the calls; growth must stay within 5 %. Both print a JSON line with
their figures and exit 1 when the property fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("threads")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--calls", type=int, default=200)
    p = sub.add_parser("longrun")
    p.add_argument("--encode", type=int, default=10_000)
    p.add_argument("--generate", type=int, default=1_000)
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    result = threads(args.threads, args.calls) if args.mode == "threads" else longrun(args.encode, args.generate)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
