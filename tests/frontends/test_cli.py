"""The `tinybert` command, run as a real subprocess (``python -m tinybert`` and the console script).

Source checkpoint: the real all-MiniLM-L6-v2 folder. Its config.json is the reference for `info`;
in-process ``Encoder.encode`` is the reference for `embed` (its own fidelity against transformers
is tested in tests/models/test_minilm.py); transformers is the reference for the demo's search results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import tinybert
from tinybert import format as fmt
from tinybert.demo import DEFAULT_MODEL_NAME, QUERIES, bundled_sentences

TEXTS = ["The cat sits on the mat.", "Café naïve — déjà vu, 中文 too.", "Compare two files and show the differences."]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env["TINYBERT_CACHE"] = str(tmp_path_factory.mktemp("tinybert_cache_unused"))
    return env


def run(env, *args, stdin: str | None = None, exe=None) -> subprocess.CompletedProcess:
    command = [exe] if exe else [sys.executable, "-m", "tinybert"]
    return subprocess.run(command + [str(a) for a in args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=600)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"


def assert_cli_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr: {proc.stderr[-4000:]}"
    assert proc.stderr.startswith("tinybert: error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.fixture(scope="module")
def model(tmp_path_factory, minilm_dir, cli_env) -> Path:
    """all-MiniLM-L6-v2 converted by `tinybert convert` (int8, the default dtype)."""
    out = tmp_path_factory.mktemp("cli") / "minilm.int8.safetensors"
    proc = run(cli_env, "convert", minilm_dir, out, "--quiet")
    assert_ok(proc)
    assert out.is_file()
    assert f"wrote {out}" in proc.stderr and "int8" in proc.stderr
    return out


@pytest.fixture(scope="module")
def encoder(model):
    return tinybert.Encoder(model)


def parse_jsonl(text: str) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(set(row) == {"text", "embedding"} for row in rows)
    return [row["text"] for row in rows], np.asarray([row["embedding"] for row in rows], dtype=np.float32)


# --------------------------------------------------------------------------- help

@pytest.mark.parametrize("sub,options", [
    ([], ["convert", "embed", "info", "demo"]),
    (["convert"], ["src", "out", "--dtype", "--quiet"]),
    (["embed"], ["model", "--file", "--output", "--batch-size", "--threads", "--progress"]),
    (["info"], ["model", "--json"]),
    (["demo"], ["--model", "--top-k"]),
])
def test_help(cli_env, sub, options):
    proc = run(cli_env, *sub, "--help")
    assert_ok(proc)
    assert proc.stdout.startswith("usage: tinybert" + "".join(" " + s for s in sub))
    for option in options:
        assert option in proc.stdout


def test_no_subcommand_is_a_usage_error(cli_env):
    proc = run(cli_env)
    assert proc.returncode == 2
    assert "usage: tinybert" in proc.stderr


def test_console_script(cli_env, model):
    script = shutil.which("tinybert", path=str(Path(sys.executable).parent))
    assert script is not None, "the tinybert console script is not installed next to the interpreter"
    proc = run(cli_env, "--help", exe=script)
    assert_ok(proc)
    assert proc.stdout.startswith("usage: tinybert")
    via_script = run(cli_env, "info", model, "--json", exe=script)
    via_module = run(cli_env, "info", model, "--json")
    assert_ok(via_script)
    assert_ok(via_module)
    assert json.loads(via_script.stdout) == json.loads(via_module.stdout)


# --------------------------------------------------------------------------- convert → info

def _source_parameters(minilm_dir: Path) -> int:
    """Parameters of the source checkpoint that an encoder keeps (the pooler head is dropped)."""
    total = 0
    with safe_open(str(minilm_dir / "model.safetensors"), framework="numpy") as fh:
        for name in fh.keys():
            sl = fh.get_slice(name)
            if name.split(".")[-2:] == ["embeddings", "position_ids"] or "pooler." in name:
                continue
            if sl.get_dtype() not in ("F32", "F16", "BF16"):
                continue
            total += int(np.prod(sl.get_shape()))
    return total


def test_info_json(cli_env, model, minilm_dir):
    proc = run(cli_env, "info", model, "--json")
    assert_ok(proc)
    info = json.loads(proc.stdout)
    hf = json.loads((minilm_dir / "config.json").read_text())
    st = json.loads((minilm_dir / "sentence_bert_config.json").read_text())
    cfg = info["config"]
    assert cfg["architecture"] == hf["model_type"]
    assert cfg["vocab_size"] == hf["vocab_size"]
    assert cfg["hidden_size"] == hf["hidden_size"]
    assert cfg["embedding_size"] == hf["hidden_size"]
    assert cfg["num_layers"] == hf["num_hidden_layers"]
    assert cfg["num_heads"] == hf["num_attention_heads"]
    assert cfg["intermediate_size"] == hf["intermediate_size"]
    assert cfg["max_positions"] == hf["max_position_embeddings"]
    assert cfg["type_vocab_size"] == hf["type_vocab_size"]
    assert cfg["norm_eps"] == hf["layer_norm_eps"]
    assert cfg["pad_token_id"] == hf["pad_token_id"]
    assert cfg["activation"] == hf["hidden_act"]
    assert cfg["max_length"] == st["max_seq_length"]
    assert info["quantization"] == "int8"
    assert info["format_version"] == str(fmt.FORMAT_VERSION)
    assert info["pooling"] == {"mode": "mean", "normalize": True}
    assert info["path"] == str(model)
    assert info["file_bytes"] == model.stat().st_size
    assert info["parameters"] == _source_parameters(minilm_dir)
    assert info["source"]["model_type"] == hf["model_type"]
    assert info["source"]["architectures"] == hf["architectures"]


def test_info_text(cli_env, model, minilm_dir):
    proc = run(cli_env, "info", model)
    assert_ok(proc)
    hf = json.loads((minilm_dir / "config.json").read_text())
    out = proc.stdout
    assert str(model) in out
    assert f"format v{fmt.FORMAT_VERSION}" in out
    for needle in (f"{hf['model_type']} encoder", f"{hf['num_hidden_layers']} layers", f"hidden {hf['hidden_size']}",
                   f"{hf['num_attention_heads']} heads", f"intermediate {hf['intermediate_size']}",
                   f"{hf['vocab_size']} tokens", "max length 256", "int8", "mean + L2 normalize"):
        assert needle in out, (needle, out)


def test_convert_fp32_with_progress(cli_env, minilm_dir, model, tmp_path):
    out = tmp_path / "minilm.fp32.safetensors"
    proc = run(cli_env, "convert", minilm_dir, out, "--dtype", "fp32")
    assert_ok(proc)
    assert f"wrote {out}" in proc.stderr and "fp32" in proc.stderr
    assert "writing minilm.fp32.safetensors" in proc.stderr  # the progress bar
    assert tinybert.Encoder(out).quantization == "fp32"
    assert out.stat().st_size > model.stat().st_size


# --------------------------------------------------------------------------- embed

def test_embed_texts_as_arguments(cli_env, model, encoder):
    proc = run(cli_env, "embed", model, *TEXTS)
    assert_ok(proc)
    texts, vectors = parse_jsonl(proc.stdout)
    assert texts == TEXTS
    assert vectors.shape == (len(TEXTS), encoder.dimension)
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS), atol=1e-6)


def test_embed_stdin(cli_env, model, encoder, sentences):
    lines = sentences[:5] + ["Naïve café 中文"]
    proc = run(cli_env, "embed", model, stdin="\n".join(lines) + "\n")
    assert_ok(proc)
    texts, vectors = parse_jsonl(proc.stdout)
    assert texts == lines
    np.testing.assert_allclose(vectors, encoder.encode(lines), atol=1e-6)


def _embeds_empty(encoder) -> bool:
    try:
        encoder.encode([""])
    except tinybert.InputError:
        return False
    return True


def test_embed_blank_lines_keep_rows_or_name_the_line(cli_env, model, encoder, sentences, tmp_path):
    """One output row per input line: a blank line is embedded as "" where the Encoder takes it, else the
    command fails naming the line; it is never dropped (rows would no longer match lines)."""
    lines = [sentences[0], "", sentences[1], "   ", sentences[2]]
    src = tmp_path / "blank.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run(cli_env, "embed", model, "--file", src)
    if _embeds_empty(encoder):
        assert_ok(proc)
        texts, vectors = parse_jsonl(proc.stdout)
        assert texts == lines
        np.testing.assert_allclose(vectors, encoder.encode(lines), atol=1e-6)
    else:
        assert_cli_error(proc, f"line 2 of {src}", "blank")
        assert proc.stdout == ""


def test_embed_lines_split_on_newline_only(cli_env, model, encoder):
    """A form feed or U+2028 inside a line does not start a new row (str.splitlines would); CRLF is one break."""
    lines = ["page one\x0cpage two", "left\u2028right", "windows line"]
    proc = run(cli_env, "embed", model, stdin=lines[0] + "\n" + lines[1] + "\r\n" + lines[2] + "\r\n")
    assert_ok(proc)
    texts, vectors = parse_jsonl(proc.stdout)
    assert texts == lines
    np.testing.assert_allclose(vectors, encoder.encode(lines), atol=1e-6)


def test_embed_file_to_jsonl(cli_env, model, encoder, sentences, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(sentences[10:17]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run(cli_env, "embed", model, "--file", src, "--output", out, "--batch-size", 2, "--threads", 1)
    assert_ok(proc)
    assert proc.stdout == ""
    texts, vectors = parse_jsonl(out.read_text(encoding="utf-8"))
    assert texts == sentences[10:17]
    np.testing.assert_allclose(vectors, encoder.encode(sentences[10:17]), atol=1e-6)


def test_embed_to_npy(cli_env, model, encoder, sentences, tmp_path):
    out = tmp_path / "vectors.npy"
    texts = sentences[20:24]
    proc = run(cli_env, "embed", model, *texts, "--output", out, "--progress")
    assert_ok(proc)
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), encoder.dimension)
    np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-6)
    assert f"wrote {out}" in proc.stderr


# --------------------------------------------------------------------------- errors

def test_embed_missing_model(cli_env, tmp_path):
    missing = tmp_path / "no-such-model.safetensors"
    proc = run(cli_env, "embed", missing, "hello")
    assert_cli_error(proc, str(missing))
    assert proc.stdout == ""


def test_embed_not_a_tinybert_file(cli_env, minilm_dir):
    proc = run(cli_env, "embed", minilm_dir / "model.safetensors", "hello")
    assert_cli_error(proc, "not a tinybert file")


def test_embed_empty_stdin(cli_env, model):
    proc = run(cli_env, "embed", model, stdin="")
    assert_cli_error(proc, "standard input is empty")


def test_embed_missing_text_file(cli_env, model, tmp_path):
    missing = tmp_path / "no-texts.txt"
    proc = run(cli_env, "embed", model, "--file", missing)
    assert_cli_error(proc, str(missing))


@pytest.mark.parametrize("via", ["--file", "stdin"])
def test_embed_input_not_utf8(cli_env, model, tmp_path, via):
    """Latin-1 bytes where UTF-8 is expected: a clean `tinybert: error:`, not a traceback."""
    data = "café au lait\n".encode("latin-1")
    src = tmp_path / "latin1.txt"
    src.write_bytes(data)
    if via == "--file":
        proc = run(cli_env, "embed", model, "--file", src)
    else:
        proc = subprocess.run([sys.executable, "-m", "tinybert", "embed", str(model)], input=data,
                              capture_output=True, env=cli_env, timeout=600)
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                           proc.stderr.decode("utf-8", "replace"))
    assert_cli_error(proc)


def test_embed_options_before_texts(cli_env, model, encoder, tmp_path):
    """`tinybert embed MODEL -o out.npy TEXT...`: options may come before the texts."""
    out = tmp_path / "v.npy"
    proc = run(cli_env, "embed", model, "--output", out, *TEXTS[:2])
    assert_ok(proc)
    np.testing.assert_allclose(np.load(out), encoder.encode(TEXTS[:2]), atol=1e-6)


def test_info_on_file_with_free_form_source(cli_env, model, tmp_path):
    """The loader accepts any `source` metadata (it is free-form), so `info` must not crash on it:
    it either shows the file (exit 0) or reports a clean error (exit 2)."""
    from tinybert_convert.writer import write_safetensors

    with safe_open(str(model), framework="numpy") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        metadata = dict(fh.metadata())
    metadata[fmt.KEY_SOURCE] = "converted by hand from all-MiniLM-L6-v2"
    path = tmp_path / "free-source.safetensors"
    write_safetensors(path, tensors, metadata)
    tinybert.Encoder(path)  # the runtime accepts the file
    proc = run(cli_env, "info", path)
    assert proc.returncode in (0, 2), f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_convert_unsupported_folder(cli_env, minilm_dir, tmp_path):
    src = tmp_path / "gpt_neox"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 30522,
        "hidden_size": 384, "num_hidden_layers": 2, "num_attention_heads": 12}))
    shutil.copy(minilm_dir / "tokenizer.json", src / "tokenizer.json")
    (src / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    out = tmp_path / "gpt_neox.safetensors"
    proc = run(cli_env, "convert", src, out, "--quiet")
    assert_cli_error(proc, "gpt_neox", "not supported")
    from tinybert_convert.architectures import FAMILIES
    from tinybert_convert.decoders import DECODER_FAMILIES
    from tinybert_convert.seq2seq import SEQ2SEQ_FAMILIES

    for model_type in (*FAMILIES, *DECODER_FAMILIES, *SEQ2SEQ_FAMILIES, "t5", "bart", "marian"):
        assert re.search(rf"\b{model_type}\b", proc.stderr), (model_type, proc.stderr)
    assert not out.exists()


def test_convert_missing_folder(cli_env, tmp_path):
    src = tmp_path / "nothing-here"
    proc = run(cli_env, "convert", src, tmp_path / "o.safetensors")
    assert_cli_error(proc, str(src))


# --------------------------------------------------------------------------- Unix behaviour

def test_version(cli_env):
    proc = run(cli_env, "--version")
    assert_ok(proc)
    assert proc.stdout == f"tinybert {tinybert.__version__}\n"


@pytest.mark.parametrize("sub,needles", [
    (["convert"], ["(default: int8)"]),
    (["embed"], ["(default: 32)", "default: all Numba threads", ".npy", ".csv"]),
    (["similarity"], ["--files", "(default: 32)"]),
    (["rerank"], ["query", "(default: 0)"]),
    (["classify"], ["(default: 1)"]),
    (["fill-mask"], ["(default: 5)"]),
    (["qa"], ["(default: 30)"]),
    (["generate"], ["(default: 64)", "(default: 0.0)"]),
    (["translate"], ["(default: 4)", "(default: 256)", "(default: False)"]),
    (["summarize"], ["(default: 142)", "(default: 2.0)", "(default: 3)", "(default: True)"]),
    (["embed-corpus"], ["(default: text)", "(default: 256)"]),
    (["demo"], ["(default: 3)"]),
])
def test_help_shows_defaults(cli_env, sub, needles):
    proc = run(cli_env, *sub, "--help")
    assert_ok(proc)
    text = " ".join(proc.stdout.split())     # argparse wraps lines
    for needle in needles:
        assert needle in text, (needle, proc.stdout)


def test_embed_output_format_from_extension(cli_env, model, encoder, tmp_path):
    texts = TEXTS
    for name in ("v.csv", "v.json", "v.jsonl"):
        out = tmp_path / name
        assert_ok(run(cli_env, "embed", model, *texts, "-o", out))
        if name.endswith(".csv"):
            vectors = np.loadtxt(out, delimiter=",", dtype=np.float32, ndmin=2)
        else:
            got, vectors = parse_jsonl(out.read_text(encoding="utf-8"))
            assert got == texts
        assert vectors.shape == (len(texts), encoder.dimension)
        np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-6)


def test_embed_unknown_extension_refused_before_any_work(cli_env, tmp_path):
    """Refused before the model is even opened: the model named here does not exist."""
    out = tmp_path / "vectors.txt"
    proc = run(cli_env, "embed", tmp_path / "no-such-model.safetensors", "hello", "-o", out)
    assert_cli_error(proc, str(out), ".jsonl", ".npy", ".csv")
    assert "no-such-model" not in proc.stderr and not out.exists()
    proc = run(cli_env, "embed", tmp_path / "no-such-model.safetensors", "hello", "-o", tmp_path / "nodir" / "v.npy")
    assert_cli_error(proc, "does not exist", "nodir")


def test_non_ascii_round_trip_unescaped_in_c_locale(cli_env, model, encoder):
    """UTF-8 in and out whatever the locale, and no \\u escapes in the JSON."""
    env = {**cli_env, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    text = "Zoë, São Paulo — 東京 😀"
    for args, stdin in (([text], None), ([], text + "\n")):
        proc = run(env, "embed", model, *args, stdin=stdin)
        assert_ok(proc)
        assert text in proc.stdout and "\\u" not in proc.stdout
        texts, vectors = parse_jsonl(proc.stdout)
        assert texts == [text]
        np.testing.assert_allclose(vectors, encoder.encode([text]), atol=1e-6)


def test_broken_pipe_ends_quietly(cli_env, model, tmp_path):
    """`tinybert embed ... | head -1`: the reader goes away; no traceback, no error message, status 141."""
    src = tmp_path / "many.txt"
    src.write_text("".join(f"sentence number {i}\n" for i in range(300)), encoding="utf-8")   # ~1 MB of JSON
    producer = subprocess.Popen([sys.executable, "-m", "tinybert", "embed", str(model), "--file", str(src)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env)
    reader = subprocess.run([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=producer.stdout,
                            capture_output=True, timeout=600)
    producer.stdout.close()
    stderr = producer.stderr.read().decode()
    assert producer.wait(timeout=600) == 141, stderr
    assert reader.returncode == 0
    assert stderr == ""


def test_bad_files_fail_before_any_compile(cli_env, model, tmp_path, minilm_dir):
    """With a cold kernel cache, a missing or wrong model file, a missing input file or a model of the wrong
    kind is reported at once: nothing is compiled first."""
    env = {**cli_env, "NUMBA_CACHE_DIR": str(tmp_path / "cold-numba-cache")}
    missing = tmp_path / "nosuch.safetensors"
    cases = [(("embed", missing, "hi"), str(missing)),
             (("embed", minilm_dir / "model.safetensors", "hi"), "not a tinybert file"),
             (("embed", model, "--file", tmp_path / "no-texts.txt"), "no-texts.txt"),
             (("classify", model, "hi"), "tinybert embed"),
             (("generate", model, "hi"), "tinybert embed")]
    for args, needle in cases:
        proc = run(env, *args)
        assert_cli_error(proc, needle)
        assert "compiling kernels" not in proc.stderr, proc.stderr


def test_wrong_kind_messages_name_the_subcommand(cli_env, model):
    proc = run(cli_env, "fill-mask", model, "Paris is the [MASK] of France.")
    assert_cli_error(proc, "masked-LM head", "*ForMaskedLM", "use `tinybert embed`")
    assert "ForSequenceClassification" not in proc.stderr
    proc = run(cli_env, "generate", model, "Once upon a time")
    assert_cli_error(proc, "holds an encoder", "`tinybert generate` needs a decoder", "use `tinybert embed`")
    assert "Generator" not in proc.stderr and "a encoder" not in proc.stderr
    with pytest.raises(tinybert.ModelKindError, match=r"no masked-LM head .*\*ForMaskedLM"):
        tinybert.FillMask(model)
    with pytest.raises(tinybert.ModelKindError, match="holds an encoder .*Generator needs a decoder"):
        tinybert.Generator(model)


def test_similarity_matches_the_encoder(cli_env, model, encoder, sentences, tmp_path):
    def cosine(a: list[str], b: list[str]) -> np.ndarray:
        va, vb = encoder.encode(a).astype(np.float64), encoder.encode(b).astype(np.float64)
        return (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))

    proc = run(cli_env, "similarity", model, TEXTS[0], TEXTS[1])
    assert_ok(proc)
    assert abs(float(proc.stdout) - cosine(TEXTS[:1], TEXTS[1:2])[0]) <= 1e-5
    a, b = sentences[40:46], sentences[46:52]
    fa, fb = tmp_path / "a.txt", tmp_path / "b.txt"
    fa.write_text("\n".join(a) + "\n", encoding="utf-8")
    fb.write_text("\n".join(b) + "\n", encoding="utf-8")
    proc = run(cli_env, "similarity", model, "--files", fa, fb)
    assert_ok(proc)
    got = np.array([float(line) for line in proc.stdout.splitlines()])
    np.testing.assert_allclose(got, cosine(a, b), atol=1e-5)
    fb.write_text("\n".join(b[:-1]) + "\n", encoding="utf-8")
    assert_cli_error(run(cli_env, "similarity", model, "--files", fa, fb), "6 lines", "5")
    assert_cli_error(run(cli_env, "similarity", model, "only one"), "two texts")


def test_encoder_repr(model):
    enc = tinybert.Encoder(model, threads=1)
    assert repr(enc) == (f"Encoder(path={str(model)!r}, architecture='bert', quantization='int8', dim=384, "
                         "threads=1)")


def test_convert_refuses_to_overwrite_without_force(cli_env, minilm_dir, tmp_path):
    out = tmp_path / "existing.safetensors"
    out.write_bytes(b"keep me")
    proc = run(cli_env, "convert", minilm_dir, out)
    assert_cli_error(proc, str(out), "--force")
    assert out.read_bytes() == b"keep me"
    assert "reading" not in proc.stderr and "writing" not in proc.stderr   # no conversion step started


def test_convert_checks_the_output_path_before_reading_the_folder(cli_env, tmp_path):
    """The checkpoint here is broken (config.json is not JSON): each bad output is reported instead, so it
    was checked first."""
    src = tmp_path / "broken"
    src.mkdir()
    (src / "config.json").write_text("{not json")
    assert_cli_error(run(cli_env, "convert", src, tmp_path / "ok.safetensors"), "config.json")   # the baseline
    for out, needle in ((tmp_path / "nodir" / "m.safetensors", "does not exist"),
                        (tmp_path / "m.bin", ".safetensors"),
                        (tmp_path, "folder")):
        proc = run(cli_env, "convert", src, out)
        assert_cli_error(proc, needle)
        assert "config.json" not in proc.stderr, proc.stderr


def test_convert_shows_its_steps(cli_env, minilm_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    proc = run(cli_env, "convert", minilm_dir, out)
    assert_ok(proc)
    for needle in ("reading", "calibrating", "writing m.safetensors"):
        assert needle in proc.stderr, proc.stderr


def test_info_is_human_readable(cli_env, model, minilm_dir):
    proc = run(cli_env, "info", model)
    assert_ok(proc)
    hf = json.loads((minilm_dir / "config.json").read_text())
    assert "{" not in proc.stdout and "'" not in proc.stdout, proc.stdout      # no Python reprs
    assert f"source        {hf['model_type']} ({', '.join(hf['architectures'])})" in proc.stdout
    assert "use           tinybert embed, tinybert similarity" in proc.stdout


# --------------------------------------------------------------------------- demo

_RESULT = re.compile(r"^  (-?\d+\.\d{3})  (.+)$")


def _parse_demo(stdout: str) -> dict[str, list[tuple[float, str]]]:
    results: dict[str, list[tuple[float, str]]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("query: "):
            current = line[len("query: "):]
            results[current] = []
        elif current is not None and (m := _RESULT.match(line)):
            results[current].append((float(m.group(1)), m.group(2)))
        elif not line.strip():
            current = None
    return results


@pytest.fixture(scope="module")
def hf_embed(minilm_dir, hf_tokenizer):
    """sentence-transformers' recipe by hand on transformers fp32: mean pooling + L2 normalise."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir)).eval()

    def embed(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            batch = hf_tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1).numpy()

    return embed


