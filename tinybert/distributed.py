"""Embed and classify corpora on a Ray cluster through Ray Data (the optional extra ``tinybert[ray]``).

``embed_dataset`` and ``classify_dataset`` take a ``ray.data.Dataset`` and return one: the same rows,
every column kept, with the embedding (or label and score) added. They are built on
``Dataset.map_batches`` with a pool of actors; each actor loads the model file once, as an ``Encoder``
or a ``Classifier``, and reuses it for every batch it is given. Ray schedules the batches, restarts an
actor that dies and retries the batch it held; tinybert adds no scheduler of its own.

Where the model file comes from (``model_transport``):

- ``"path"``: every worker opens the file at the path given, so it must be visible at that path on
  every node (shared storage, or a file baked into the nodes' image). Nothing is copied.
- ``"object-store"``: the driver reads the file once and puts its bytes in Ray's object store; each
  node fetches them once (the cost: the file size over the network and in the object store, once per
  node, e.g. 23 MB for all-MiniLM-L6-v2 int8) and writes them to a node-local cache file that all the
  actors on that node open.
- ``"auto"`` (default): ``"path"`` when the cluster is this one machine, ``"object-store"`` otherwise.

Rows: each batch goes through the model in one call and comes back with the same rows in the same
order, so the output has every input row exactly once. Ray Data keeps the dataset's row order across
batches only when ``DataContext.get_current().execution_options.preserve_order`` is True (set it
before creating the dataset); otherwise batches may come back in any order, and rows are matched by
their own columns, which are all kept. ``embed_corpus`` (the ``tinybert embed-corpus`` command) turns
it on, so its output file is in input order.

Texts follow ``Encoder.encode``'s rule: a missing (null), non-string, empty or whitespace-only text is
an ``InputError``, never a silent zero vector. What can be checked on the driver is checked there
before any work is scheduled (the model file, its task, the column's presence and type); a null or
empty text inside a string column is found by the worker that gets it, and stops the run with Ray's
error, whose message carries the ``tinybert.errors.InputError`` and the row.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import errors
from . import format as fmt
from .errors import InputError, TinyBertError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

TRANSPORTS = ("auto", "path", "object-store")
CORPUS_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}

# A test-only hook: the fault-tolerance test points this at a folder; an actor holding its second batch
# dies (os._exit) when "<folder>/arm" exists and it is the first to create "<folder>/fired". It is the
# only way to kill a worker at a known point of a run from outside Ray's scheduler.
_FAULT_ENV = "TINYBERT_TEST_FAULT_DIR"


class MissingExtraError(TinyBertError, ImportError):
    """Ray or pyarrow is not installed: ``pip install "tinybert[ray]"``."""


def _import_ray() -> tuple[Any, Any]:
    try:
        import pyarrow
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError(f"tinybert.distributed needs Ray Data and pyarrow ({exc}); "
                                'install them with: pip install "tinybert[ray]"') from None
    return ray, pyarrow


# ----------------------------------------------------------------------------- checks on the driver

def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def _compute_strategy(ray: Any, concurrency: object) -> Any:
    """Ray's actor pool for ``concurrency``: None = autoscale from one actor up to what the cluster
    holds, n = exactly n actors, (m, n) = autoscale between m and n."""
    if concurrency is None:
        return ray.data.ActorPoolStrategy(min_size=1)
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return ray.data.ActorPoolStrategy(size=concurrency)
    if (isinstance(concurrency, tuple) and len(concurrency) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) for c in concurrency)
            and 1 <= concurrency[0] <= concurrency[1]):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    raise InputError(f"concurrency must be None, a positive integer or a (min, max) pair, got {concurrency!r}")


def _check_dataset(ray: Any, pa: Any, ds: object, text_columns: Sequence[str], new_columns: Sequence[str]) -> None:
    """The columns a run needs, from the dataset's schema: each text column present and holding
    strings; no output column that would overwrite one of the user's."""
    if not isinstance(ds, ray.data.Dataset):
        raise InputError(f"ds must be a ray.data.Dataset, got {type(ds).__name__}")
    for name in list(text_columns) + list(new_columns):
        if not isinstance(name, str) or not name:
            raise InputError(f"column names must be non-empty strings, got {name!r}")
    if len(set(new_columns)) != len(new_columns):
        raise InputError(f"the output columns must differ, got {list(new_columns)}")
    try:
        schema = ds.schema()
    except Exception as exc:  # pyarrow and Ray raise their own types (e.g. columns of mixed types)
        raise InputError(f"cannot read the dataset's schema: {type(exc).__name__}: {exc}") from None
    if schema is None:
        raise InputError("the dataset has no schema: it holds no rows (Encoder.encode refuses empty input too)")
    names, types = list(schema.names), list(schema.types)
    for column in text_columns:
        if column not in names:
            raise InputError(f"the dataset has no column {column!r}; its columns are {names}")
        kind = types[names.index(column)]
        if isinstance(kind, pa.DataType):
            if pa.types.is_null(kind):
                raise InputError(f"column {column!r} holds only missing values (null); every text must be a "
                                 "non-empty string, as for Encoder.encode")
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                    or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))):
                raise InputError(f"column {column!r} holds {kind} values, not strings")
        # Any other type object (a pandas object dtype) says nothing about the values: the worker
        # checks each one instead.
    for column in new_columns:
        if column in names:
            raise InputError(f"the dataset already has a column {column!r}; choose another output column name")


