"""The C API: `tinybert build-capi`, then real C programs compiled with gcc and run from a plain environment
(no virtual environment, no PYTHONPATH), compared with the Python API on the same files.

The examples in capi/examples/ and the test programs in tests/frontends/capi/ are built against the installed
header and library through the generated pkg-config file, exactly as the README tells a user to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cffi  # noqa: F401  (a test dependency: missing, it fails)
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "capi" / "examples"
PROGRAMS = Path(__file__).resolve().parent / "capi"
SENTENCES = ["The cat sits outside.", "A man is playing guitar.", "The new movie is awesome.", "A woman watches TV.",
             "The new film is so great.", "Do you like pizza?"]

if shutil.which("gcc") is None:
    pytest.fail("gcc is required for the C API tests", pytrace=False)


def plain_env() -> dict[str, str]:
    """What a user's shell has: no virtual environment, no PYTHONPATH, the system PATH."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    for name in ("NUMBA_CACHE_DIR", "OMP_WAIT_POLICY"):      # the suite's kernel cache and OpenMP waiting (conftest)
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def build_library(outdir: Path, *extra: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "tinybert", "build-capi", str(outdir), *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return outdir


@pytest.fixture(scope="session")
def capi(tmp_path_factory) -> Path:
    """The library, header and pkg-config file, built once."""
    return build_library(tmp_path_factory.mktemp("capi"))


def compile_c(source: Path, libdir: Path, out: Path) -> Path:
    """gcc with the flags of the generated pkg-config file (as the README says)."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", str(libdir / "tinybert.pc")], capture_output=True,
                           text=True, check=True).stdout.split() if shutil.which("pkg-config") else \
        [f"-I{libdir}", f"-L{libdir}", "-ltinybert", f"-Wl,-rpath,{libdir}"]
    proc = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-pthread", str(source), "-o",
                           str(out), *flags], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def run_c(exe: Path, *args: object, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *[str(a) for a in args]], capture_output=True, timeout=timeout,
                          env=env or plain_env())


@pytest.fixture(scope="session")
def programs(capi, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cbin")
    sources = {p.stem: p for p in list(EXAMPLES.glob("*.c")) + list(PROGRAMS.glob("*.c"))}
    return {name: compile_c(src, capi, out / name) for name, src in sources.items()}


def test_build_writes_library_header_and_pkgconfig(capi):
    assert (capi / "libtinybert.so").is_file() and (capi / "tinybert.h").is_file()
    pc = (capi / "tinybert.pc").read_text()
    assert "-ltinybert" in pc and f"prefix={capi}" in pc
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(capi / "libtinybert.so")], capture_output=True,
                             text=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    for name in ("tb_model_load", "tb_model_free", "tb_last_error", "tb_last_needed", "tb_version",
                 "tb_embedding_dim", "tb_encode", "tb_classify", "tb_generate", "tb_generate_default_params",
                 "tb_translate", "tb_translate_default_params", "tb_translate_lang", "tb_chat"):
        assert name in exported, name


def test_embed_example_matches_python(programs, minilm_files):
    from tinybert import Encoder

    query = "A new film is playing."
    proc = run_c(programs["embed"], minilm_files["int8"], query)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[-1] == "dim 384"
    got = [(float(score), text) for score, text in (line.split("\t") for line in lines[:-1])]
    vectors = Encoder(minilm_files["int8"]).encode(SENTENCES + [query])
    ref = sorted(((float(vectors[i].astype(np.float64) @ vectors[-1].astype(np.float64)), s)
                  for i, s in enumerate(SENTENCES)), key=lambda x: -x[0])
    assert [t for _, t in got] == [t for _, t in ref]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in ref], atol=1e-6, rtol=0)


def test_embed_example_on_a_bidirectional_embedder_with_dense_modules(programs, embedding_gemma):
    """tb_embedding_dim and tb_encode on an EmbeddingGemma-shaped file: its vectors are the last Dense module's 48
    values, not the hidden size's 64."""
    from tinybert import Encoder

    _, files, _, _ = embedding_gemma
    query = "A new film is playing."
    proc = run_c(programs["embed"], files["int8"], query)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[-1] == "dim 48"
    got = [(float(score), text) for score, text in (line.split("\t") for line in lines[:-1])]
    vectors = Encoder(files["int8"]).encode(SENTENCES + [query])
    ref = sorted(((float(vectors[i].astype(np.float64) @ vectors[-1].astype(np.float64)), s)
                  for i, s in enumerate(SENTENCES)), key=lambda x: -x[0])
    assert [t for _, t in got] == [t for _, t in ref]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in ref], atol=1e-6, rtol=0)