def test_demo_converts_once_then_reuses_cache(tmp_path, hf_embed, model):
    env = dict(os.environ)
    cache = tmp_path / "cache"
    env["TINYBERT_CACHE"] = str(cache)
    top_k = 2

    first = run(env, "demo", "--top-k", top_k)
    assert_ok(first)
    cached = cache / DEFAULT_MODEL_NAME
    assert cached.is_file()
    assert "converting" in first.stdout
    assert f"model: {DEFAULT_MODEL_NAME} (int8, bert, dim 384)" in first.stdout
    assert cached.read_bytes() == model.read_bytes()  # the same int8 file `tinybert convert` writes
    results = _parse_demo(first.stdout)
    assert list(results) == QUERIES
    corpus = set(bundled_sentences())
    for query, hits in results.items():
        assert len(hits) == top_k, (query, hits)
        scores = [score for score, _ in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(sentence in corpus for _, sentence in hits), hits
        # each printed score is the cosine transformers gives that (query, sentence) pair
        vectors = hf_embed([query] + [sentence for _, sentence in hits])
        expected = vectors[1:] @ vectors[0]
        assert np.abs(np.asarray(scores) - expected).max() <= 0.02, (query, scores, expected)

    stamp = cached.stat().st_mtime_ns
    second = run(env, "demo", "--top-k", top_k)
    assert_ok(second)
    assert "converting" not in second.stdout
    assert cached.stat().st_mtime_ns == stamp
    assert os.listdir(cache) == [DEFAULT_MODEL_NAME]
    assert _parse_demo(second.stdout) == results
