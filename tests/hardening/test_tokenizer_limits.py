"""Long texts cost memory for what is kept; a tokenizer failure (a Rust panic included) is a TinyBertError;
tokenizer regexes that backtrack exponentially are refused at load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinybert.errors import InputError, ModelFileError
from tinybert.tokenizer import CompactText, TextTokenizer, load_tokenizer

_LONG_TEXT_RUN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import tinybert

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    path, megabytes, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    enc = tinybert.Encoder(path, threads=1)
    unit = "Memory bounds are checked here. " if kind == "latin" else "長い文章を安全に切る。"
    text = unit * (megabytes * 2**20 // len(unit.encode()))
    head = enc.encode([text[:20000]])
    # Everything above runs unlimited; from here on the process may map 1 GiB more, so a tokenizer that
    # wants memory in proportion to the whole text fails (the Rust allocator then aborts the process).
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + 2**30, resource.RLIM_INFINITY))
    before = status("VmRSS")
    got = enc.encode([text])
    print(json.dumps({"same": bool(np.allclose(got, head, atol=1e-6)), "grew": status("VmHWM") - before}))
""").replace("import resource, sys", "import json, resource, sys")


@pytest.mark.parametrize("megabytes,kind", [(10, "latin"), (100, "latin"), (10, "cjk")])
def test_long_text_costs_memory_for_what_is_kept(minilm_files, megabytes, kind):
    done = subprocess.run([sys.executable, "-c", _LONG_TEXT_RUN, str(minilm_files["int8"]), str(megabytes), kind],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"], "the embedding of a long text is its first part's"
    assert result["grew"] < 200 * 2**20, f"peak RSS grew {result['grew'] / 2**20:.0f} MiB"


def _with_pre_tokenizer(minilm_dir: Path, pattern: str) -> str:
    spec = json.loads((minilm_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    return json.dumps(spec)


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*b", "(?:x|ab+){2,}", "((ab)+c)*"])
def test_nested_repetition_regex_is_refused_at_load(minilm_dir, pattern):
    with pytest.raises(ModelFileError, match="nests repetitions"):
        load_tokenizer(_with_pre_tokenizer(minilm_dir, pattern), 128)


@pytest.mark.parametrize("pattern", [r"\s+", r"(?i:'s|'t)| ?\p{L}+| ?\p{N}+|\s+(?!\S)", r"(ab|cd)+", r"([+*])+x"])
def test_ordinary_regexes_load(minilm_dir, pattern):
    assert load_tokenizer(_with_pre_tokenizer(minilm_dir, pattern), 128).encode("ab cd +x").ids


def test_a_panic_inside_the_tokenizer_is_an_input_error(minilm_dir):
    """The loader refuses this regex; built past it, the Rust regex engine panics on a near-match (a
    PanicException, which ``except Exception`` does not catch): the wrapper turns it into an InputError."""
    from tokenizers import Tokenizer

    spec = _with_pre_tokenizer(minilm_dir, "(a+)+$")
    tokenizer = TextTokenizer(Tokenizer.from_str(spec), CompactText(spec), 128)
    with pytest.raises(InputError, match="tokenizer failed"):
        tokenizer.encode("a" * 24 + "!")
    with pytest.raises(InputError, match="tokenizer failed"):
        tokenizer.encode_batch(["fine", "a" * 24 + "!"])


def test_a_panic_while_loading_the_tokenizer_is_a_model_file_error(minilm_dir):
    """A BPE merge whose result is not in the vocabulary makes tokenizers panic inside ``Tokenizer.from_str``
    (a PanicException escaped the loader; found by fuzz/tokenizer.py): a ModelFileError."""
    spec = json.loads((minilm_dir / "tokenizer.json").read_text())
    spec["model"] = {"type": "BPE", "vocab": {"[UNK]": 0, "cat": 1, "dog": 2}, "merges": ["cat dog"],
                     "unk_token": "[UNK]"}
    with pytest.raises(ModelFileError, match="does not load"):
        load_tokenizer(json.dumps(spec), 128)


_BPE_CUT_INSIDE_A_CHARACTER = textwrap.dedent("""
    import json
    from tinybert.errors import ModelFileError
    from tinybert.tokenizer import load_tokenizer

    spec = {"version": "1.0", "model": {"type": "BPE", "vocab": {"[UNK]": 0, "a": 1, "你": 2}, "merges": ["a 你"],
                                        "unk_token": "[UNK]", "continuing_subword_prefix": "#"}}
    try:
        load_tokenizer(json.dumps(spec), 128)
    except ModelFileError as exc:
        print("refused:", exc)

    from pathlib import Path
    from tempfile import mkdtemp
    from tinybert.errors import ConversionError
    from tinybert_convert.tokenizer import tokenizer_json

    folder = Path(mkdtemp())
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    try:
        tokenizer_json(folder)
    except ConversionError as exc:
        print("converter refused:", exc)
""")


def test_a_bpe_merge_cut_inside_a_character_is_refused():
    """tokenizers cuts len(continuing_subword_prefix) bytes off a merge's second part without looking: inside a
    character (merge "a 你", prefix "#") the invalid UTF-8 it builds aborts the process (SIGABRT) when its error
    reaches Python (found by fuzz/tokenizer.py). The loader and the converter refuse such merges first. Run in a
    child process, so that a regression fails this test instead of killing the test run."""
    done = subprocess.run([sys.executable, "-c", _BPE_CUT_INSIDE_A_CHARACTER], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-1500:]}"
    assert "refused: tokenizer BPE merge 'a 你'" in done.stdout, done.stdout
    assert "converter refused:" in done.stdout and "BPE merge 'a 你'" in done.stdout, done.stdout


def test_tokenizer_json_nested_past_the_parser_stack_is_refused():
    """Found while reading the regex check: its json.loads raised RecursionError (not a TinyBertError)."""
    with pytest.raises(ModelFileError, match="nests deeper"):
        load_tokenizer("[" * 100_000, 128)


def test_a_long_text_of_nothing_but_spaces_is_refused(minilm_files):
    """Its first PREFIX_CHARS characters give no token, so its kept tokens could come from any depth: refused
    rather than tokenized whole."""
    import tinybert

    with pytest.raises(InputError, match="cut it to its first part"):
        tinybert.Encoder(minilm_files["int8"]).encode(["\n" * (3 << 20) + "late words"])


def test_packed_tokenizer_round_trip_and_bounds(monkeypatch):
    """A file's tokenizer is packed (zlib, base64): it unpacks to the same text, lone surrogates included, and a
    value that would unpack past MAX_TOKENIZER_BYTES is refused after reading only that much."""
    from tinybert import format as fmt

    text = '{"model": "x\u0120\U0001F600\ud800y"}' * 1000
    packed = fmt.pack_tokenizer(text)
    assert len(packed) < len(text) / 10 and fmt.unpack_tokenizer(packed) == text
    monkeypatch.setattr(fmt, "MAX_TOKENIZER_BYTES", 4096)
    assert fmt.unpack_tokenizer(fmt.pack_tokenizer("a" * 4096)) == "a" * 4096
    with pytest.raises(ValueError, match="more than 4096"):
        fmt.unpack_tokenizer(fmt.pack_tokenizer("a" * 4097))
