"""Fuzz the public entry points with hostile inputs (atheris, coverage-guided): texts (any Unicode, NUL
bytes, lone surrogates, long), token-id arrays of any dtype and shape, batch sizes, generation and
translation parameters, on the tiny seed models of fuzz/seeds.py.

    python -m fuzz.inputs [-runs=100000] [-max_total_time=SECONDS] [libFuzzer options]

About one text in 64 (at most one per input) is long: 4 K to 24 M characters (tens of MB of UTF-8) of
a repeated fuzz-chosen unit, CJK without spaces, a whitespace-only run ending in a few words, or one character
without whitespace, through encode, classify, generate and translate. The process runs under -rss_limit_mb=4096
and an address-space limit 1 GiB above its size after the models load (fuzz/limits.py), so a text that costs
memory in proportion to all of it, not to the part kept, is a crash.

Success and ``TinyBertError`` are the only acceptable outcomes; anything else is a crash.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris
import numpy as np

from fuzz.instrumentation import kernel_modules

# Only tinybert's own Python is instrumented: Numba compiles the kernels from their bytecode, which
# instrumentation would change.
with atheris.instrument_imports(include=["tinybert", "tinybert_convert"], exclude=kernel_modules()):
    from tinybert import Classifier, Encoder, Generator, Translator
    from tinybert.errors import TinyBertError

from fuzz.limits import limit_address_space

_MODELS: dict = {}


def _models() -> dict:
    if not _MODELS:
        from fuzz.seeds import write_seeds

        files = write_seeds(tempfile.mkdtemp(prefix="tinybert-fuzz-seeds-"))
        _MODELS.update(encoder=Encoder(files["encoder-int8"], threads=1),
                       classifier=Classifier(files["classifier-int8"], threads=1),
                       generator=Generator(files["decoder-int8"], threads=1),
                       translator=Translator(files["seq2seq-int8"], threads=1))
    return _MODELS


LONG_UNITS = ["長い文章を安全に切る。", "你好世界", "the cat sat ", "café ", "🙂", "x", "\u3000"]
_long_left = [0]         # long texts still allowed in the current input (one: memory stays within the limit)


def _long_text(fdp: atheris.FuzzedDataProvider) -> str:
    """Up to tens of MB: a repeated fuzz-chosen unit, CJK without spaces, a whitespace-only run ending in a few
    words, or one character with no whitespace at all. Lengths are spread over 4 KB to 24 M characters."""
    size = (1 << fdp.ConsumeIntInRange(12, 24)) + fdp.ConsumeIntInRange(0, 1 << 10)
    size = min(size + (fdp.ConsumeIntInRange(0, 8 << 20) if size >= 1 << 24 else 0), 24 << 20)
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        unit = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 16)) or "the "
    elif kind == 1:
        unit = fdp.PickValueInList(LONG_UNITS)
    elif kind == 2:         # whitespace only, then words past the tokenizer's prefix
        run = fdp.PickValueInList([" ", "\n", "\t", " \n", "\u3000", "\r\n"])
        return run * (size // len(run)) + fdp.PickValueInList([" the cat", "late words", "你好", ""])
    else:                   # no whitespace: one long "word"
        unit = fdp.PickValueInList(["x", "a", "你", "🙂", "é", "\x00", "-"])
    return unit * (size // len(unit) + 1)


def _text(fdp: atheris.FuzzedDataProvider) -> str:
    choice = fdp.ConsumeIntInRange(0, 63)
    if choice == 63 and _long_left[0]:
        _long_left[0] -= 1
        return _long_text(fdp)
    choice %= 4
    if choice == 0:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))
    if choice == 1:        # words the tokenizer knows, so the kernels see real ids
        words = ["the", "cat", "sat", "café", "你好", "🙂", "\x00", "\ud800", "  ", "big"]
        return " ".join(words[fdp.ConsumeIntInRange(0, len(words) - 1)] for _ in range(fdp.ConsumeIntInRange(0, 40)))
    if choice == 2:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 2000))
    return "the " * fdp.ConsumeIntInRange(0, 5000)


def _number(fdp: atheris.FuzzedDataProvider) -> object:
    choice = fdp.ConsumeIntInRange(0, 5)
    return [None, fdp.ConsumeIntInRange(-5, 300), fdp.ConsumeRegularFloat(), fdp.ConsumeFloat(), True,
            "3"][choice]


def check_inputs(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    models = _models()
    _long_left[0] = 1
    op = fdp.ConsumeIntInRange(0, 6)
    try:
        if op == 0:
            texts = [_text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
            models["encoder"].encode(texts if fdp.ConsumeBool() else (texts[0] if texts else ""),
                                     batch_size=_number(fdp) if fdp.ConsumeBool() else 32)
        elif op == 1:
            dtype = [np.int64, np.int32, np.int8, np.uint64, np.float32, np.bool_, object][fdp.ConsumeIntInRange(0, 6)]
            shape = tuple(fdp.ConsumeIntInRange(0, 20) for _ in range(fdp.ConsumeIntInRange(0, 3)))
            count = int(np.prod(shape)) if shape else 1
            ids = np.array(fdp.ConsumeIntListInRange(count, -(2 ** 40), 2 ** 40)).astype(dtype).reshape(shape)
            mask = None
            if fdp.ConsumeBool():
                mask = np.array(fdp.ConsumeIntListInRange(count, -1, 2)).reshape(shape)
            models["encoder"].forward(ids, mask)
        elif op == 2:
            models["classifier"].classify(_text(fdp), top_k=_number(fdp))
        elif op == 3:
            models["generator"].generate(_text(fdp), max_new_tokens=_number(fdp), temperature=_number(fdp) or 0.0,
                                         top_k=_number(fdp), top_p=_number(fdp), seed=_number(fdp))
        elif op == 4:
            models["generator"].generate(_text(fdp), max_new_tokens=4, num_beams=_number(fdp) or 1,
                                         length_penalty=_number(fdp) or 1.0, no_repeat_ngram_size=_number(fdp) or 0)
        elif op == 5:
            models["translator"].translate(_text(fdp), beam_size=_number(fdp), max_length=_number(fdp),
                                           min_length=_number(fdp) or 0, length_penalty=_number(fdp) or 1.0,
                                           num_hypotheses=_number(fdp) or 1, truncation=fdp.ConsumeBool())
        else:
            ids = [fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 30), -3, 40)
                   for _ in range(fdp.ConsumeIntInRange(0, 3))]
            models["translator"].translate_ids(ids, beam_size=fdp.ConsumeIntInRange(0, 4), max_length=5)
    except TinyBertError:
        pass


def main(argv: list[str]) -> None:
    for arg in argv[1:]:
        if not arg.startswith("-") and not os.path.isfile(arg):     # a file: an input to run again
            os.makedirs(arg, exist_ok=True)       # a corpus folder libFuzzer should keep inputs in
    models = _models()                            # load the models and their kernels before the limits apply
    models["encoder"].encode("the cat")
    models["classifier"].classify("the cat")
    models["generator"].generate("the cat", max_new_tokens=2)
    models["translator"].translate("the cat", max_length=2)
    limit_address_space(1024)
    atheris.Setup([argv[0], "-rss_limit_mb=4096", "-timeout=60", *argv[1:]], check_inputs)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
