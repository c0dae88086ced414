"""Fuzz a file's tokenizer.json (atheris, structured): hostile regexes and ids, then short adversarial texts.

    python -m fuzz.tokenizer [CORPUS_DIR] [-runs=100000] [-max_total_time=SECONDS] [libFuzzer options]

Each input rewrites the tokenizer metadata of the encoder or the decoder seed of fuzz/seeds.py (a WordLevel
tokenizer) with one to four edits: Split / Replace / Sequence pre-tokenizers, normalizers and decoders whose
regexes are built from the input (nested and lazy quantifiers, counted repetitions up to 10**5, alternations of
overlapping words, lookarounds, backreferences, classes, anchors; or raw text), vocabulary and added-token ids
at and past 2**31 and 2**32, negative, duplicated, past the model's vocabulary or not integers, added tokens
with odd contents and flags, a template naming undefined tokens or hostile type ids, the tokenizer's own
truncation and padding with huge sizes, an unknown token that is missing, and WordPiece, BPE and Unigram models
with hostile parameters; or, now and then, metadata that is no tokenizer JSON at all (nested 200,000 deep, cut
short, a character inserted). The file is opened with Encoder or Generator and given short adversarial texts
("a" * 24 + "!", runs of a character the regexes use, the vocabulary's words, any Unicode): encode one and two
texts, or generate three tokens (which decodes through the hostile decoder).

Success and ``TinyBertError`` are the only acceptable outcomes; a regex that backtracks for longer than
-timeout (default 20 s per input) is reported as a hang. Memory limits as in fuzz/configs.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import atheris

from fuzz.instrumentation import kernel_modules

with atheris.instrument_imports(include=["tinybert"], exclude=kernel_modules()):
    from tinybert import Encoder, Generator
    from tinybert import format as fmt
    from tinybert.errors import TinyBertError

from fuzz.limits import limit_address_space

_DIR = Path(tempfile.mkdtemp(prefix="tinybert-fuzz-tokenizer-"))
_PATH = _DIR / "model.safetensors"
_SEEDS: list[tuple[str, dict, dict]] = []

ATOMS = ["a", "b", "ab", "!", " ", ".", r"\w", r"\W", r"\s", r"\S", r"\d", r"\p{L}", r"\p{N}", r"\P{L}", "[a-z]",
         "[^a]", "[ab ]", "[^\\s\\p{L}]", r"\b", r"\B", "^", "$", r"\A", r"\z", "你", "🙂", "é", r"\x00", r"\n",
         "'s", "(?i:A)", r"\1", r"\k<n>", "[[:alpha:]]", r"\X", r"\R", r"\h", r"\G", "(?m:.)", "", "\\", "[", "(",
         ")", "{", "}", "|", "*", "+", "?", "[]", r"\p{Bogus}", r"\u{10FFFF}", r"\xFF", r"\777"]
QUANTIFIERS = ["", "", "", "+", "*", "?", "{2}", "{2,}", "{0,3}", "{,5}", "+?", "*?", "??", "++", "*+", "?+",
               "{1000}", "{65536}", "{100000,}", "{3,2}", "{2,3}?", "{1,}+"]
LOOKAROUNDS = ["(?=", "(?!", "(?<=", "(?<!", "(?>", "(?<n>", "(", "(?:", "(?i)(?:", "(?x:"]
BEHAVIORS = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous", "Other", 3]
HOSTILE_IDS = [2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63, 2 ** 64, -1, -(2 ** 31), 24, 25, 1000, 2 ** 20,
               0, 1, 3, None, "3", 3.5, True, float("nan"), [4], {"id": 4}]
CONTENTS = ["", " ", "a", "aa", "[CLS]", "[SEP]", "the", "cat", "##", "▁", "Ġ", "🙂", "\x00", "a" * 300, "(a+)+",
            "[MASK]", "</s>", "你好", " the ", "\n"]
TEXTS = ["the cat sat on the mat", "café 你好 🙂", "a a a a !", "hello world"]


def _seeds() -> list[tuple[str, dict, dict]]:
    if not _SEEDS:
        from safetensors import safe_open

        from fuzz.seeds import write_seeds

        files = write_seeds(_DIR / "seeds")
        for name in ("encoder-int8", "decoder-int8"):
            with safe_open(str(files[name]), framework="numpy") as fh:
                _SEEDS.append((name, {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())))
    return _SEEDS


def regex(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> str:
    """A regular expression from the input: atoms, quantifiers (nested too), groups, alternations, lookarounds."""
    kind = fdp.ConsumeIntInRange(0, 9)
    if depth >= 4 or kind < 3:
        return fdp.PickValueInList(ATOMS) + fdp.PickValueInList(QUANTIFIERS)
    if kind == 3:
        return "".join(regex(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(2, 4)))
    if kind == 4:
        return "|".join(regex(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(2, 5)))
    if kind == 5:           # overlapping alternatives, repeated: (a|a)+, (a|ab|aba)*
        unit = fdp.PickValueInList(["a", "ab", " ", r"\w", "."])
        alternatives = "|".join(unit * n for n in range(1, fdp.ConsumeIntInRange(2, 5)))
        return f"(?:{alternatives}){fdp.PickValueInList(QUANTIFIERS)}"
    if kind == 6:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 24))
    return fdp.PickValueInList(LOOKAROUNDS) + regex(fdp, depth + 1) + ")" + fdp.PickValueInList(QUANTIFIERS)


def _pattern(fdp: atheris.FuzzedDataProvider) -> dict:
    if fdp.ConsumeProbability() < 0.15:
        return {"String": fdp.PickValueInList(CONTENTS)}
    return {"Regex": regex(fdp)}


def _normalizer(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> dict:
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind <= 2:
        return {"type": "Replace", "pattern": _pattern(fdp), "content": fdp.PickValueInList(CONTENTS)}
    if kind == 3 and depth < 2:
        return {"type": "Sequence", "normalizers": [_normalizer(fdp, depth + 1)
                                                    for _ in range(fdp.ConsumeIntInRange(0, 3))]}
    if kind == 4:
        return {"type": "Prepend", "prepend": fdp.PickValueInList(CONTENTS)}
    if kind == 5:
        return {"type": "Strip", "strip_left": fdp.ConsumeBool(), "strip_right": fdp.ConsumeBool()}
    if kind == 6:
        return {"type": "BertNormalizer", "clean_text": fdp.ConsumeBool(), "handle_chinese_chars": fdp.ConsumeBool(),
                "strip_accents": fdp.PickValueInList([None, True, False]), "lowercase": fdp.ConsumeBool()}
    return {"type": fdp.PickValueInList(["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Nmt"])}


def _pre_tokenizer(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> dict:
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind <= 2:
        return {"type": "Split", "pattern": _pattern(fdp), "behavior": fdp.PickValueInList(BEHAVIORS),
                "invert": fdp.ConsumeBool()}
    if kind == 3 and depth < 2:
        return {"type": "Sequence", "pretokenizers": [_pre_tokenizer(fdp, depth + 1)
                                                      for _ in range(fdp.ConsumeIntInRange(0, 3))]}
    if kind == 4:
        return {"type": "ByteLevel", "add_prefix_space": fdp.ConsumeBool(), "trim_offsets": fdp.ConsumeBool(),
                "use_regex": fdp.ConsumeBool()}
    if kind == 5:
        return {"type": "Metaspace", "replacement": fdp.PickValueInList(["▁", " ", "a", ""]),
                "prepend_scheme": fdp.PickValueInList(["always", "never", "first"]), "split": fdp.ConsumeBool()}
    if kind == 6:
        return {"type": "CharDelimiterSplit", "delimiter": fdp.PickValueInList(["a", " ", "", "ab", "🙂"])}
    return {"type": fdp.PickValueInList(["Whitespace", "WhitespaceSplit", "BertPreTokenizer", "Punctuation",
                                         "UnicodeScripts", "Digits"])}


def _decoder(fdp: atheris.FuzzedDataProvider) -> dict:
    kind = fdp.ConsumeIntInRange(0, 5)
    if kind == 0:
        return {"type": "Replace", "pattern": _pattern(fdp), "content": fdp.PickValueInList(CONTENTS)}
    if kind == 1:
        return {"type": "Strip", "content": fdp.PickValueInList(CONTENTS[:4]),
                "start": fdp.PickValueInList(HOSTILE_IDS), "stop": fdp.PickValueInList(HOSTILE_IDS)}
    if kind == 2:
        return {"type": "WordPiece", "prefix": fdp.PickValueInList(CONTENTS), "cleanup": fdp.ConsumeBool()}
    if kind == 3:
        return {"type": "Sequence", "decoders": [_decoder(fdp) for _ in range(fdp.ConsumeIntInRange(0, 2))]}
    if kind == 4:
        return {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    return {"type": fdp.PickValueInList(["ByteLevel", "Fuse", "ByteFallback", "CTC"])}


def _model(fdp: atheris.FuzzedDataProvider, vocab: dict) -> dict:
    """Another tokenizer model over the same words, with hostile parameters."""
    kind = fdp.ConsumeIntInRange(0, 2)
    if kind == 0:
        return {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]",
                "continuing_subword_prefix": fdp.PickValueInList(CONTENTS),
                "max_input_chars_per_word": fdp.PickValueInList(HOSTILE_IDS)}
    if kind == 1:
        words = sorted(vocab, key=lambda w: vocab[w] if isinstance(vocab[w], int) else 0) + ["##a", "#", "▁a"]
        merges = [f"{fdp.PickValueInList(words)} {fdp.PickValueInList(words)}"
                  for _ in range(fdp.ConsumeIntInRange(0, 6))]
        return {"type": "BPE", "vocab": vocab, "merges": merges, "unk_token": "[UNK]",
                "dropout": fdp.PickValueInList([None, 0.0, 0.5, 1.0, -1.0, 2.0, float("nan")]),
                "continuing_subword_prefix": fdp.PickValueInList([None, "##", "#", "▁", ""]),
                "end_of_word_suffix": fdp.PickValueInList([None, "</w>", ""]),
                "fuse_unk": fdp.ConsumeBool(), "byte_fallback": fdp.ConsumeBool()}
    pieces = [[w, fdp.PickValueInList([-1.0, 0.0, -1e30, 1e30, float("nan"), float("-inf")])] for w in vocab]
    return {"type": "Unigram", "unk_id": fdp.PickValueInList(HOSTILE_IDS), "vocab": pieces,
            "byte_fallback": fdp.ConsumeBool()}


def _hostile_id(fdp: atheris.FuzzedDataProvider, vocab: dict) -> object:
    if fdp.ConsumeBool() and vocab:
        return vocab[fdp.PickValueInList(sorted(vocab))]           # a duplicate
    if fdp.ConsumeBool():
        return (1 << fdp.ConsumeIntInRange(0, 64)) + fdp.ConsumeIntInRange(-2, 2)
    return fdp.PickValueInList(HOSTILE_IDS)


def mutate(fdp: atheris.FuzzedDataProvider, spec: dict) -> dict:
    """One to four edits of a tokenizer.json (dict)."""
    model = spec["model"]
    vocab = model["vocab"]
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        op = fdp.ConsumeIntInRange(0, 13)
        if op <= 2:
            spec["pre_tokenizer"] = _pre_tokenizer(fdp)
        elif op <= 4:
            spec["normalizer"] = _normalizer(fdp)
        elif op == 5:
            vocab[fdp.PickValueInList(sorted(vocab))] = _hostile_id(fdp, vocab)
        elif op == 6:
            word = fdp.PickValueInList(CONTENTS) if fdp.ConsumeBool() else fdp.ConsumeUnicode(8)
            vocab[word] = _hostile_id(fdp, vocab)
        elif op == 7:
            vocab.pop(fdp.PickValueInList(sorted(vocab)), None)
        elif op == 8:
            spec["added_tokens"].append({"id": _hostile_id(fdp, vocab), "content": fdp.PickValueInList(CONTENTS),
                                         "single_word": fdp.ConsumeBool(), "lstrip": fdp.ConsumeBool(),
                                         "rstrip": fdp.ConsumeBool(), "normalized": fdp.ConsumeBool(),
                                         "special": fdp.ConsumeBool()})
        elif op == 9:
            post = spec["post_processor"]
            which = fdp.ConsumeIntInRange(0, 2)
            if which == 0:
                post["special_tokens"][fdp.PickValueInList(["[CLS]", "[SEP]"])]["ids"] = [_hostile_id(fdp, vocab)]
            elif which == 1:
                post[fdp.PickValueInList(["single", "pair"])][0]["SpecialToken"]["type_id"] = _hostile_id(fdp, vocab)
            else:
                post["single"][0]["SpecialToken"]["id"] = fdp.PickValueInList(CONTENTS)
        elif op == 10:
            model["unk_token"] = fdp.PickValueInList([None, "", "[MISSING]", "[UNK]", "the", 1])
        elif op == 11:
            spec["truncation"] = {"direction": "Right", "max_length": _hostile_id(fdp, vocab),
                                  "strategy": "LongestFirst", "stride": _hostile_id(fdp, vocab)}
            spec["padding"] = {"strategy": {"Fixed": _hostile_id(fdp, vocab)} if fdp.ConsumeBool() else "BatchLongest",
                               "direction": "Right", "pad_to_multiple_of": fdp.PickValueInList([None, 0, 10 ** 9]),
                               "pad_id": _hostile_id(fdp, vocab), "pad_type_id": 0, "pad_token": "[PAD]"}
        elif op == 12:
            spec["decoder"] = _decoder(fdp)
        else:
            spec["model"] = model = _model(fdp, dict(vocab))
            vocab = dict(vocab)
    return spec


def adversarial_text(fdp: atheris.FuzzedDataProvider) -> str:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind <= 1:           # a near-match for backtracking regexes: "a" * 24 + "!"
        unit = fdp.PickValueInList(["a", "ab", " ", "x", "1", "é", "你", "\t", "a ", "aa!"])
        return unit * fdp.ConsumeIntInRange(1, 64) + fdp.PickValueInList(["!", "", "b", " ", "\n", "🙂"])
    if kind == 2:
        return fdp.PickValueInList(TEXTS)
    if kind == 3:
        return " ".join(fdp.PickValueInList(CONTENTS[:12]) for _ in range(fdp.ConsumeIntInRange(1, 12)))
    return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))


def raw_text(fdp: atheris.FuzzedDataProvider, text: str) -> str:
    """Tokenizer metadata that is not the JSON of a tokenizer: nested past any parser's stack, cut short, a
    byte changed, JSON of another shape."""
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return fdp.PickValueInList(["[", '{"model":', '{"a":[']) * fdp.ConsumeIntInRange(1, 200_000)
    if kind == 1:
        return text[:fdp.ConsumeIntInRange(0, len(text))]
    if kind == 2:
        at = fdp.ConsumeIntInRange(0, len(text))
        return text[:at] + fdp.ConsumeUnicode(4) + text[at:]
    if kind == 3:
        return fdp.PickValueInList(["", "null", "[]", "{}", '{"model": null}', '{"model": {"type": "BPE"}}', "1e999"])
    return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))


def check_tokenizer(data: bytes) -> None:
    from safetensors.numpy import save_file

    fdp = atheris.FuzzedDataProvider(data)
    seeds = _seeds()
    name, tensors, metadata = seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)]
    text = json.dumps(mutate(fdp, json.loads(fmt.unpack_tokenizer(metadata["tokenizer"]))))
    if fdp.ConsumeProbability() < 0.05:
        text = raw_text(fdp, text)
    try:
        save_file(tensors, str(_PATH), metadata={**metadata, "tokenizer": fmt.pack_tokenizer(text)})
    except Exception:  # noqa: BLE001 - a header safetensors will not write is no input
        return
    texts = [adversarial_text(fdp) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    try:
        if name.startswith("decoder"):
            Generator(_PATH, threads=1).generate(texts[0], max_new_tokens=3)
        else:
            enc = Encoder(_PATH, threads=1)
            enc.encode(texts[0])
            enc.encode(texts)
    except TinyBertError:
        pass


def main(argv: list[str]) -> None:
    for arg in argv[1:]:
        if not arg.startswith("-") and not os.path.isfile(arg):     # a file: an input to run again
            os.makedirs(arg, exist_ok=True)       # a corpus folder libFuzzer should keep inputs in
    _seeds()                                      # compile or load the kernels before the limits apply
    Encoder(_DIR / "seeds" / "encoder-int8.safetensors", threads=1).encode(TEXTS)
    Generator(_DIR / "seeds" / "decoder-int8.safetensors", threads=1).generate(TEXTS[0], max_new_tokens=3)
    limit_address_space(1024)
    atheris.Setup([argv[0], "-rss_limit_mb=4096", "-timeout=20", "-len_control=0", "-max_len=1024", *argv[1:]],
                  check_tokenizer)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