def test_classify_example_matches_python(programs, head_model):
    from tinybert import Classifier

    _, files = head_model("bert", "sequence-classification", labels=["négatif", "neutral", "positive"])
    texts = ["A wonderful film.", "Awful, boring and long.", "Ça va? 你好 🙂"]
    proc = run_c(programs["classify"], files["int8"], *texts)
    assert proc.returncode == 0, proc.stderr.decode()
    got = [line.split("\t") for line in proc.stdout.decode("utf-8").splitlines()]
    ref = Classifier(files["int8"]).classify(texts, top_k=1)
    assert [g[0] for g in got] == [r[0]["label"] for r in ref]
    np.testing.assert_allclose([float(g[1]) for g in got], [r[0]["score"] for r in ref], atol=1e-6, rtol=0)


def test_generate_example_streams_the_python_text(programs, decoder_model):
    from tinybert import Generator

    _, files = decoder_model("gpt2")
    prompt = "The weather today is"
    proc = run_c(programs["generate"], files["int8"], prompt, 24)
    assert proc.returncode == 0, proc.stderr.decode()
    streamed, full = proc.stdout.decode("utf-8").split("\n---\n")
    ref = Generator(files["int8"]).generate(prompt, max_new_tokens=24)
    assert streamed == ref and full == ref + "\n"
    assert int(proc.stderr.decode().split()[0]) >= 2        # it did stream, in several pieces


def test_chat_example_equals_transformers(programs, tmp_path, bpe_tokenizer_file):
    """tb_chat on a random Llama with SmolLM2's chat template: the streamed and the returned reply equal
    transformers' greedy generate on apply_chat_template of the same messages."""
    import json

    import torch
    from conftest import EOT, build_hf_decoder
    from tinybert_convert import convert
    from transformers import AutoTokenizer

    template = (ROOT / "tests" / "data" / "chat_templates" / "smollm2.jinja").read_text()
    model = build_hf_decoder("llama", tmp_path / "hf", bpe_tokenizer_file)
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "eos_token": EOT}))
    path = convert(tmp_path / "hf", tmp_path / "chat.safetensors", dtype="fp32")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ça va? 你好 🙂"}]
    ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    with torch.no_grad():
        new = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             pad_token_id=0)[0, len(ids):].tolist()
    ref = tokenizer.decode(new, skip_special_tokens=True)
    proc = run_c(programs["chat"], path, json.dumps(messages), 20)
    assert proc.returncode == 0, proc.stderr.decode()
    streamed, full = proc.stdout.decode("utf-8").split("\n---\n")
    assert streamed == ref and full == ref + "\n"
    for bad, message in (("[{\"role\": \"user\"}]", "exactly the keys 'role' and 'content'"),
                         ("[{\"role\": \"user\", \"content\": ", "not valid JSON")):
        proc = run_c(programs["chat"], path, bad)
        assert proc.returncode == 1 and "tb_chat: -1 " in proc.stderr.decode() and message in proc.stderr.decode()
    proc = subprocess.run([str(programs["chat"]), str(path), b'[{"role": "user", "content": "\xff"}]'],
                          capture_output=True, timeout=600, env=plain_env())
    assert proc.returncode == 1 and "tb_chat: -3 " in proc.stderr.decode()


def test_chat_without_template_is_invalid_argument(programs, decoder_model):
    _, files = decoder_model("gpt2")
    proc = run_c(programs["chat"], files["int8"], '[{"role": "user", "content": "hi"}]')
    assert proc.returncode == 1 and "tb_chat: -1 " in proc.stderr.decode()
    assert "has no chat template" in proc.stderr.decode()


def test_translate_example_matches_python(programs, seq2seq_model):
    from tinybert import Translator

    _, files = seq2seq_model("bart")
    texts = ["The weather is lovely today.", "Beam search keeps the best partial translations."]
    proc = run_c(programs["translate"], files["int8"], *texts)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode("utf-8").splitlines() == Translator(files["int8"]).translate(texts)


