"""The cost of the Ray path: ``Encoder.encode`` in-process vs ``tinybert.distributed.embed_dataset``.

    python -m bench.distributed [--rows 4000] [--repeats 3] [--rounds 1] [--smoke] [--out FILE]

Corpus: the 1,000 shared sentences (../shared/data/sentences.txt) repeated to ``--rows`` rows; model:
all-MiniLM-L6-v2 int8 (the file bench.encoder builds). Engines, each in its own fresh process (the Ray
driver too), each timed ``--repeats`` times after a warm-up run, median reported:

- ``encode-2t`` / ``encode-1t``: ``Encoder.encode(texts)`` in this process, 2 / 1 Numba threads.
- ``ray-1w`` / ``ray-2w``: ``embed_dataset(ds, model, batch_size=256, concurrency=n,
  threads_per_worker=1)`` on a local Ray instance (``ray.init(num_cpus=2)``, started once, its start
  reported apart), from an in-memory dataset (``ray.data.from_arrow``, one block per 256 rows) until
  every embedding is back in the driver. Each run creates its actors, so it includes their start
  (a new process, ``import tinybert``, the model load); ``startup_s`` is that fixed part, measured as
  the time of a one-batch run, and ``steady_rows_per_s`` the rate without it:
  (rows - 256) / (time - one-batch time).

Also: the driver's Parquet write rate for the output (the single-file path of ``tinybert
embed-corpus``), and the model file size (what the object store transport moves once per node).
``--smoke``: 512 rows, one timed run each (results in bench/results/scratch/).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.encoder import prepare

BATCH = 256
ENGINES = ["encode-2t", "encode-1t", "ray-1w", "ray-2w"]
SMOKE_ROWS = 2 * BATCH


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


def worker(spec: dict) -> dict:
    """One engine in this process: encode-<n>t (Encoder.encode with n threads) or ray-<n>w (a local Ray
    instance started here, embed_dataset with n workers)."""
    kind, n = spec["engine"].split("-")
    count, model, texts, repeats = int(n[:-1]), Path(spec["path"]), spec["texts"], spec["repeats"]
    if kind == "encode":
        median, times = _median_run(_encode_engine(model, texts, count), repeats)
        return {"s": median, "runs_s": times, "rows_per_s": len(texts) / median}
    import ray
    import ray.data

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray_init_s = time.perf_counter() - t
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        median, times = _median_run(_ray_engine(model, texts, count), repeats)
        one, _ = _median_run(_ray_engine(model, texts[:BATCH], count), repeats)
    finally:
        ray.shutdown()
    return {"s": median, "runs_s": times, "rows_per_s": len(texts) / median, "startup_s": one,
            "steady_rows_per_s": (len(texts) - BATCH) / max(median - one, 1e-9), "ray_init_s": ray_init_s}


def _parquet_write_rate(rows: int, dim: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = (harness.sentences() * (rows // 1000 + 1))[:rows]
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
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args(argv)
    if args.worker:
        harness.serve(args.worker, worker)
        return
    session = harness.Session("distributed", args)
    rows, repeats = (SMOKE_ROWS, 1) if args.smoke else (args.rows, args.repeats)
    model = prepare("minilm", "tinybert-int8")
    texts = (harness.sentences() * (rows // 1000 + 1))[:rows]
    engines = [e for e in args.engines.split(",") if e]
    spec = {"path": str(model), "texts": texts, "repeats": repeats}
    results = session.rounds(engines, {engine: spec for engine in engines})
    report = {"rows": len(texts), "batch_size": BATCH, "repeats": repeats, "model_file_mb": model.stat().st_size / 1e6,
              "engines": results, "parquet_write": _parquet_write_rate(len(texts), 384)}
    _print_table(report, session.report["versions"])
    session.write(report)


def _print_table(report: dict, versions: dict) -> None:
    engines = report["engines"]
    base = engines.get("encode-2t", {}).get("rows_per_s")
    print(f"\n{report['rows']} rows, MiniLM int8, ray {versions.get('ray')}; median of {report['repeats']}")
    rows = []
    for name, r in engines.items():
        if "error" in r:
            print(f"{name}: error: {r['error']}")
            continue
        rows.append([name, f"{r['s']:.1f}", f"{r['rows_per_s']:.1f}", f"{r['rows_per_s'] / base:.2f}x" if base else "-",
                     harness.fmt(r.get("startup_s")), harness.fmt(r.get("steady_rows_per_s")),
                     harness.fmt(r.get("ray_init_s"))])
    print(harness.table(["engine", "s", "rows/s", "vs encode-2t", "startup s", "steady rows/s", "ray.init s"], rows))
    print(f"model file {report['model_file_mb']:.1f} MB")
    pw = report["parquet_write"]
    print(f"driver Parquet write: {pw['rows_per_s']:.0f} rows/s, {pw['mb_per_s']:.0f} MB/s, "
          f"{pw['bytes_per_row']:.0f} bytes/row")


if __name__ == "__main__":
    main()