def _check_fits(ray: Any, threads_per_worker: int) -> None:
    """Ray waits for ever for a node that could hold an actor bigger than any it has: refuse instead."""
    largest = max((node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if threads_per_worker > largest:
        raise InputError(f"threads_per_worker={threads_per_worker}, but the largest node of this Ray cluster has "
                         f"{largest:g} CPUs: no worker could ever be scheduled")


def _open_model(task: str, model: str | os.PathLike, threads: int = 1) -> Any:
    """The API object for ``task`` on ``model``: what a worker runs its batches on (through the API
    classes, so with their scheduler), and on the driver the same checks a worker makes (file
    validity, encoder kind, classification head) before anything is scheduled."""
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model must be a tinybert file, a Hugging Face folder or a Hub id, got "
                         f"{type(model).__name__}")
    if task == "embed":
        from .api.encoder import Encoder

        return Encoder(model, threads=threads)
    from .api.tasks import Classifier

    return Classifier(model, threads=threads)


# ----------------------------------------------------------------------------- the model on the workers

def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _single_machine(ray: Any) -> bool:
    try:
        from ray.util.client import ray as client

        if client.is_connected():   # a Ray Client driver (ray://) runs beside the cluster, not on its node
            return False
    except ImportError:
        pass
    here = ray.get_runtime_context().get_node_id()
    return all(node["NodeID"] == here for node in ray.nodes() if node.get("Alive"))


def _model_source(ray: Any, model: str | os.PathLike, transport: str) -> tuple:
    """What the actors are given to find the model: ("path", absolute path) or ("object-store",
    sha256, file name, [ref]). The ref sits in a list so that Ray passes the reference, not the bytes:
    an actor whose node already holds the file never fetches them."""
    if transport not in TRANSPORTS:
        raise InputError(f"model_transport must be one of {TRANSPORTS}, got {transport!r}")
    path = Path(model).resolve()
    if transport == "auto":
        transport = "path" if _single_machine(ray) else "object-store"
    if transport == "path":
        return ("path", str(path))
    data = path.read_bytes()
    return ("object-store", hashlib.sha256(data).hexdigest(), path.name, [ray.put(data)])


def _node_model_file(source: tuple) -> Path:
    """The model as a file on this node (worker side)."""
    if source[0] == "path":
        return Path(source[1])
    import ray

    _, digest, name, (ref,) = source
    folder = Path(tempfile.gettempdir()) / "tinybert-ray-models"
    target = folder / f"{digest[:16]}-{name}"
    if target.is_file() and _file_digest(target) == digest:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    data = ray.get(ref)
    # Several actors on one node may arrive together: each writes its own file and renames it into
    # place, so none ever opens a half-written model.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest[:16]}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _describe_row(batch: pa.Table, i: int, skip: Sequence[str]) -> str:
    others = {name: batch.column(name)[i].as_py() for name in batch.column_names if name not in skip}
    text = repr(others)
    return f"the row's other columns: {text[:300]}{' ...' if len(text) > 300 else ''}" if others else \
        f"row {i} of its batch"


def _batch_texts(batch: pa.Table, column: str, skip: Sequence[str]) -> list[str]:
    """The column's texts, or InputError naming the first bad one and its row. Empty texts are refused here,
    although Encoder.encode embeds them: in a corpus column they are nearly always missing data."""
    texts = batch.column(column).to_pylist()
    for i, text in enumerate(texts):
        if text is None:
            problem = "a missing text (null)"
        elif not isinstance(text, str):
            problem = f"a {type(text).__name__}, not a string"
        elif not text.strip():
            problem = "an empty or whitespace-only text"
        else:
            continue
        raise InputError(f"column {column!r} holds {problem} ({_describe_row(batch, i, skip)}); "
                         "tinybert.distributed refuses it: drop or fill such rows first")
    return texts


class _BatchWorker:
    """The callable class ``map_batches`` runs as an actor: it opens the model once (through the
    public API classes) and turns each pyarrow batch into the same batch plus the output columns."""

    def __init__(self, task: str, source: tuple, threads: int, options: dict) -> None:
        self.model = _open_model(task, _node_model_file(source), threads)
        self.task = task
        self.options = options
        self.calls = 0

    def _fault_hook(self) -> None:
        folder = os.environ.get(_FAULT_ENV)
        if not folder or self.calls != 2 or not Path(folder, "arm").exists():
            return
        try:
            os.close(os.open(Path(folder, "fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        self.calls += 1
        self._fault_hook()
        o = self.options
        outputs = o["outputs"]
        texts = _batch_texts(batch, o["text_column"], [o["text_column"], *outputs])
        if self.task == "embed":
            from ray.data.extensions import ArrowTensorArray

            vectors = self.model.encode(texts, batch_size=o["encode_batch_size"], normalize=o["normalize"],
                                        pooling=o["pooling"])
            return batch.append_column(outputs[0], ArrowTensorArray.from_numpy(vectors))
        pairs = None
        if o["text_pair_column"] is not None:
            pairs = _batch_texts(batch, o["text_pair_column"], [o["text_pair_column"], *outputs])
        results = self.model.classify(texts, text_pair=pairs, top_k=o["top_k"], batch_size=o["encode_batch_size"])
        if o["top_k"] == 1:
            labels = pa.array([r[0]["label"] for r in results], type=pa.string())
            scores = pa.array([r[0]["score"] for r in results], type=pa.float64())
        else:
            labels = pa.array([[d["label"] for d in r] for r in results], type=pa.list_(pa.string()))
            scores = pa.array([[d["score"] for d in r] for r in results], type=pa.list_(pa.float64()))
        return batch.append_column(outputs[0], labels).append_column(outputs[1], scores)


def _restart_args(ray: Any) -> dict:
    """Actor restarts without limit, and retries of the batch a dead actor held. Ray versions whose
    ``map_batches`` still takes ``**ray_remote_args`` get them explicitly; later ones have no way to pass
    them and make them the default of every actor pool."""
    params = inspect.signature(ray.data.Dataset.map_batches).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"max_restarts": -1, "max_task_retries": -1}
    return {}


def _run(task: str, ds: ray.data.Dataset, model: str | os.PathLike, text_columns: list[str],
         new_columns: list[str], batch_size: int, concurrency: object, threads_per_worker: int,
         model_transport: str, options: dict) -> ray.data.Dataset:
    ray, pa = _import_ray()
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("threads_per_worker", threads_per_worker)
    _check_positive_int("encode_batch_size", options["encode_batch_size"])
    compute = _compute_strategy(ray, concurrency)
    _check_dataset(ray, pa, ds, text_columns, new_columns)
    model = _open_model(task, model).path     # a folder or Hub id: the file it was converted to
    if not ray.is_initialized():
        ray.init()
    _check_fits(ray, threads_per_worker)
    source = _model_source(ray, model, model_transport)
    options = dict(options, text_column=text_columns[0], outputs=new_columns)
    with warnings.catch_warnings():
        # Ray 2.60+ flags **ray_remote_args as deprecated; _restart_args stops passing them once gone.
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(_BatchWorker, batch_size=batch_size, batch_format="pyarrow", compute=compute,
                              num_cpus=threads_per_worker,
                              fn_constructor_kwargs={"task": task, "source": source, "threads": threads_per_worker,
                                                     "options": options},
                              **_restart_args(ray))


# ----------------------------------------------------------------------------- public API

def embed_dataset(ds: ray.data.Dataset, model: str | os.PathLike, text_column: str = "text",
                  output_column: str = "embedding", batch_size: int = 256,
                  concurrency: int | tuple[int, int] | None = None, threads_per_worker: int = 1, *,
                  normalize: bool | None = None, pooling: str | None = None, encode_batch_size: int = 32,
                  model_transport: str = "auto") -> ray.data.Dataset:
    """Sentence embeddings of ``ds[text_column]`` as a new column ``output_column``: a float32
    tensor column [hidden] (``iter_batches(batch_format="numpy")`` gives [rows, hidden] arrays).

    Every other column is kept. Each batch of ``batch_size`` rows is one
    ``Encoder.encode(texts, batch_size=encode_batch_size, normalize=normalize, pooling=pooling)``
    call in one of ``concurrency`` actors (None: autoscaled by Ray), each reserving
    ``threads_per_worker`` CPUs and running that many Numba threads; a row's vector is the one
    ``Encoder.encode`` gives for it. ``model_transport`` ("auto", "path", "object-store") says how
    the model file reaches the workers (see the module's documentation).

    Lazy, like every Ray Data transform: nothing runs until the result is consumed. Checked here,
    before anything is scheduled (``TinyBertError``): the model file (``ModelFileError``, an encoder
    file: ``ModelKindError``), the column's presence and string type, the arguments (``InputError``).
    A null, empty or non-string text inside the column stops the run when a worker meets it, with
    Ray's error naming the ``InputError``. Needs ``pip install "tinybert[ray]"``
    (``MissingExtraError`` otherwise).
    """
    if pooling is not None and pooling not in fmt.POOLING_MODES:
        raise InputError(f"pooling must be one of {fmt.POOLING_MODES}, got {pooling!r}")
    options = {"encode_batch_size": encode_batch_size, "normalize": None if normalize is None else bool(normalize),
               "pooling": pooling}
    return _run("embed", ds, model, [text_column], [output_column], batch_size, concurrency, threads_per_worker,
                model_transport, options)


def classify_dataset(ds: ray.data.Dataset, model: str | os.PathLike, text_column: str = "text",
                     label_column: str = "label", score_column: str = "score", batch_size: int = 256,
                     concurrency: int | tuple[int, int] | None = None, threads_per_worker: int = 1, *,
                     text_pair_column: str | None = None, top_k: int | None = 1, encode_batch_size: int = 32,
                     model_transport: str = "auto") -> ray.data.Dataset:
    """``Classifier.classify`` over ``ds[text_column]``: the best label in ``label_column`` (string)
    and its score in ``score_column`` (float64), the same values as ``classify(texts)[i][0]``.

    With ``top_k`` other than 1 (None: every label) both columns hold lists, best first, as
    ``classify(texts, top_k=top_k)`` returns them. ``text_pair_column`` names the second texts of
    sentence pairs (``classify(texts, text_pair=...)``). Rows, batches, actors, the model file's
    transport and the errors are as for ``embed_dataset``; the file must carry a sequence-classification
    head (``ModelKindError`` on the driver otherwise). A dataset that already has a column named
    ``label`` (gold labels) needs another ``label_column``: nothing of the user's is overwritten.
    """
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
    columns = [text_column] + ([text_pair_column] if text_pair_column is not None else [])
    options = {"encode_batch_size": encode_batch_size, "text_pair_column": text_pair_column, "top_k": top_k}
    return _run("classify", ds, model, columns, [label_column, score_column], batch_size, concurrency,
                threads_per_worker, model_transport, options)


# ----------------------------------------------------------------------------- corpus files (the CLI)

def _corpus_format(path: Path, role: str) -> str:
    fmt_name = CORPUS_FORMATS.get(path.suffix.lower())
    if fmt_name is None:
        raise InputError(f"{role} {path} must end in .parquet, .jsonl or .json (JSON lines)")
    return fmt_name


def _open_corpus(pa: Any, path: Path, kind: str, chunk_rows: int) -> tuple[list[str], int, Iterator]:
    """The input file's column names, its row count, and its rows as pyarrow tables of at most
    ``chunk_rows`` rows in file order. A Parquet file is read chunk by chunk as the iterator is
    consumed, so the driver never holds all of it; JSON lines are parsed whole."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(path)
            names, rows = list(reader.schema_arrow.names), reader.metadata.num_rows
        except pa.ArrowException as exc:
            raise InputError(f"{path} is not a readable Parquet file: {exc}") from None

        def chunks() -> Iterator:
            try:
                for batch in reader.iter_batches(batch_size=chunk_rows):
                    yield pa.Table.from_batches([batch])
            except pa.ArrowException as exc:
                raise InputError(f"{path} is not a readable Parquet file: {exc}") from None
    else:
        import pyarrow.json as pj

        try:
            table = pj.read_json(path)
        except pa.ArrowException as exc:
            raise InputError(f"{path} is not JSON lines of objects with consistent types: {exc}") from None
        names, rows = list(table.column_names), table.num_rows

        def chunks() -> Iterator:
            for batch in table.to_batches(max_chunksize=chunk_rows):
                yield pa.Table.from_batches([batch])
    if rows == 0:
        raise InputError(f"{path} has no rows (Encoder.encode refuses empty input too)")
    return names, rows, chunks()


def _embedding_list(pa: Any, column: Any) -> Any:
    """The tensor column as a plain fixed_size_list<float32>: any Parquet or Arrow reader takes it
    without Ray's extension type."""
    import numpy as np

    vectors = np.concatenate([chunk.to_numpy() for chunk in column.chunks]).astype(np.float32, copy=False)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def _tinybert_error(exc: BaseException) -> TinyBertError | None:
    """The TinyBertError a worker raised, rebuilt from Ray's error (which carries only its text)."""
    if isinstance(exc, TinyBertError):
        return exc
    match = re.search(r"tinybert\.errors\.(\w+): (.*)", str(exc))
    if match is None:
        return None
    cls = getattr(errors, match.group(1), None)
    if not (isinstance(cls, type) and issubclass(cls, TinyBertError)):
        cls = TinyBertError
    return cls(match.group(2))


def embed_corpus(model: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike, *,
                 address: str | None = None, text_column: str = "text", output_column: str = "embedding",
                 batch_size: int = 256, concurrency: int | tuple[int, int] | None = None,
                 threads_per_worker: int = 1, model_transport: str = "auto",
                 show_progress: bool = True) -> int:
    """Embed a Parquet or JSON-lines file (by extension: .parquet, .jsonl, .json) into another,
    every input column kept and ``output_column`` added, rows in input order; returns the row count.

    What ``tinybert embed-corpus`` runs. The driver reads the input file in chunks of ``batch_size``
    rows into Ray's object store, ``embed_dataset`` spreads them over the actors, and the driver
    writes the results as they arrive (Parquet: the vectors as ``fixed_size_list<float>``; JSON
    lines: lists of numbers that read back as the same float32 values), first to ``OUTPUT.partial``,
    renamed to ``output`` once every row is written. Ray: the running instance if this process has
    one, else ``ray.init(address)``, else a new local instance (shut down at the end).
    """
    ray, pa = _import_ray()
    source, target = Path(input), Path(output)
    in_kind, out_kind = _corpus_format(source, "INPUT"), _corpus_format(target, "OUTPUT")
    if not source.is_file():
        raise InputError(f"INPUT {source} does not exist or is not a file")
    if source.resolve() == target.resolve():
        raise InputError("OUTPUT must differ from INPUT")
    _check_positive_int("batch_size", batch_size)
    model = _open_model("embed", model).path
    names, total, chunks = _open_corpus(pa, source, in_kind, batch_size)
    if text_column not in names:
        raise InputError(f"{source} has no column {text_column!r}; its columns are {names}")
    if output_column in names:
        raise InputError(f"{source} already has a column {output_column!r}; choose another --output-column")

    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    # Ray Data logs each execution's start and end, and logs a worker's exception with its traceback before
    # raising it: the progress bar and the error this function raises say the same, once.
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    partial = target.with_name(target.name + ".partial")
    try:
        data_logger.setLevel(logging.CRITICAL)
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False   # one bar, ours, counting rows written
        ds = ray.data.from_arrow_refs([ray.put(c) for c in chunks if c.num_rows])
        result = embed_dataset(ds, model, text_column=text_column, output_column=output_column,
                               batch_size=batch_size, concurrency=concurrency,
                               threads_per_worker=threads_per_worker, model_transport=model_transport)
        try:
            written = _write_corpus(pa, result, partial, out_kind, output_column, total, show_progress)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            found = _tinybert_error(exc)
            if found is not None and found is not exc:
                raise found from None
            raise
        if written != total:
            partial.unlink(missing_ok=True)
            raise TinyBertError(f"the run returned {written} rows for {total} input rows")
        os.replace(partial, target)
        return written
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        data_logger.setLevel(saved_level)
        if started:
            ray.shutdown()


def _write_corpus(pa: Any, result: ray.data.Dataset, path: Path, kind: str, output_column: str, total: int,
                  show_progress: bool) -> int:
    from tqdm import tqdm

    written = 0
    writer = None
    sink = None
    progress = tqdm(total=total, unit="text", desc="embedding", disable=not show_progress)
    try:
        if kind == "jsonl":
            sink = open(path, "w", encoding="utf-8")
        for batch in result.iter_batches(batch_size=None, batch_format="pyarrow"):
            index = batch.column_names.index(output_column)
            vectors = _embedding_list(pa, batch.column(output_column))
            batch = batch.set_column(index, output_column, vectors)
            if kind == "parquet":
                import pyarrow.parquet as pq

                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema)
                writer.write_table(batch.cast(writer.schema))
            else:
                for row in batch.to_pylist():
                    # float32 → Python float is exact, and json writes the float's shortest repr, so the
                    # values read back bit for bit.
                    sink.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            written += batch.num_rows
            progress.update(batch.num_rows)
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if sink is not None:
            sink.close()
    return written
