"""`tinybert generate | translate | summarize` as real subprocesses, against transformers on the same weights.

Each command converts a random transformers checkpoint with `tinybert convert` (fp32); its output must equal
transformers' ``generate`` (greedy, or beam search with the command's defaults), decoded by the same tokenizer.
"""

from __future__ import annotations

import json

import pytest
from conftest import hf_greedy, seq2seq_reference

import tinybert

pytestmark = pytest.mark.usefixtures("quiet_torch")

PROMPTS = ["The option can also be used to compare files", "If no matching line exists"]


def test_cli_generate_and_stream(decoder_model, tmp_path):
    import os
    import subprocess
    import sys

    model, files = decoder_model("gpt2")
    out = tmp_path / "gpt2.safetensors"
    env = dict(os.environ)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tinybert", *map(str, args)], capture_output=True, text=True,
                              encoding="utf-8", env=env, timeout=600)

    proc = run("convert", files["fp32"].parent / "hf", out, "--dtype", "fp32", "--quiet")
    assert proc.returncode == 0, proc.stderr
    gen = tinybert.Generator(out)
    prompts = [gen.tokenizer.encode(t).ids for t in PROMPTS]
    ref = hf_greedy(model, prompts, 16)
    proc = run("generate", out, *PROMPTS, "--max-new-tokens", 16, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["token_ids"] for line in lines] == ref
    assert [line["prompt"] for line in lines] == PROMPTS
    proc = run("generate", out, PROMPTS[0], "--max-new-tokens", 16, "--stream")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == gen.tokenizer.decode(ref[0]) + "\n"
    proc = run("generate", out, PROMPTS[0], "--temperature", "-1")
    assert proc.returncode == 2 and "temperature" in proc.stderr
    # one row per prompt: a blank prompt is an error naming its line, before any generation
    proc = run("generate", out, "--file", _write(tmp_path / "p.txt", [PROMPTS[0], "", PROMPTS[1]]))
    assert proc.returncode == 2 and "line 2 of" in proc.stderr and "blank" in proc.stderr, proc.stderr
    assert proc.stdout == ""
    proc = run("translate", out, "Hello")
    assert proc.returncode == 2 and "use `tinybert generate`" in proc.stderr and "an encoder-decoder" in proc.stderr
    assert repr(gen) == (f"Generator(path={str(out)!r}, architecture='gpt2', quantization='fp32', "
                         f"layers={gen.config.num_layers}, hidden={gen.config.hidden_size}, threads={gen.threads})")


def _write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_translate_and_summarize(seq2seq_model, tmp_path, bpe_tokenizer_file):
    """`tinybert convert` then `tinybert translate` / `summarize` as subprocesses: output lines equal
    transformers' single-input generate decoded by the same tokenizer; a --file run shows a progress bar."""
    import os

    from test_cli import assert_cli_error, assert_ok, run
    from tokenizers import Tokenizer

    env = dict(os.environ)
    model, files = seq2seq_model("bart")
    path = tmp_path / "bart.fp32.safetensors"
    assert_ok(run(env, "convert", files["fp32"].parent / "hf", path, "--dtype", "fp32", "--quiet"))
    tok = Tokenizer.from_file(str(bpe_tokenizer_file))
    texts = ["The weather is lovely today.", "Beam search keeps the best partial translations."]

    def expected(text: str, **kw) -> str:
        return tok.decode(seq2seq_reference(model, tok.encode(text).ids, **kw)[0], skip_special_tokens=True)

    proc = run(env, "translate", path, *texts, "--beam-size", "4", "--max-length", "30")
    assert_ok(proc)
    assert proc.stdout.splitlines() == [expected(t, num_beams=4, max_new_tokens=30) for t in texts]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    proc = run(env, "summarize", path, "--file", source, "--max-length", "30", "--json")
    assert_ok(proc)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["source"] for o in out] == texts
    assert [o["text"] for o in out] == [expected(t, num_beams=4, max_new_tokens=30, length_penalty=2.0,
                                                 no_repeat_ngram_size=3, early_stopping=True) for t in texts]
    assert all(o["finish_reason"] in ("eos", "length") and isinstance(o["token_ids"], list) for o in out)
    assert "translating" in proc.stderr        # the progress bar
    proc = run(env, "translate", path, "--beam-size", "1", "--max-length", "30", stdin="\n".join(texts))
    assert_ok(proc)
    assert proc.stdout.splitlines() == [expected(t, max_new_tokens=30) for t in texts]
    assert_cli_error(run(env, "translate", path, "x", "--beam-size", "0"), "beam_size")
    assert_cli_error(run(env, "translate", path, "word " * 400), "--truncation")
    # one line out per line in: blank lines stay blank lines, the others are translated as alone
    proc = run(env, "translate", path, "--beam-size", "1", "--max-length", "30", "--quiet",
               stdin=f"\n{texts[0]}\n\n   \n{texts[1]}\n\n")
    assert_ok(proc)
    assert proc.stdout.split("\n") == ["", expected(texts[0], max_new_tokens=30), "", "",
                                        expected(texts[1], max_new_tokens=30), "", ""]
    proc = run(env, "translate", path, "--beam-size", "1", "--max-length", "30", "--json", stdin=f"{texts[0]}\n\n")
    assert_ok(proc)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["source"] for r in rows] == [texts[0], ""] and rows[1]["text"] == ""
    # a text the model cannot take is an error naming its line
    assert_cli_error(run(env, "translate", path, stdin=f"{texts[0]}\n{'word ' * 400}\n"),
                     "line 2 of standard input", "--truncation")
    tr = tinybert.Translator(path, threads=1)
    assert repr(tr) == (f"Translator(path={str(path)!r}, architecture='bart', quantization='fp32', "
                        f"layers={tr.config.num_encoder_layers}+{tr.config.num_decoder_layers}, "
                        f"hidden={tr.config.hidden_size}, threads=1)")
