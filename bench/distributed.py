"""The cost of the Ray path: ``Encoder.encode`` in-process vs ``tinybert.distributed.embed_dataset``.

    python -m bench.distributed [--rows 4000] [--repeats 3] [--out bench/results/distributed.json]

Corpus: the 1,000 shared sentences (../shared/data/sentences.txt) repeated to ``--rows`` rows; model:
all-MiniLM-L6-v2 int8 (the file bench.encoder builds). Engines, each timed ``--repeats`` times after a
warm-up run, median reported:

- ``encode-2t`` / ``encode-1t``: ``Encoder.encode(texts)`` in this process, 2 / 1 Numba threads.
- ``ray-1w`` / ``ray-2w``: ``embed_dataset(ds, model, batch_size=256, concurrency=n,
  threads_per_worker=1)`` on a local Ray instance (``ray.init(num_cpus=2)``, started once, its start
  reported apart), from an in-memory dataset (``ray.data.from_arrow``, one block per 256 rows) until
  every embedding is back in this process. Each run creates its actors, so it includes their start
  (a new process, ``import tinybert``, the model load); ``startup_s`` is that fixed part, measured as
  the time of a one-batch run, and ``steady_rows_per_s`` the rate without it:
  (rows - 256) / (time - one-batch time).

Also: the driver's Parquet write rate for the output (the single-file path of ``tinybert
embed-corpus``), and the model file size (what the object store transport moves once per node).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.encoder import REPO, prepare, sentences

BATCH = 256


def _median_run(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up (excluded): kernels, caches, the object store's first allocation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times


def _encode_engine(model: Path, texts: list[str], threads: int):
    import tinybert

    enc = tinybert.Encoder(model, threads=threads)
    return lambda: enc.encode(texts)


def _ray_engine(model: Path, texts: list[str], workers: int):
    import pyarrow as pa
    import ray

    from tinybert.distributed import embed_dataset

    table = pa.table({"id": np.arange(len(texts)), "text": texts})
    blocks = [table.slice(i, BATCH) for i in range(0, len(texts), BATCH)]

    def run():
        ds = ray.data.from_arrow(blocks)
        out = embed_dataset(ds, model, batch_size=BATCH, concurrency=workers, threads_per_worker=1)
        rows = 0
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(batch["embedding"])
        if rows != len(texts):
            raise RuntimeError(f"{rows} rows back for {len(texts)}")
    return run


def _parquet_write_rate(rows: int, dim: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = (sentences() * (rows // 1000 + 1))[:rows]
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    table = pa.table({"id": np.arange(rows), "text": texts,
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.parquet"
        t = time.perf_counter()
        for _ in range(3):
            with pq.ParquetWriter(path, table.schema) as writer:
                for i in range(0, rows, BATCH):
                    writer.write_table(table.slice(i, BATCH))
        seconds = (time.perf_counter() - t) / 3
        size = path.stat().st_size
    return {"rows_per_s": rows / seconds, "mb_per_s": size / 1e6 / seconds, "bytes_per_row": size / rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default="encode-2t,encode-1t,ray-1w,ray-2w")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "distributed.json"))
    args = parser.parse_args(argv)
    import pyarrow
    import ray
    import ray.data

    model = prepare("minilm", "tinybert-int8")
    texts = (sentences() * (args.rows // 1000 + 1))[:args.rows]
    engines = [e for e in args.engines.split(",") if e]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "rows": len(texts), "batch_size": BATCH, "repeats": args.repeats,
              "model_file_mb": model.stat().st_size / 1e6,
              "versions": {"ray": ray.__version__, "pyarrow": pyarrow.__version__,
                           "numpy": np.__version__, "numba": __import__("numba").__version__},
              "engines": {}}

    if any(e.startswith("ray") for e in engines):
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        report["ray_init_s"] = time.perf_counter() - t
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        for engine in engines:
            print(f"   {engine} ...", end=" ", flush=True)
            kind, n = engine.split("-")
            count = int(n[:-1])
            if kind == "encode":
                median, times = _median_run(_encode_engine(model, texts, count), args.repeats)
                result = {"s": median, "runs_s": times, "rows_per_s": len(texts) / median}
            else:
                median, times = _median_run(_ray_engine(model, texts, count), args.repeats)
                one, _ = _median_run(_ray_engine(model, texts[:BATCH], count), args.repeats)
                result = {"s": median, "runs_s": times, "rows_per_s": len(texts) / median, "startup_s": one,
                          "steady_rows_per_s": (len(texts) - BATCH) / max(median - one, 1e-9)}
            report["engines"][engine] = result
            print(f"{result['rows_per_s']:.1f} rows/s", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    report["parquet_write"] = _parquet_write_rate(len(texts), 384)
    _print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


def _print_table(report: dict) -> None:
    engines = report["engines"]
    base = engines.get("encode-2t", {}).get("rows_per_s")
    print(f"\n{report['rows']} rows, MiniLM int8, {report['date']}, ray {report['versions']['ray']}, "
          f"{report['cpus']} CPUs; median of {report['repeats']}")
    print(f"{'engine':12}{'s':>9}{'rows/s':>10}{'vs encode-2t':>14}{'startup s':>11}{'steady rows/s':>15}")
    for name, r in engines.items():
        ratio = f"{r['rows_per_s'] / base:.2f}x" if base else "-"
        startup = f"{r['startup_s']:.1f}" if "startup_s" in r else "-"
        steady = f"{r['steady_rows_per_s']:.1f}" if "steady_rows_per_s" in r else "-"
        print(f"{name:12}{r['s']:>9.1f}{r['rows_per_s']:>10.1f}{ratio:>14}{startup:>11}{steady:>15}")
    if "ray_init_s" in report:
        print(f"ray.init (local, once): {report['ray_init_s']:.1f} s; model file {report['model_file_mb']:.1f} MB")
    pw = report["parquet_write"]
    print(f"driver Parquet write: {pw['rows_per_s']:.0f} rows/s, {pw['mb_per_s']:.0f} MB/s, "
          f"{pw['bytes_per_row']:.0f} bytes/row")


if __name__ == "__main__":
    main()
