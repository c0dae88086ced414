"""Fuzz the file loader and what runs on a file it accepts (atheris, coverage-guided).

    python -m fuzz.loader [CORPUS_DIR] [-runs=100000] [-max_total_time=SECONDS] [libFuzzer options]

Each input is written as a model file and opened with the public API class its metadata asks for (Encoder,
Classifier, Generator, Translator); a file the loader accepts is then run once on a short text. The only
acceptable outcomes are success and a ``TinyBertError``: any other exception is reported as a crash, and a
crash, a hang (libFuzzer's -timeout) or memory beyond -rss_limit_mb ends the run with an error. CORPUS_DIR
(default fuzz/corpus) is seeded with the valid files of fuzz/seeds.py when it is empty.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

from fuzz.instrumentation import kernel_modules

# Only tinybert's own Python is instrumented: Numba compiles the kernels from their bytecode, which
# instrumentation would change.
with atheris.instrument_imports(include=["tinybert", "tinybert_convert"], exclude=kernel_modules()):
    from tinybert import Classifier, Encoder, Generator, Translator
    from tinybert.errors import TinyBertError
    from tinybert.loader import load

_PATH = Path(tempfile.mkdtemp(prefix="tinybert-fuzz-")) / "model.safetensors"


def check_file(data: bytes) -> None:
    """Load ``data`` as a model file and run it once; raises only what is not a TinyBertError."""
    _PATH.write_bytes(data)
    try:
        model_file = load(_PATH)
        kind, task = model_file.config.kind, model_file.task.type
        if kind == "decoder":
            Generator(_PATH, threads=1).generate("the cat", max_new_tokens=3)
        elif kind == "encoder-decoder":
            Translator(_PATH, threads=1).translate("the cat", max_length=3, beam_size=2)
        elif task == "sequence-classification":
            Classifier(_PATH, threads=1).classify(["the cat sat", "café 你好"])
        else:
            Encoder(_PATH, threads=1).encode(["the cat sat", "café 你好"])
    except TinyBertError:
        pass


def main(argv: list[str]) -> None:
    from fuzz.seeds import write_seeds

    args = [a for a in argv[1:] if a.startswith("-")]
    corpus = next((a for a in argv[1:] if not a.startswith("-")), str(Path(__file__).parent / "corpus"))
    if not os.path.isdir(corpus) or not os.listdir(corpus):
        write_seeds(corpus)
    atheris.Setup([argv[0], corpus, "-rss_limit_mb=4096", "-timeout=60", *args], check_file)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
