"""tinybert.distributed on a real local Ray instance (2 CPUs, started and shut down by this module).

References: in-process ``Encoder.encode`` / ``Classifier.classify`` on the same file and the same batch
contents (each Ray batch here is exactly one block of known rows), whose own fidelity against
transformers is tested elsewhere (tests/models/test_minilm.py, tests/api/test_heads.py). Ray must be
installed: CI installs the ``ray`` extra through ``test``, so nothing here is skipped without it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data

import tinybert
from tinybert.distributed import _FAULT_ENV, MissingExtraError, _tinybert_error, classify_dataset, embed_dataset

ROWS_PER_BATCH = 250   # 1,000 sentences in 4 blocks of 250: each Ray batch is one block


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray instance for the module; the fault hook's folder is set before it starts so that
    its workers inherit it (the hook stays idle until a test creates <folder>/arm)."""
    fault_dir = tmp_path_factory.mktemp("fault")
    previous = os.environ.get(_FAULT_ENV)
    os.environ[_FAULT_ENV] = str(fault_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield {"fault_dir": fault_dir, "address": ray.get_runtime_context().gcs_address}
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        ray.shutdown()
        if previous is None:
            os.environ.pop(_FAULT_ENV, None)
        else:
            os.environ[_FAULT_ENV] = previous


@pytest.fixture(scope="module")
def model(minilm_files) -> Path:
    return minilm_files["int8"]


@pytest.fixture(scope="module")
def reference(model, sentences) -> np.ndarray:
    """Encoder.encode on each 250-sentence batch the dataset will form, one thread like each worker."""
    enc = tinybert.Encoder(model, threads=1)
    return np.concatenate([enc.encode(sentences[i:i + ROWS_PER_BATCH]) for i in range(0, len(sentences),
                                                                                       ROWS_PER_BATCH)])


def corpus(sentences: list[str]) -> ray.data.Dataset:
    rows = [{"id": i, "text": s, "source": f"doc-{i:04d}"} for i, s in enumerate(sentences)]
    return ray.data.from_items(rows, override_num_blocks=len(rows) // ROWS_PER_BATCH)


def collect(ds: ray.data.Dataset) -> dict[str, np.ndarray]:
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


# ----------------------------------------------------------------------------- results

def test_embed_dataset_equals_encoder_encode(ray_cluster, model, sentences, reference):
    out = collect(embed_dataset(corpus(sentences), model, batch_size=ROWS_PER_BATCH, concurrency=2))
    assert list(out["id"]) == list(range(len(sentences)))           # every row once, in input order
    assert list(out["text"]) == sentences
    assert list(out["source"]) == [f"doc-{i:04d}" for i in range(len(sentences))]
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == (1000, 384)
    assert np.array_equal(out["embedding"], reference)


def test_worker_killed_mid_run_loses_and_repeats_nothing(ray_cluster, model, sentences, reference):
    fault_dir = ray_cluster["fault_dir"]
    (fault_dir / "arm").touch()
    try:
        # The object store transport too: a restarted actor must find the model again.
        out = collect(embed_dataset(corpus(sentences), model, batch_size=ROWS_PER_BATCH, concurrency=2,
                                    model_transport="object-store"))
    finally:
        (fault_dir / "arm").unlink()
    assert (fault_dir / "fired").exists(), "the fault hook never killed a worker"
    ids = list(out["id"])
    assert sorted(ids) == list(range(len(sentences))) and len(ids) == len(set(ids))
    assert ids == list(range(len(sentences)))
    assert np.array_equal(out["embedding"][np.argsort(out["id"])], reference)


def test_classify_dataset_equals_classifier(ray_cluster, head_model, sentences):
    labels = ["negative", "neutral", "positive"]
    _, files = head_model("bert", "sequence-classification", labels=labels)
    path, texts = files["int8"], sentences[:200]
    ds = ray.data.from_items([{"text": t, "label": "gold"} for t in texts], override_num_blocks=2)
    clf = tinybert.Classifier(path, threads=1)
    expected = [r for i in range(0, 200, 100) for r in clf.classify(texts[i:i + 100])]
    out = collect(classify_dataset(ds, path, label_column="predicted", batch_size=100, concurrency=2))
    assert list(out["label"]) == ["gold"] * 200
    assert list(out["predicted"]) == [r[0]["label"] for r in expected]
    assert list(out["score"]) == [r[0]["score"] for r in expected]
    assert len(set(out["score"])) > 100, "every text gets the same score: the comparison would prove little"

    expected = [r for i in range(0, 200, 100) for r in clf.classify(texts[i:i + 100], top_k=None)]
    out = collect(classify_dataset(ds, path, label_column="labels", score_column="scores", top_k=None,
                                   batch_size=100, concurrency=2))
    assert [list(x) for x in out["labels"]] == [[d["label"] for d in r] for r in expected]
    assert [list(x) for x in out["scores"]] == [[d["score"] for d in r] for r in expected]


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("rows, needle", [
    ([{"body": "a text"}] * 4, "no column 'text'"),
    ([{"text": i} for i in range(4)], "holds int64 values, not strings"),
    ([{"text": None}] * 4, "only missing values"),
    ([{"text": "a text"}, {"text": 3}], "cannot read the dataset's schema"),
    ([{"text": "a text", "embedding": 1.0}] * 4, "already has a column 'embedding'"),
])
def test_bad_columns_raise_on_the_driver(ray_cluster, model, rows, needle):
    ds = ray.data.from_items(rows)
    with pytest.raises(tinybert.InputError, match=needle):
        embed_dataset(ds, model)   # raised by the call itself: the returned dataset would be lazy


@pytest.mark.parametrize("kwargs, needle", [
    ({"batch_size": 0}, "batch_size"),
    ({"concurrency": 0}, "concurrency"),
    ({"threads_per_worker": 0}, "threads_per_worker"),
    ({"threads_per_worker": 3}, "largest node of this Ray cluster has 2 CPUs"),   # else Ray waits for ever
    ({"model_transport": "ftp"}, "model_transport"),
    ({"pooling": "median"}, "pooling"),
])
def test_bad_arguments_raise_on_the_driver(ray_cluster, model, sentences, kwargs, needle):
    with pytest.raises(tinybert.InputError, match=needle):
        embed_dataset(corpus(sentences), model, **kwargs)


def test_bad_model_files_raise_on_the_driver(ray_cluster, model, sentences, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(tinybert.ModelFileError):
        embed_dataset(corpus(sentences), corrupt)
    with pytest.raises(tinybert.ModelFileError):
        embed_dataset(corpus(sentences), tmp_path / "missing.safetensors")
    with pytest.raises(tinybert.ModelKindError):
        classify_dataset(corpus(sentences), model)     # an encoder without a classification head
    with pytest.raises(tinybert.InputError, match="must be a ray.data.Dataset"):
        embed_dataset(sentences, model)


def test_empty_text_in_a_string_column_stops_the_run(ray_cluster, model, sentences):
    rows = [{"id": i, "text": s} for i, s in enumerate(sentences[:20])]
    rows[13]["text"] = "   "
    ds = embed_dataset(ray.data.from_items(rows), model, batch_size=10, concurrency=1)
    with pytest.raises(Exception) as info:
        ds.materialize()
    found = _tinybert_error(info.value)
    assert isinstance(found, tinybert.InputError), str(info.value)[-2000:]
    assert "empty or whitespace-only" in str(found) and "'id': 13" in str(found)


def test_ray_is_optional(monkeypatch):
    proc = subprocess.run([sys.executable, "-c", "import sys, tinybert, tinybert.distributed, tinybert.cli; "
                           "print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
    monkeypatch.setitem(sys.modules, "ray", None)     # what an install without the extra sees
    with pytest.raises(MissingExtraError, match=r'pip install "tinybert\[ray\]"'):
        embed_dataset(None, "model.safetensors")
    assert issubclass(MissingExtraError, tinybert.TinyBertError)


# ----------------------------------------------------------------------------- the command

def run_cli(*args, address: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", _FAULT_ENV)}
    command = [sys.executable, "-m", "tinybert", "embed-corpus", *map(str, args)]
    if address:
        command += ["--address", address]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env, timeout=600)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr: {proc.stderr[-4000:]}"


def assert_cli_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr: {proc.stderr[-4000:]}"
    assert "tinybert: error: " in proc.stderr and needle in proc.stderr, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


def test_cli_parquet_on_a_local_instance(model, sentences, tmp_path):
    texts = sentences[:50]
    source, target = tmp_path / "corpus.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"doc": list(range(50)), "text": texts, "lang": ["en"] * 50}), source)
    proc = run_cli(model, source, target, "--batch-size", 16)   # no --address: its own local Ray
    assert_ok(proc)
    assert "50/50" in proc.stderr                                # the progress bar
    table = pq.read_table(target)
    assert table.column_names == ["doc", "text", "lang", "embedding"]
    assert table.column("doc").to_pylist() == list(range(50)) and table.column("lang").to_pylist() == ["en"] * 50
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    enc = tinybert.Encoder(model, threads=1)
    assert np.array_equal(vectors, np.concatenate([enc.encode(texts[i:i + 16]) for i in range(0, 50, 16)]))
    assert not (tmp_path / "out.parquet.partial").exists()


def test_cli_json_lines_on_a_given_cluster(ray_cluster, model, sentences, tmp_path):
    texts = sentences[100:150]
    source, target = tmp_path / "corpus.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"key": f"k{i}", "text": t, "score": i / 2}) + "\n"
                              for i, t in enumerate(texts)), encoding="utf-8")
    proc = run_cli(model, source, target, "--batch-size", 20, "--quiet", "--text-column", "text",
                   address=ray_cluster["address"])
    assert_ok(proc)
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(50)]
    assert [r["text"] for r in rows] == texts and [r["score"] for r in rows] == [i / 2 for i in range(50)]
    vectors = np.array([r["embedding"] for r in rows], dtype=np.float32)
    enc = tinybert.Encoder(model, threads=1)
    assert np.array_equal(vectors, np.concatenate([enc.encode(texts[i:i + 20]) for i in range(0, 50, 20)]))


def test_cli_errors(ray_cluster, model, sentences, tmp_path):
    missing = tmp_path / "missing.jsonl"
    missing.write_text("".join(json.dumps({"id": i, "text": None if i == 7 else t}) + "\n"
                               for i, t in enumerate(sentences[:12])), encoding="utf-8")
    proc = run_cli(model, missing, tmp_path / "out.parquet", "--batch-size", 4, "--quiet",
                   address=ray_cluster["address"])
    assert_cli_error(proc, "missing text (null)")
    assert "'id': 7" in proc.stderr
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.partial").exists()

    # Found before Ray starts: no --address needed, nothing scheduled.
    other = tmp_path / "other.jsonl"
    shutil.copy(missing, other)
    assert_cli_error(run_cli(model, other, tmp_path / "o.jsonl", "--text-column", "body"), "no column 'body'")
    assert_cli_error(run_cli(model, other, tmp_path / "o.csv"), ".parquet, .jsonl or .json")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    assert_cli_error(run_cli(broken, other, tmp_path / "o.jsonl"), "broken.safetensors")