def test_error_paths(programs, minilm_files, head_model, decoder_model):
    _, clf = head_model("bert", "sequence-classification", labels=["négatif", "neutral", "positive"])
    _, dec = decoder_model("gpt2")
    proc = run_c(programs["errors"], minilm_files["int8"], clf["int8"], dec["int8"])
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    cases = {}
    for line in proc.stdout.decode("utf-8").splitlines():
        name, status, needed, message = line.split("\t", 3)
        cases[name] = (int(status), int(needed), message)
    expect = {
        "encode_null_model": -1, "encode_null_texts": -1, "encode_zero_texts": -1, "encode_null_out": -1,
        "encode_small_out": -2, "encode_null_text": -1, "encode_bad_utf8": -3, "encode_surrogate": -3,
        "encode_ok": 0, "encode_wrong_kind": -4, "dim_null_model": -1, "dim_wrong_kind": -4, "ok_dim": 0,
        "classify_no_head": -4, "classify_small_label": -2, "classify_null_label": -1, "classify_bad_utf8": -3,
        "classify_ok": 0, "generate_wrong_kind": -4, "generate_null_prompt": -1, "generate_null_out_with_len": -1,
        "chat_wrong_kind": -4, "chat_null_messages": -1, "chat_null_out_with_len": -1, "chat_empty_messages": -1,
        "generate_zero_tokens": -1, "generate_negative_top_k": -1, "generate_small_out": -2,
        "generate_callback_stops": 0, "translate_wrong_kind": -4, "translate_null_out": -1, "garbage_handle": -1,
        "freed_handle": -1, "ok_after_free": 0, "version": 0,
        "load_null_path": -100, "load_missing_file": -100, "load_not_a_model": -100, "load_negative_threads": -100,
    }
    assert {k: cases[k][0] for k in expect if k in cases} == expect
    assert set(expect) <= set(cases)
    for name, (status, _, message) in cases.items():
        if status not in (0,) and not name.startswith("version"):
            assert message, f"{name}: no error message"
        if status == 0 and name.endswith("_ok"):
            assert message == "", f"{name}: a successful call leaves no error ({message!r})"
    assert cases["encode_small_out"][1] == 2 * 384
    assert "UTF-8" in cases["encode_bad_utf8"][2]
    assert "no such model file" in cases["load_missing_file"][2]
    assert "not a valid safetensors file" in cases["load_not_a_model"][2]
    assert cases["classify_small_label"][1] >= 2
    import tinybert

    assert cases["version_string"][2] == tinybert.__version__


def test_threads_share_one_model(programs, minilm_files):
    proc = run_c(programs["threads"], minilm_files["int8"])
    assert proc.returncode == 0, proc.stderr.decode()
    out = dict(line.split() for line in proc.stdout.decode().splitlines())
    assert out == {"mismatches": "0", "failures": "0", "calls": "200"}


def test_broken_environment_fails_cleanly(tmp_path, minilm_files):
    """A library whose recorded Python or packages are gone: every call fails with TB_ERR_INTERNAL and a
    message, the program keeps running (no abort, no crash)."""
    for name, extra in (("no-python", ["--python-home", "/nonexistent/python"]),
                        ("no-packages", ["--sitedirs", "/nonexistent/site-packages", "--paths", "/nonexistent"])):
        lib = build_library(tmp_path / name, *extra)
        exe = compile_c(PROGRAMS / "errors.c", lib, tmp_path / f"errors-{name}")
        proc = run_c(exe, minilm_files["int8"], minilm_files["int8"], minilm_files["int8"])
        assert proc.returncode == 1, proc.stdout.decode()       # errors.c: "could not load" → exit 1
        lines = proc.stdout.decode().splitlines()
        assert lines[0].startswith("load_null_path\t-100")      # checked in C, before Python
        assert "load_failed" in lines[-1]
        message = lines[-1].split("\t", 3)[3]
        assert ("could not start" in message) if name == "no-python" else ("could not start or import" in message)


@pytest.fixture(scope="session")
def valgrind_cpu() -> tuple[str, str]:
    """The CPU name and features valgrind shows a program (asked once: a Python start under valgrind is slow)."""
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is required for this test", pytrace=False)
    probe = subprocess.run(["valgrind", "-q", sys.executable, "-c", "import llvmlite.binding as b; "
                            "print(b.get_host_cpu_name()); print(','.join('+' + k for k, v in "
                            "sorted(b.get_host_cpu_features().items()) if v))"],
                           capture_output=True, text=True, timeout=600, check=True).stdout.split()
    return probe[0], probe[1]


def _valgrind_env(valgrind_cpu: tuple[str, str], warm_up: list) -> dict[str, str]:
    """An environment whose Numba target is the CPU valgrind shows (it differs from the real one, which would
    make Numba recompile every kernel under valgrind, for hours), with the kernel cache filled natively by
    running ``warm_up`` (a command) once."""
    env = {**plain_env(), "NUMBA_CPU_NAME": valgrind_cpu[0], "NUMBA_CPU_FEATURES": valgrind_cpu[1]}
    warm = run_c(*warm_up, env=env)
    assert warm.returncode in (0, 1), warm.stderr.decode()
    return {**env, "PYTHONMALLOC": "malloc"}


def _memcheck(tmp_path: Path, env: dict, *command) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "valgrind.log"
    proc = run_c("valgrind", "--tool=memcheck", "--leak-check=summary", f"--log-file={log}",
                 f"--suppressions={ROOT / 'capi' / 'valgrind-python.supp'}", *command, timeout=3600, env=env)
    text = log.read_text()
    assert "Invalid read" not in text and "Invalid write" not in text, text[-6000:]
    assert re.search(r"ERROR SUMMARY: 0 errors", text), text[-6000:]
    return proc, text


def test_valgrind_error_paths(programs, valgrind_cpu, tmp_path):
    """tests/frontends/capi/errors.c (every error path: NULL pointers, bad UTF-8, small buffers, wrong kinds, freed and
    made-up handles) under memcheck on the tiny seed models: 0 errors, no invalid access."""
    from fuzz.seeds import write_seeds

    seeds = write_seeds(tmp_path / "seeds")
    args = [seeds["encoder-int8"], seeds["classifier-int8"], seeds["decoder-int8"]]
    env = _valgrind_env(valgrind_cpu, [programs["errors"], *args])
    proc, _ = _memcheck(tmp_path, env, programs["errors"], *args)
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    assert "encode_bad_utf8\t-3" in proc.stdout.decode()


def test_valgrind_no_invalid_access_no_growing_leak(programs, valgrind_cpu, head_model, tmp_path):
    """tests/frontends/capi/leaks.c under valgrind memcheck (PYTHONMALLOC=malloc, so memcheck sees every allocation;
    capi/valgrind-python.supp hides the interpreter's and ld.so's own reports): no invalid read or write,
    and the bytes definitely lost after 10 calls of tb_encode equal those after 1,010 (one process, two
    leak checks through valgrind's client requests)."""
    _, files = head_model("bert", "sequence-classification", labels=["négatif", "neutral", "positive"])
    env = _valgrind_env(valgrind_cpu, [programs["leaks"], files["int8"], 1, 1])
    proc, text = _memcheck(tmp_path, env, programs["leaks"], files["int8"], 10, 1000)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:] + text[-3000:]
    counts = [int(x) for x in re.findall(r"definite (\d+)", proc.stdout.decode())]
    errors = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    print(f"\nvalgrind: definitely lost after 10 / 1,010 calls: {counts}; {errors.group(0) if errors else ''}")
    assert len(counts) == 2 and counts[1] == counts[0]


def test_callbacks_calling_back_into_their_model_never_deadlock(programs, decoder_model, minilm_files):
    """tb_generate's on_piece calling tb_generate on the same model gets TB_ERR_BUSY (it used to wait for
    itself for ever); another model works from the callback; tb_model_free from the callback releases the
    model when the call returns, and the handle is invalid after it."""
    _, dec = decoder_model("gpt2")
    proc = run_c(programs["reentrant"], dec["int8"], minilm_files["int8"], timeout=300)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    cases = dict(line.split("\t") for line in proc.stdout.decode().splitlines())
    assert cases == {"outer_generate": "0", "inner_generate": "-7", "inner_busy_message": "1",
                     "inner_encode_other": "0", "generate_freeing_itself": "0", "after_free": "-1"}


def test_random_callbacks_reentering_the_library(capi):
    """fuzz/stress.py capi-reentrant, 100 iterations: tb_generate callbacks that call tb_generate / tb_encode /
    tb_classify / tb_model_free on the same model or another at random get the promised status every time
    (TB_ERR_BUSY on a model running below in the stack, success elsewhere, TB_ERR_INVALID_ARGUMENT on a freed
    handle, at once and after the call returns), and the program ends (the long version: 10,000 iterations)."""
    import json

    proc = subprocess.run([sys.executable, "-m", "fuzz.stress", "capi-reentrant", "--library", str(capi),
                           "--iterations", "100", "--seed", "1", "--timeout", "300"], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["mismatches"] == 0 and not result["hang"]
    for exercised in ("busy", "ok_in_callback", "freed_in_callback", "invalid_after_free", "wrong_kind"):
        assert result[exercised] > 0, (exercised, result)


def test_translate_with_languages_matches_python(programs, multilingual):
    """tb_translate_lang on an NLLB-style file: the Python API's translations with the same codes; a missing
    target code is TB_ERR_INVALID_ARGUMENT naming the codes."""
    from tinybert import Translator

    _, _, files = multilingual("nllb")
    texts = ["hello world.", "why?"]
    proc = run_c(programs["translate"], files["int8"], "--src-lang", "deu_Latn", "--tgt-lang", "fra_Latn", *texts)
    assert proc.returncode == 0, proc.stderr.decode()
    ref = Translator(files["int8"]).translate(texts, src_lang="deu_Latn", tgt_lang="fra_Latn")
    assert proc.stdout.decode("utf-8").split("\n")[:-1] == ref
    proc = run_c(programs["translate"], files["int8"], "--src-lang", "deu_Latn", texts[0])
    assert proc.returncode == 1 and "tb_translate: -1" in proc.stderr.decode() and "fra_Latn" in proc.stderr.decode()
